// CUDA epilogues of the native normalized cross-entropy (driver: csrc/normalized_ce_driver.h). The
// GEMMs are cuBLAS calls made by the driver; these kernels fold one class chunk into the per-row online
// log-sum-exp state (one block per row, fixed-order tree reductions); build G q, the GEMM operand made
// from it and the partial column sums of G z (one block per 16 rows x 32 columns), then the column
// coefficients (one thread per column adding the row blocks' partials in order); and write the weight
// gradient in W's dtype from the G q^T x_unit GEMM. Around the GEMMs, one launch per row pass: the
// norms of x and W (forward), the inverse norms and x / |x| (backward), and grad_x in x's dtype from the
// G q W GEMM. No atomics: every sum has a fixed order.
#include <algorithm>
#include <cfloat>
#include <type_traits>

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

// G q's GEMM operand: none (float32 / float64 inputs: the driver multiplies gq itself), G q in fp16, or
// G q as bf16 hi + lo with the lo rows `lo_offset` elements after the hi rows (lo = 0 where hi is inf).
struct NoOperand {};
template <typename acc_t>
__device__ __forceinline__ void store_operand(NoOperand*, int64_t, int64_t, acc_t) {}
__device__ __forceinline__ void store_operand(__half* out, int64_t e, int64_t, float v) { out[e] = __float2half_rn(v); }
__device__ __forceinline__ void store_operand(__nv_bfloat16* out, int64_t e, int64_t lo_offset, float v) {
  const __nv_bfloat16 hi = __float2bfloat16_rn(v);
  const float hi_v = __bfloat162float(hi);
  out[e] = hi;
  out[e + lo_offset] = __float2bfloat16_rn(fabsf(hi_v) == INFINITY ? 0.0f : v - hi_v);
}

// Rows x columns of one grad block: 32 consecutive columns per warp (coalesced row segments), 8 warps
// striding over kGradRows rows; each block writes its column sums to its row of `partials`. 16 rows:
// at the training shape (N = 256, C = 395) that is 16 x 13 = 208 blocks, a full wave on 132 SMs.
constexpr int kGradCols = 32, kGradLanes = 8, kGradRows = 16;

template <typename acc_t, typename operand_t>
__global__ void __launch_bounds__(kGradCols * kGradLanes)
grad_kernel(const acc_t* __restrict__ dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
            const acc_t* __restrict__ inv_x, const acc_t* __restrict__ inv_w, const int64_t* __restrict__ target,
            const acc_t* __restrict__ lse, const acc_t* __restrict__ grad_row, acc_t scale, acc_t smoothing,
            acc_t* __restrict__ gq, operand_t* __restrict__ operand, acc_t* __restrict__ partials) {
  __shared__ acc_t lane_sums[kGradLanes][kGradCols];
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kGradCols + threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kGradRows;
  const int64_t row_end = min(n, row0 + kGradRows);
  acc_t col = 0;
  if (j < cc) {
    const acc_t iw = inv_w[j], off = smoothing / static_cast<acc_t>(classes);
    for (int64_t i = row0 + threadIdx.y; i < row_end; i += kGradLanes) {
      const int64_t e = i * cc + j;
      const acc_t sx = scale * inv_x[i];
      const acc_t z = dots[e] * sx * iw;
      const acc_t t = (target[i] - c0 == j ? acc_t(1) - smoothing : acc_t(0)) + off;
      const acc_t v = grad_row[i] * (exp(z - lse[i]) - t) * iw;
      if (gq != nullptr) gq[e] = v;
      store_operand(operand, e, n * cc, v);
      col += v * dots[e] * sx;
    }
  }
  lane_sums[threadIdx.y][threadIdx.x] = col;
  __syncthreads();
  if (threadIdx.y == 0 && j < cc) {
    acc_t total = 0;
    for (int lane = 0; lane < kGradLanes; ++lane) total += lane_sums[lane][threadIdx.x];
    partials[static_cast<int64_t>(blockIdx.x) * cc + j] = total;
  }
}

// coef_c = [|w_c| > eps] q_c^2 sum_i G_ic z_ic, the row blocks' partial sums added in order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
coef_kernel(const acc_t* __restrict__ partials, int64_t row_blocks, int64_t cc, const acc_t* __restrict__ inv_w,
            const acc_t* __restrict__ wsq, acc_t* __restrict__ coef) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= cc) return;
  acc_t col = 0;
  for (int64_t b = 0; b < row_blocks; ++b) col += partials[b * cc + j];
  const acc_t keep = norm_above_eps(wsq[j]) ? acc_t(1) : acc_t(0);
  coef[j] = keep * inv_w[j] * inv_w[j] * col;
}

// out = scale dir - coef_c w, in W's dtype: row c on grid dimension y (cc <= 65535), its dim features
// strided over the blocks of x.
template <typename acc_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
weight_grad_kernel(const acc_t* __restrict__ dir, const w_t* __restrict__ w, const acc_t* __restrict__ coef,
                   acc_t scale, int64_t dim, w_t* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.y) * dim;
  const acc_t c = coef[blockIdx.y];
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < dim;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    const acc_t v = scale * dir[row + k] - c * static_cast<acc_t>(to_acc(w[row + k]));
    out[row + k] = from_acc<w_t>(static_cast<typename Acc<w_t>::type>(v));  // a double result reaches half via float
  }
}

constexpr int64_t kWeightGradMaxBlocksX = 8;  // blocks per row: at D = 2048, one element per thread

// sq = sum_k src_k^2 and inv = 1 / max(sqrt(sq), eps): one block per row (rows on grid x, up to 2^31 - 1).
template <typename acc_t, typename T>
__global__ void __launch_bounds__(kThreads)
row_norms_kernel(const T* __restrict__ src, int64_t dim, int64_t stride_row, int64_t stride_col, acc_t* __restrict__ sq,
                 acc_t* __restrict__ inv) {
  __shared__ acc_t scratch[kThreads];
  const T* row = src + static_cast<int64_t>(blockIdx.x) * stride_row;
  acc_t local = 0;
  for (int64_t k = threadIdx.x; k < dim; k += kThreads) {
    const acc_t v = static_cast<acc_t>(to_acc(row[k * stride_col]));
    local += v * v;
  }
  const acc_t total = block_reduce(local, scratch, false);
  if (threadIdx.x == 0) {
    sq[blockIdx.x] = total;
    inv[blockIdx.x] = inverse_norm(total);
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
inverse_norms_kernel(const acc_t* __restrict__ sq, int64_t rows, acc_t* __restrict__ inv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < rows) inv[i] = inverse_norm(sq[i]);
}

// inv = 1 / max(sqrt(sq), eps) and unit = x inv in unit_t: one block per row.
template <typename acc_t, typename T, typename unit_t>
__global__ void __launch_bounds__(kThreads)
unit_rows_kernel(const acc_t* __restrict__ sq, const T* __restrict__ x, int64_t dim, acc_t* __restrict__ inv,
                 unit_t* __restrict__ unit) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * dim;
  const acc_t r = inverse_norm(sq[blockIdx.x]);
  if (threadIdx.x == 0) inv[blockIdx.x] = r;
  for (int64_t k = threadIdx.x; k < dim; k += kThreads) {
    const acc_t v = static_cast<acc_t>(to_acc(x[row + k])) * r;
    unit[row + k] = from_acc<unit_t>(static_cast<typename Acc<unit_t>::type>(v));
  }
}

// out = scale inv gx - [sqrt(sq) > eps] inv^2 g (ez - tz) x in x's dtype: one block per row.
template <typename acc_t, typename T>
__global__ void __launch_bounds__(kThreads)
grad_x_kernel(const acc_t* __restrict__ gx, const T* __restrict__ x, const acc_t* __restrict__ sq,
              const acc_t* __restrict__ inv, const acc_t* __restrict__ g, const acc_t* __restrict__ ez,
              const acc_t* __restrict__ tz, acc_t scale, int64_t dim, T* __restrict__ out) {
  const int64_t i = blockIdx.x, row = i * dim;
  const acc_t r = inv[i];
  const acc_t keep = norm_above_eps(sq[i]) ? acc_t(1) : acc_t(0);
  const acc_t row_coef = keep * r * r * (g[i] * (ez[i] - tz[i])), a = r * scale;
  for (int64_t k = threadIdx.x; k < dim; k += kThreads) {
    const acc_t v = gx[row + k] * a - static_cast<acc_t>(to_acc(x[row + k])) * row_coef;
    out[row + k] = from_acc<T>(static_cast<typename Acc<T>::type>(v));
  }
}

// Calls f with a null pointer of the C++ type of `dtype`; false for an unknown dtype.
template <typename F>
bool with_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(static_cast<float*>(nullptr)); return true;
    case DType::kFloat16: f(static_cast<__half*>(nullptr)); return true;
    case DType::kBFloat16: f(static_cast<__nv_bfloat16*>(nullptr)); return true;
    case DType::kFloat64: f(static_cast<double*>(nullptr)); return true;
    default: return false;
  }
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

int64_t normalized_ce_grad_row_blocks(int64_t n) { return (n + kGradRows - 1) / kGradRows; }

namespace {
// The grad kernel's grid: row blocks on x (up to 2^31 - 1), column tiles on y (cc <= kClassChunk).
dim3 grad_grid(int64_t n, int64_t cc) {
  return dim3(static_cast<unsigned>(normalized_ce_grad_row_blocks(n)), blocks_for(cc, kGradCols));
}
}  // namespace

int64_t normalized_ce_grad_blocks(int64_t n, int64_t cc) {
  const dim3 grid = grad_grid(n, cc);
  return static_cast<int64_t>(grid.x) * grid.y;
}

template <typename acc_t>
cudaError_t normalized_ce_grad(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
                               const acc_t* inv_x, const acc_t* inv_w, const acc_t* wsq, const int64_t* target,
                               const acc_t* lse, const acc_t* grad_row, acc_t scale, acc_t smoothing, acc_t* gq,
                               DType operand_dtype, void* operand, acc_t* partials, acc_t* coef, cudaStream_t stream) {
  if (cc == 0) return cudaSuccess;
  const int64_t row_blocks = normalized_ce_grad_row_blocks(n);
  if (row_blocks > 0) {
    if (row_blocks > kMaxGridX || blocks_for(cc, kGradCols) > kMaxGridYZ) return cudaErrorInvalidConfiguration;
    const dim3 grid = grad_grid(n, cc), block(kGradCols, kGradLanes);
    if (operand == nullptr) {
      grad_kernel<acc_t, NoOperand><<<grid, block, 0, stream>>>(dots, n, cc, c0, classes, inv_x, inv_w, target, lse,
                                                                grad_row, scale, smoothing, gq, nullptr, partials);
    } else {
      if constexpr (std::is_same_v<acc_t, float>) {  // half operands come from float accumulation only
        if (operand_dtype == DType::kFloat16) {
          grad_kernel<acc_t, __half><<<grid, block, 0, stream>>>(dots, n, cc, c0, classes, inv_x, inv_w, target, lse,
                                                                 grad_row, scale, smoothing, gq,
                                                                 static_cast<__half*>(operand), partials);
        } else if (operand_dtype == DType::kBFloat16) {
          grad_kernel<acc_t, __nv_bfloat16><<<grid, block, 0, stream>>>(
              dots, n, cc, c0, classes, inv_x, inv_w, target, lse, grad_row, scale, smoothing, gq,
              static_cast<__nv_bfloat16*>(operand), partials);
        } else {
          return cudaErrorInvalidValue;
        }
      } else {
        return cudaErrorInvalidValue;
      }
    }
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  coef_kernel<acc_t><<<blocks_for(cc, kThreads), kThreads, 0, stream>>>(partials, row_blocks, cc, inv_w, wsq, coef);
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t normalized_ce_weight_grad(const acc_t* dir, DType w_dtype, const void* w, const acc_t* coef, acc_t scale,
                                      int64_t cc, int64_t dim, void* out, cudaStream_t stream) {
  if (cc == 0 || dim == 0) return cudaSuccess;
  if (cc > kMaxGridYZ) return cudaErrorInvalidConfiguration;  // the driver's chunks are kClassChunk = 8192 rows
  const dim3 blocks(static_cast<unsigned>(std::min<int64_t>(blocks_for(dim, kThreads), kWeightGradMaxBlocksX)),
                    static_cast<unsigned>(cc));
  const auto launch = [&](auto* typed_out) {
    using w_t = std::remove_pointer_t<decltype(typed_out)>;
    weight_grad_kernel<acc_t, w_t><<<blocks, kThreads, 0, stream>>>(dir, static_cast<const w_t*>(w), coef, scale, dim,
                                                                    typed_out);
  };
  switch (w_dtype) {
    case DType::kFloat32: launch(static_cast<float*>(out)); break;
    case DType::kFloat16: launch(static_cast<__half*>(out)); break;
    case DType::kBFloat16: launch(static_cast<__nv_bfloat16*>(out)); break;
    case DType::kFloat64: launch(static_cast<double*>(out)); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t normalized_ce_row_norms(DType src_dtype, const void* src, int64_t rows, int64_t dim, int64_t stride_row,
                                    int64_t stride_col, acc_t* sq, acc_t* inv, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows > kMaxGridX) return cudaErrorInvalidConfiguration;
  const bool known = with_type(src_dtype, [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    row_norms_kernel<acc_t, T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(src), dim, stride_row, stride_col, sq, inv);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

template <typename acc_t>
cudaError_t normalized_ce_unit_rows(const acc_t* sq, int64_t rows, acc_t* inv, DType x_dtype, const void* x,
                                    int64_t dim, DType unit_dtype, void* unit, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (x == nullptr) {
    inverse_norms_kernel<acc_t><<<blocks_for(rows, kThreads), kThreads, 0, stream>>>(sq, rows, inv);
    return cudaGetLastError();
  }
  if (rows > kMaxGridX) return cudaErrorInvalidConfiguration;
  // unit_dtype is the driver's choice (fp16 for fp16 x, else acc_t); any dtype that accumulates in acc_t works
  bool launched = false;
  const bool known = with_type(x_dtype, [&](auto* typed_x) {
    using T = std::remove_pointer_t<decltype(typed_x)>;
    with_type(unit_dtype, [&](auto* typed_unit) {
      using U = std::remove_pointer_t<decltype(typed_unit)>;
      if constexpr (std::is_same_v<typename Acc<U>::type, acc_t>) {
        unit_rows_kernel<acc_t, T, U><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
            sq, static_cast<const T*>(x), dim, inv, static_cast<U*>(unit));
        launched = true;
      }
    });
  });
  return known && launched ? cudaGetLastError() : cudaErrorInvalidValue;
}

template <typename acc_t>
cudaError_t normalized_ce_grad_x(const acc_t* gx, DType x_dtype, const void* x, const acc_t* sq, const acc_t* inv,
                                 const acc_t* g, const acc_t* ez, const acc_t* tz, acc_t scale, int64_t rows,
                                 int64_t dim, void* out, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  if (rows > kMaxGridX) return cudaErrorInvalidConfiguration;
  const bool known = with_type(x_dtype, [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    grad_x_kernel<acc_t, T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        gx, static_cast<const T*>(x), sq, inv, g, ez, tz, scale, dim, static_cast<T*>(out));
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

#define VTREID_INSTANTIATE(T)                                                                                      \
  template cudaError_t normalized_ce_merge<T>(const T*, int64_t, int64_t, int64_t, int64_t, const T*, const T*,   \
                                              const int64_t*, T, T, LseRows<T>, cudaStream_t);                     \
  template cudaError_t normalized_ce_grad<T>(const T*, int64_t, int64_t, int64_t, int64_t, const T*, const T*,     \
                                             const T*, const int64_t*, const T*, const T*, T, T, T*, DType, void*,  \
                                             T*, T*, cudaStream_t);                                                \
  template cudaError_t normalized_ce_weight_grad<T>(const T*, DType, const void*, const T*, T, int64_t, int64_t,   \
                                                    void*, cudaStream_t);                                          \
  template cudaError_t normalized_ce_row_norms<T>(DType, const void*, int64_t, int64_t, int64_t, int64_t, T*, T*,  \
                                                  cudaStream_t);                                                   \
  template cudaError_t normalized_ce_unit_rows<T>(const T*, int64_t, T*, DType, const void*, int64_t, DType, void*, \
                                                  cudaStream_t);                                                   \
  template cudaError_t normalized_ce_grad_x<T>(const T*, DType, const void*, const T*, const T*, const T*, const T*, \
                                               const T*, T, int64_t, int64_t, void*, cudaStream_t);
VTREID_INSTANTIATE(float)
VTREID_INSTANTIATE(double)
#undef VTREID_INSTANTIATE

}  // namespace vtreid::cuda
