// CUDA kernels of vtreid.ops.hard_mining (formulas and semantics in kernels/hard_mining.py).
//
// Forward: a 256-thread block owns 64 anchors and streams the candidates in 64-wide tiles. Each tile's
// 64 x 64 dot products are computed from shared memory (each thread a 4 x 4 sub-tile at stride 16),
// turned into distances, masked by label / modality / self rules read from the id vectors, and folded
// into per-thread running (max, argmax) and (min, argmin). A thread sees its columns in increasing
// order and keeps only strictly better values; the 16 threads sharing a row then combine their bests
// with warp shuffles, lower index winning equal values. No N x M buffer exists.
// Backward: one block per (anchor, 256 features) writes the anchor gradient and the two pair
// contributions; one block per (candidate, 256 features) sums its contributions in the stable sorted
// order built by the host glue (no float atomics: bitwise reproducible).
#include "common.cuh"
#include "launch.h"

namespace vtreid::cuda {
namespace {

constexpr int kTile = 64;
constexpr int kStep = 16;
constexpr int kThreads = 256;
constexpr int kSub = 4;
constexpr int kRowThreads = 256;

__device__ __forceinline__ bool rule_allows(int rule, int32_t a, int32_t c) {
  return rule == 0 || (rule == 1 ? a != c : a == c);
}

// (value, index) of the better candidate; index -1 means none (pair_math.h: mining_beats).
template <typename acc_t>
__device__ __forceinline__ void combine(acc_t& v, int64_t& i, acc_t ov, int64_t oi, bool farthest) {
  if (mining_beats(ov, oi, v, i, farthest)) { v = ov; i = oi; }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
mining_fwd_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ c, const int64_t* __restrict__ la,
                  const int64_t* __restrict__ lc, const int32_t* __restrict__ ma, const int32_t* __restrict__ mc,
                  typename Acc<scalar_t>::type* __restrict__ pos_d, int64_t* __restrict__ pos_i,
                  typename Acc<scalar_t>::type* __restrict__ neg_d, int64_t* __restrict__ neg_i,
                  bool* __restrict__ valid, typename Acc<scalar_t>::type* __restrict__ asq_out,
                  typename Acc<scalar_t>::type* __restrict__ csq_out, int64_t n, int64_t m, int64_t dim, int metric,
                  int pos_rule, int neg_rule, bool self_mining, typename Acc<scalar_t>::type tau) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ acc_t as[kStep][kTile + 1];
  __shared__ acc_t cs[kStep][kTile + 1];
  __shared__ acc_t asq_s[kTile];
  __shared__ acc_t csq_s[kTile];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const bool use_modality = pos_rule != 0 || neg_rule != 0;

  int64_t my_label[kSub];
  int32_t my_mod[kSub];
  acc_t best_pos[kSub], best_neg[kSub];
  int64_t best_pos_i[kSub], best_neg_i[kSub];
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    my_label[i] = r < n ? la[r] : 0;
    my_mod[i] = (r < n && use_modality) ? ma[r] : 0;
    best_pos[i] = 0; best_neg[i] = 0;
    best_pos_i[i] = -1; best_neg_i[i] = -1;
  }

  for (int64_t col0 = 0; col0 < m; col0 += kTile) {
    acc_t acc[kSub][kSub] = {};
    acc_t norm_part = 0;  // threads 0..63: anchor rows, 64..127: candidate rows of this tile
    for (int64_t k0 = 0; k0 < dim; k0 += kStep) {
#pragma unroll
      for (int r = 0; r < kTile * kStep / kThreads; ++r) {
        const int e = tid + r * kThreads;
        const int row = e / kStep, kk = e % kStep;
        const int64_t k = k0 + kk, ar = row0 + row, cr = col0 + row;
        as[kk][row] = (ar < n && k < dim) ? to_acc(a[ar * dim + k]) : acc_t(0);
        cs[kk][row] = (cr < m && k < dim) ? to_acc(c[cr * dim + k]) : acc_t(0);
      }
      __syncthreads();
      if (tid < kTile) {
#pragma unroll
        for (int kk = 0; kk < kStep; ++kk) norm_part += as[kk][tid] * as[kk][tid];
      } else if (tid < 2 * kTile) {
#pragma unroll
        for (int kk = 0; kk < kStep; ++kk) norm_part += cs[kk][tid - kTile] * cs[kk][tid - kTile];
      }
#pragma unroll
      for (int kk = 0; kk < kStep; ++kk) {
        acc_t av[kSub], cv[kSub];
#pragma unroll
        for (int i = 0; i < kSub; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kSub; ++j) cv[j] = cs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kSub; ++i)
#pragma unroll
          for (int j = 0; j < kSub; ++j) acc[i][j] += av[i] * cv[j];
      }
      __syncthreads();
    }
    if (tid < kTile) asq_s[tid] = norm_part;
    else if (tid < 2 * kTile) csq_s[tid - kTile] = norm_part;
    __syncthreads();
    if (blockIdx.x == 0 && tid < kTile && col0 + tid < m) csq_out[col0 + tid] = csq_s[tid];
    if (col0 == 0 && tid < kTile && row0 + tid < n) asq_out[row0 + tid] = asq_s[tid];

#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t col = col0 + tx + 16 * j;
      if (col >= m) continue;
      const int64_t cl = lc[col];
      const int32_t cm = use_modality ? mc[col] : 0;
      const acc_t cq = csq_s[tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kSub; ++i) {
        const int64_t r = row0 + ty + 16 * i;
        if (r >= n) continue;
        const bool same_id = my_label[i] == cl;
        const bool pos_ok = same_id && !(self_mining && r == col) && rule_allows(pos_rule, my_mod[i], cm);
        const bool neg_ok = !same_id && rule_allows(neg_rule, my_mod[i], cm);
        if (!pos_ok && !neg_ok) continue;
        const acc_t d = distance_from_dot(acc[i][j], asq_s[ty + 16 * i], cq, metric, tau);
        if (pos_ok && mining_beats(d, col, best_pos[i], best_pos_i[i], true)) { best_pos[i] = d; best_pos_i[i] = col; }
        if (neg_ok && mining_beats(d, col, best_neg[i], best_neg_i[i], false)) { best_neg[i] = d; best_neg_i[i] = col; }
      }
    }
    __syncthreads();  // asq_s / csq_s are rewritten by the next tile
  }

  // Combine the 16 column threads of each row (lanes tx = 0..15 of one half-warp).
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) {
      const acc_t pv = __shfl_xor_sync(0xffffffffu, best_pos[i], offset);
      const int64_t pi = __shfl_xor_sync(0xffffffffu, best_pos_i[i], offset);
      const acc_t nv = __shfl_xor_sync(0xffffffffu, best_neg[i], offset);
      const int64_t ni = __shfl_xor_sync(0xffffffffu, best_neg_i[i], offset);
      combine(best_pos[i], best_pos_i[i], pv, pi, true);
      combine(best_neg[i], best_neg_i[i], nv, ni, false);
    }
    const int64_t r = row0 + ty + 16 * i;
    if (tx == 0 && r < n) {
      const bool ok = best_pos_i[i] >= 0 && best_neg_i[i] >= 0;
      valid[r] = ok;
      pos_d[r] = ok ? best_pos[i] : acc_t(0);
      neg_d[r] = ok ? best_neg[i] : acc_t(0);
      pos_i[r] = ok ? best_pos_i[i] : -1;
      neg_i[r] = ok ? best_neg_i[i] : -1;
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
mining_pair_grad_kernel(const typename Acc<scalar_t>::type* __restrict__ gp,
                        const typename Acc<scalar_t>::type* __restrict__ gn, const scalar_t* __restrict__ a,
                        const scalar_t* __restrict__ c, const int64_t* __restrict__ pi, const int64_t* __restrict__ ni,
                        const typename Acc<scalar_t>::type* __restrict__ pd,
                        const typename Acc<scalar_t>::type* __restrict__ nd,
                        const typename Acc<scalar_t>::type* __restrict__ asq,
                        const typename Acc<scalar_t>::type* __restrict__ csq, scalar_t* __restrict__ grad_a,
                        typename Acc<scalar_t>::type* __restrict__ contrib, int64_t n, int64_t m, int64_t dim,
                        int metric) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t i = blockIdx.x;
  const int64_t f = static_cast<int64_t>(blockIdx.y) * kRowThreads + threadIdx.x;
  if (f >= dim) return;
  // An index outside [0, m) counts as no pair (-1): never used to address memory.
  const int64_t p = pi[i] < m ? pi[i] : -1, q = ni[i] < m ? ni[i] : -1;
  const auto P = pair_coefficients<acc_t>(gp[i], pd[i], p, asq[i], p >= 0 ? csq[p] : acc_t(0), metric);
  const auto Q = pair_coefficients<acc_t>(gn[i], nd[i], q, asq[i], q >= 0 ? csq[q] : acc_t(0), metric);
  const acc_t av = to_acc(a[i * dim + f]);
  // Invalid anchors (index -1) read no candidate row: their contributions are exactly 0.
  const acc_t cp = p >= 0 ? to_acc(c[p * dim + f]) : acc_t(0);
  const acc_t cq = q >= 0 ? to_acc(c[q * dim + f]) : acc_t(0);
  grad_a[i * dim + f] = from_acc<scalar_t, acc_t>((P.alpha + Q.alpha) * av + P.beta * cp + Q.beta * cq);
  contrib[i * dim + f] = P.gamma * cp + P.beta * av;
  contrib[(n + i) * dim + f] = Q.gamma * cq + Q.beta * av;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
segment_sum_kernel(const typename Acc<scalar_t>::type* __restrict__ contrib, const int64_t* __restrict__ order,
                   const int64_t* __restrict__ seg, scalar_t* __restrict__ out, int64_t dim) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t j = blockIdx.x;
  const int64_t f = static_cast<int64_t>(blockIdx.y) * kRowThreads + threadIdx.x;
  if (f >= dim) return;
  acc_t s = 0;
  for (int64_t k = seg[j]; k < seg[j + 1]; ++k) s += contrib[order[k] * dim + f];
  out[j * dim + f] = from_acc<scalar_t, acc_t>(s);
}

template <typename scalar_t>
cudaError_t fwd_typed(const void* a, const void* c, const int64_t* la, const int64_t* lc, const int32_t* ma,
                      const int32_t* mc, void* pos_d, int64_t* pos_i, void* neg_d, int64_t* neg_i, bool* valid,
                      void* asq, void* csq, int64_t n, int64_t m, int64_t dim, int metric, int pos_rule, int neg_rule,
                      bool self_mining, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  mining_fwd_kernel<scalar_t><<<blocks_for(n, kTile), kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(a), static_cast<const scalar_t*>(c), la, lc, ma, mc, static_cast<acc_t*>(pos_d),
      pos_i, static_cast<acc_t*>(neg_d), neg_i, valid, static_cast<acc_t*>(asq), static_cast<acc_t*>(csq), n, m,
      dim, metric, pos_rule, neg_rule, self_mining, static_cast<acc_t>(zero_tolerance(dim)));
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bwd_typed(const void* gp, const void* gn, const void* a, const void* c, const int64_t* pi,
                      const int64_t* ni, const void* pd, const void* nd, const void* asq, const void* csq,
                      const int64_t* order, const int64_t* seg, void* contrib, void* grad_a, void* grad_c, int64_t n,
                      int64_t m, int64_t dim, int metric, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (dim == 0) return cudaSuccess;
  const unsigned feature_blocks = blocks_for(dim, kRowThreads);
  if (feature_blocks > kMaxGridYZ || n > kMaxGridX || m > kMaxGridX) return cudaErrorInvalidConfiguration;
  if (n > 0) {
    mining_pair_grad_kernel<scalar_t><<<dim3(static_cast<unsigned>(n), feature_blocks), kRowThreads, 0, stream>>>(
        static_cast<const acc_t*>(gp), static_cast<const acc_t*>(gn), static_cast<const scalar_t*>(a),
        static_cast<const scalar_t*>(c), pi, ni, static_cast<const acc_t*>(pd), static_cast<const acc_t*>(nd),
        static_cast<const acc_t*>(asq), static_cast<const acc_t*>(csq), static_cast<scalar_t*>(grad_a),
        static_cast<acc_t*>(contrib), n, m, dim, metric);
  }
  if (m > 0) {
    segment_sum_kernel<scalar_t><<<dim3(static_cast<unsigned>(m), feature_blocks), kRowThreads, 0, stream>>>(
        static_cast<const acc_t*>(contrib), order, seg, static_cast<scalar_t*>(grad_c), dim);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t hard_mining_fwd(DType dtype, const void* a, const void* c, const int64_t* la, const int64_t* lc,
                            const int32_t* ma, const int32_t* mc, void* pos_d, int64_t* pos_i, void* neg_d,
                            int64_t* neg_i, bool* valid, void* asq, void* csq, int64_t n, int64_t m, int64_t dim,
                            int metric, int pos_rule, int neg_rule, bool self_mining, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
#define VTREID_MINING_FWD(T) \
  fwd_typed<T>(a, c, la, lc, ma, mc, pos_d, pos_i, neg_d, neg_i, valid, asq, csq, n, m, dim, metric, pos_rule, \
               neg_rule, self_mining, stream)
  switch (dtype) {
    case DType::kFloat32: return VTREID_MINING_FWD(float);
    case DType::kFloat16: return VTREID_MINING_FWD(__half);
    case DType::kBFloat16: return VTREID_MINING_FWD(__nv_bfloat16);
    case DType::kFloat64: return VTREID_MINING_FWD(double);
  }
#undef VTREID_MINING_FWD
  return cudaErrorInvalidValue;
}

cudaError_t hard_mining_bwd(DType dtype, const void* gp, const void* gn, const void* a, const void* c,
                            const int64_t* pi, const int64_t* ni, const void* pd, const void* nd, const void* asq,
                            const void* csq, const int64_t* order, const int64_t* seg, void* contrib, void* grad_a,
                            void* grad_c, int64_t n, int64_t m, int64_t dim, int metric, cudaStream_t stream) {
#define VTREID_MINING_BWD(T) \
  bwd_typed<T>(gp, gn, a, c, pi, ni, pd, nd, asq, csq, order, seg, contrib, grad_a, grad_c, n, m, dim, metric, stream)
  switch (dtype) {
    case DType::kFloat32: return VTREID_MINING_BWD(float);
    case DType::kFloat16: return VTREID_MINING_BWD(__half);
    case DType::kBFloat16: return VTREID_MINING_BWD(__nv_bfloat16);
    case DType::kFloat64: return VTREID_MINING_BWD(double);
  }
#undef VTREID_MINING_BWD
  return cudaErrorInvalidValue;
}

}  // namespace vtreid::cuda
