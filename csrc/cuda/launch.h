// Types shared by the CUDA launchers. No torch headers, so nvcc compiles csrc/cuda/ on its own
// (CMakeLists.txt) on machines without a CUDA build of torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace vtreid::cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Feature inputs are row-major contiguous [rows, dim]; norms are float32 (float64 for kFloat64).
cudaError_t pairwise_distance_fwd(DType dtype, const void* x, const void* y, void* dist, void* xsq, void* ysq,
                                  int64_t n, int64_t m, int64_t dim, int metric, cudaStream_t stream);

// grad_a [n, dim] of sum_ij g_ij dist(a_i, b_j), b is [k, dim]. grad and dist are read at
// (i, j) -> i * stride_n + j * stride_k, so passing swapped strides gives the other operand's side.
cudaError_t pairwise_distance_bwd_side(DType dtype, const void* grad, const void* dist, const void* a,
                                const void* b, const void* asq, const void* bsq, void* grad_a, int64_t n,
                                int64_t k, int64_t dim, int64_t grad_stride_n, int64_t grad_stride_k,
                                int64_t dist_stride_n, int64_t dist_stride_k, int metric,
                                cudaStream_t stream);

}  // namespace vtreid::cuda
