// Device helpers shared by the CUDA kernels: accumulation types, conversions, the distance epilogue.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../metric.h"

namespace vtreid::cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ float to_acc(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// One pair's distance from its dot product and squared norms (vtreid/ops/reference.py).
template <typename acc_t>
__device__ __forceinline__ acc_t distance_from_dot(acc_t dot, acc_t xq, acc_t yq, int metric, acc_t tau) {
  if (metric == kCosine) {
    const acc_t nx = max(sqrt(xq), acc_t(kCosineEps)), ny = max(sqrt(yq), acc_t(kCosineEps));
    return acc_t(1) - dot / (nx * ny);
  }
  const acc_t norms = xq + yq;
  acc_t d2 = norms - acc_t(2) * dot;
  d2 = d2 > tau * norms ? d2 : acc_t(0);
  return metric == kEuclidean ? sqrt(d2) : d2;
}

inline unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

}  // namespace vtreid::cuda
