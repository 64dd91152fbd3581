// CUDA epilogues of the native normalized cross-entropy (driver: csrc/normalized_ce_driver.h). The
// GEMMs are cuBLAS calls made by the driver; these kernels fold one class chunk into the per-row online
// log-sum-exp state (one block per row, fixed-order tree reductions), and build G q and its column sums
// (one thread per element, then one thread per column walking the rows in order). No atomics.
#include <cfloat>

#include "common.cuh"
#include "launch.h"

namespace vtreid::cuda {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ acc_t block_reduce(acc_t value, acc_t* scratch, bool take_max) {
  const int tid = threadIdx.x;
  scratch[tid] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) scratch[tid] = take_max ? max(scratch[tid], scratch[tid + stride]) : scratch[tid] + scratch[tid + stride];
    __syncthreads();
  }
  const acc_t out = scratch[0];
  __syncthreads();
  return out;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
merge_kernel(const acc_t* __restrict__ dots, int64_t cc, int64_t c0, int64_t classes, const acc_t* __restrict__ inv_x,
             const acc_t* __restrict__ inv_w, const int64_t* __restrict__ target, acc_t scale, acc_t smoothing,
             LseRows<acc_t> s) {
  __shared__ acc_t scratch[kThreads];
  const int64_t i = blockIdx.x;
  const acc_t* row = dots + i * cc;
  const acc_t sx = scale * inv_x[i];
  acc_t local_max = -INFINITY, local_total = 0;
  for (int64_t j = threadIdx.x; j < cc; j += kThreads) {
    const acc_t z = row[j] * sx * inv_w[j];
    local_max = max(local_max, z);
    local_total += z;
  }
  const acc_t chunk_max = block_reduce(local_max, scratch, true);
  const acc_t total = block_reduce(local_total, scratch, false);
  const bool first = c0 == 0, last = c0 + cc == classes;
  const acc_t old_max = s.max_before(i, first);
  const acc_t new_max = max(old_max, chunk_max);
  acc_t local_sum = 0, local_ez = 0;
  for (int64_t j = threadIdx.x; j < cc; j += kThreads) {
    const acc_t z = row[j] * sx * inv_w[j];
    const acc_t p = exp(z - new_max);
    local_sum += p;
    local_ez += p * z;
  }
  const acc_t sum = block_reduce(local_sum, scratch, false);
  const acc_t ez = block_reduce(local_ez, scratch, false);
  if (threadIdx.x == 0) {
    const int64_t y = target[i] - c0;
    s.fold(i, first, last, old_max, new_max, sum, ez, total, y >= 0 && y < cc ? row[y] * sx * inv_w[y] : acc_t(0),
           smoothing, classes);
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
grad_kernel(const acc_t* __restrict__ dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
            const acc_t* __restrict__ inv_x, const acc_t* __restrict__ inv_w, const int64_t* __restrict__ target,
            const acc_t* __restrict__ lse, const acc_t* __restrict__ grad_row, acc_t scale, acc_t smoothing,
            acc_t* __restrict__ gq) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= n * cc) return;
  const int64_t i = e / cc, j = e % cc;
  const acc_t z = dots[e] * scale * inv_x[i] * inv_w[j];
  const acc_t t = (target[i] - c0 == j ? acc_t(1) - smoothing : acc_t(0)) + smoothing / static_cast<acc_t>(classes);
  gq[e] = grad_row[i] * (exp(z - lse[i]) - t) * inv_w[j];
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
column_kernel(const acc_t* __restrict__ dots, const acc_t* __restrict__ gq, int64_t n, int64_t cc,
              const acc_t* __restrict__ inv_x, acc_t scale, acc_t* __restrict__ col_gz) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= cc) return;
  acc_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += gq[i * cc + j] * dots[i * cc + j] * scale * inv_x[i];
  col_gz[j] += s;
}

}  // namespace

template <typename acc_t>
cudaError_t normalized_ce_merge(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
                                const acc_t* inv_x, const acc_t* inv_w, const int64_t* target, acc_t scale,
                                acc_t smoothing, LseRows<acc_t> rows, cudaStream_t stream) {
  if (n == 0 || cc == 0) return cudaSuccess;
  merge_kernel<acc_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(dots, cc, c0, classes, inv_x, inv_w, target,
                                                                         scale, smoothing, rows);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t normalized_ce_grad(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
                               const acc_t* inv_x, const acc_t* inv_w, const int64_t* target, const acc_t* lse,
                               const acc_t* grad_row, acc_t scale, acc_t smoothing, acc_t* gq, acc_t* col_gz,
                               cudaStream_t stream) {
  if (n == 0 || cc == 0) return cudaSuccess;
  grad_kernel<acc_t><<<blocks_for(n * cc, kThreads), kThreads, 0, stream>>>(dots, n, cc, c0, classes, inv_x, inv_w,
                                                                           target, lse, grad_row, scale, smoothing, gq);
  column_kernel<acc_t><<<blocks_for(cc, kThreads), kThreads, 0, stream>>>(dots, gq, n, cc, inv_x, scale, col_gz);
  return cudaGetLastError();
}

#define VTREID_INSTANTIATE(T)                                                                                      \
  template cudaError_t normalized_ce_merge<T>(const T*, int64_t, int64_t, int64_t, int64_t, const T*, const T*,   \
                                              const int64_t*, T, T, LseRows<T>, cudaStream_t);                     \
  template cudaError_t normalized_ce_grad<T>(const T*, int64_t, int64_t, int64_t, int64_t, const T*, const T*,     \
                                             const int64_t*, const T*, const T*, T, T, T*, T*, cudaStream_t);
VTREID_INSTANTIATE(float)
VTREID_INSTANTIATE(double)
#undef VTREID_INSTANTIATE

}  // namespace vtreid::cuda
