// CUDA kernels of vtreid.ops.pairwise_distance: shared-memory tiled products with the metric fused
// into the epilogue (forward) and the coefficient matrix built on the fly (backward). Formulas in
// kernels/pairwise_distance.py. Each 256-thread block owns a 64 x 64 output tile, each thread a 4 x 4
// sub-tile at stride 16 so that shared-memory reads are conflict-free and global stores coalesce.
// Half and bfloat16 inputs accumulate in float32; float64 in float64. Tiles are numbered on grid
// dimension x (up to 2^31 - 1 blocks; y and z stop at 65535), row-tile major.
#include "common.cuh"
#include "launch.h"

namespace vtreid::cuda {
namespace {

constexpr int kTile = 64;   // rows of each operand per block (forward), rows x features (backward)
constexpr int kStep = 16;   // reduction slice held in shared memory
constexpr int kThreads = 256;
constexpr int kSub = 4;     // per-thread sub-tile side

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pairwise_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, scalar_t* __restrict__ out,
                    typename Acc<scalar_t>::type* __restrict__ xsq_out,
                    typename Acc<scalar_t>::type* __restrict__ ysq_out, int64_t n, int64_t m, int64_t dim,
                    int metric, typename Acc<scalar_t>::type tau) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ acc_t xs[kStep][kTile + 1];
  __shared__ acc_t ys[kStep][kTile + 1];
  __shared__ acc_t xsq_s[kTile];
  __shared__ acc_t ysq_s[kTile];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t col_tiles = (m + kTile - 1) / kTile;
  const int64_t row_tile = blockIdx.x / col_tiles, col_tile = blockIdx.x % col_tiles;
  const int64_t row0 = row_tile * kTile;
  const int64_t col0 = col_tile * kTile;

  acc_t acc[kSub][kSub] = {};
  acc_t norm_part = 0;  // threads 0..63: |x_row|^2, threads 64..127: |y_row|^2

  for (int64_t k0 = 0; k0 < dim; k0 += kStep) {
#pragma unroll
    for (int r = 0; r < kTile * kStep / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int row = e / kStep, kk = e % kStep;
      const int64_t k = k0 + kk;
      const int64_t xr = row0 + row, yr = col0 + row;
      xs[kk][row] = (xr < n && k < dim) ? to_acc(x[xr * dim + k]) : acc_t(0);
      ys[kk][row] = (yr < m && k < dim) ? to_acc(y[yr * dim + k]) : acc_t(0);
    }
    __syncthreads();
    if (tid < kTile) {
#pragma unroll
      for (int kk = 0; kk < kStep; ++kk) norm_part += xs[kk][tid] * xs[kk][tid];
    } else if (tid < 2 * kTile) {
#pragma unroll
      for (int kk = 0; kk < kStep; ++kk) norm_part += ys[kk][tid - kTile] * ys[kk][tid - kTile];
    }
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      acc_t a[kSub], b[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kSub; ++j) b[j] = ys[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  if (tid < kTile) xsq_s[tid] = norm_part;
  else if (tid < 2 * kTile) ysq_s[tid - kTile] = norm_part;
  __syncthreads();

  if (col_tile == 0 && tid < kTile && row0 + tid < n) xsq_out[row0 + tid] = xsq_s[tid];
  if (row_tile == 0 && tid < kTile && col0 + tid < m) ysq_out[col0 + tid] = ysq_s[tid];

#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= n) continue;
    const acc_t xq = xsq_s[ty + 16 * i];
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t c = col0 + tx + 16 * j;
      if (c >= m) continue;
      const acc_t yq = ysq_s[tx + 16 * j];
      out[r * m + c] = from_acc<scalar_t, acc_t>(distance_from_dot(acc[i][j], xq, yq, metric, tau));
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pairwise_bwd_side_kernel(const typename Acc<scalar_t>::type* __restrict__ grad,
                         const typename Acc<scalar_t>::type* __restrict__ dist, const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                         const typename Acc<scalar_t>::type* __restrict__ asq,
                         const typename Acc<scalar_t>::type* __restrict__ bsq, scalar_t* __restrict__ grad_a,
                         int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk, int64_t dsn,
                         int64_t dsk, int metric) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ acc_t coef_s[kStep][kTile + 1];  // B_ij for this block's rows i and slice j
  __shared__ acc_t term_s[kStep][kTile + 1];  // what a_i sums over j
  __shared__ acc_t bs[kStep][kTile];          // b rows of the slice, this block's feature columns
  __shared__ acc_t row_coef_s[kTile];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t f_tiles = (dim + kTile - 1) / kTile;
  const int64_t row0 = (blockIdx.x / f_tiles) * kTile;
  const int64_t f0 = (blockIdx.x % f_tiles) * kTile;

  acc_t acc[kSub][kSub] = {};
  acc_t row_coef = 0;  // threads 0..63 own row tid

  for (int64_t k0 = 0; k0 < k; k0 += kStep) {
#pragma unroll
    for (int r = 0; r < kTile * kStep / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int row = e / kStep, kk = e % kStep;
      const int64_t i = row0 + row, j = k0 + kk;
      acc_t c = 0, t = 0;
      if (i < n && j < k) {
        const acc_t g = grad[i * gsn + j * gsk];
        const acc_t d = dist[i * dsn + j * dsk];
        if (metric == kCosine) {
          const acc_t na = max(sqrt(asq[i]), acc_t(kCosineEps)), nb = max(sqrt(bsq[j]), acc_t(kCosineEps));
          c = g / (na * nb);
          t = g * (acc_t(1) - d);
        } else {
          c = d > acc_t(0) ? (metric == kEuclidean ? g / d : acc_t(2) * g) : acc_t(0);
          t = c;
        }
      }
      coef_s[kk][row] = c;
      term_s[kk][row] = t;
      // The b slice: kStep rows x kTile features, 4 per thread, contiguous along features.
      const int brow = e / kTile, bcol = e % kTile;
      const int64_t bj = k0 + brow, bf = f0 + bcol;
      bs[brow][bcol] = (bj < k && bf < dim) ? to_acc(b[bj * dim + bf]) : acc_t(0);
    }
    __syncthreads();
    if (tid < kTile) {
#pragma unroll
      for (int kk = 0; kk < kStep; ++kk) row_coef += term_s[kk][tid];
    }
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      acc_t cv[kSub], bv[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) cv[i] = coef_s[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kSub; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += cv[i] * bv[j];
    }
    __syncthreads();
  }
  if (tid < kTile) {
    const int64_t i = row0 + tid;
    if (metric == kCosine && i < n) {
      const acc_t na = sqrt(asq[i]);
      row_coef = na > acc_t(kCosineEps) ? row_coef / (na * na) : acc_t(0);
    }
    row_coef_s[tid] = row_coef;
  }
  __syncthreads();

#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    if (r >= n) continue;
    const acc_t rc = row_coef_s[ty + 16 * i];
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t f = f0 + tx + 16 * j;
      if (f >= dim) continue;
      grad_a[r * dim + f] = from_acc<scalar_t, acc_t>(rc * to_acc(a[r * dim + f]) - acc[i][j]);
    }
  }
}

// Row tiles x column tiles, flattened onto grid dimension x; 0 when the count exceeds its limit.
unsigned tiles(int64_t rows, int64_t cols) {
  const int64_t count = ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
  return count <= kMaxGridX ? static_cast<unsigned>(count) : 0u;
}

template <typename scalar_t>
cudaError_t fwd_typed(const void* x, const void* y, void* dist, void* xsq, void* ysq, int64_t n, int64_t m, int64_t dim,
               int metric, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  const unsigned blocks = tiles(n, m);
  if (blocks == 0) return cudaErrorInvalidConfiguration;
  pairwise_fwd_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(y), static_cast<scalar_t*>(dist),
      static_cast<acc_t*>(xsq), static_cast<acc_t*>(ysq), n, m, dim, metric,
      static_cast<acc_t>(zero_tolerance(dim)));
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bwd_typed(const void* grad, const void* dist, const void* a, const void* b, const void* asq, const void* bsq,
               void* grad_a, int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk, int64_t dsn, int64_t dsk,
               int metric, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  const unsigned blocks = tiles(n, dim);
  if (blocks == 0) return cudaErrorInvalidConfiguration;
  pairwise_bwd_side_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
      static_cast<const acc_t*>(grad), static_cast<const acc_t*>(dist), static_cast<const scalar_t*>(a),
      static_cast<const scalar_t*>(b), static_cast<const acc_t*>(asq), static_cast<const acc_t*>(bsq),
      static_cast<scalar_t*>(grad_a), n, k, dim, gsn, gsk, dsn, dsk, metric);
  return cudaGetLastError();
}

}  // namespace

cudaError_t pairwise_distance_fwd(DType dtype, const void* x, const void* y, void* dist, void* xsq, void* ysq, int64_t n,
                           int64_t m, int64_t dim, int metric, cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return fwd_typed<float>(x, y, dist, xsq, ysq, n, m, dim, metric, stream);
    case DType::kFloat16: return fwd_typed<__half>(x, y, dist, xsq, ysq, n, m, dim, metric, stream);
    case DType::kBFloat16: return fwd_typed<__nv_bfloat16>(x, y, dist, xsq, ysq, n, m, dim, metric, stream);
    case DType::kFloat64: return fwd_typed<double>(x, y, dist, xsq, ysq, n, m, dim, metric, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t pairwise_distance_bwd_side(DType dtype, const void* grad, const void* dist, const void* a, const void* b,
                                const void* asq, const void* bsq, void* grad_a, int64_t n, int64_t k, int64_t dim,
                                int64_t gsn, int64_t gsk, int64_t dsn, int64_t dsk, int metric, cudaStream_t stream) {
  if (n == 0 || dim == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return bwd_typed<float>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, stream);
    case DType::kFloat16:
      return bwd_typed<__half>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, stream);
    case DType::kBFloat16:
      return bwd_typed<__nv_bfloat16>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric,
                                      stream);
    case DType::kFloat64:
      return bwd_typed<double>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vtreid::cuda
