// CUDA kernels of vtreid.ops.hard_mining (formulas and semantics in kernels/hard_mining.py).
//
// Forward, grid (anchor blocks, splits): a 256-thread block owns kRows = 16 anchors and scans the
// contiguous range of 16-wide candidate tiles of its split. At training shapes (N = M = 256) there are
// only 16 anchor blocks and 16 candidate tiles, so the candidates are split until the grid fills one wave
// of the SMs (hard_mining_fwd_grid). Inside a block the 16 x 16 tile of dot products is split over the
// features: the 16 thread teams of 16 threads each compute the whole tile (4 x 4 per thread) over the
// features k = team (mod 16) and the 16 partial tiles are added in team order through shared memory.
// That order depends on k only, never on which block or split computes a pair, so every pair's distance
// (and every norm) is bitwise the same for any split count: duplicate candidates tie exactly, and the
// lowest index wins wherever the duplicates fall. Each epilogue thread owns one (anchor, column) of the
// tile and folds its columns in increasing order into a running best (strictly better only); the 16
// threads of an anchor (one half-warp) then combine with shuffles, lower index winning equal values.
// With one split the block writes the results; with several it writes its partial (best, index) pairs to
// a [splits, N] workspace and mining_combine_kernel folds them in split order with the same rule
// (mining_beats is a strict total order on (value, index), so the fold gives the single-pass result).
// Half / bfloat16 on sm_80+: the tile's dot products come from tensor cores instead (tc_tile: 8 warps,
// one m16n16k16 wmma per warp and 128-feature stage, float accumulators, warp tiles added in warp order);
// the epilogue and the split structure are the same. No N x M buffer exists. Launches: 1 (one split) or 2.
//
// Backward, one launch, no float atomics (bitwise reproducible), no sort: the grid's first blocks own
// 8 anchors x 128 features each and write grad_a = alpha a + beta_p c_p + beta_n c_n; the others own
// 8 candidates x 128 features and scan every anchor's chosen pair in anchor order (positive, then
// negative), adding gamma c_j + beta a_i for each pair that chose their candidate.
#include <mma.h>

#include "common.cuh"
#include "launch.h"

namespace vtreid::cuda {
namespace {

constexpr int kRows = 16;        // anchors per block
constexpr int kCols = 16;        // candidates per tile
constexpr int kTeams = 16;       // feature-split teams, 16 threads each, each computing the whole tile
constexpr int kSub = 4;          // a thread's 4 x 4 sub-tile (contiguous rows and columns)
constexpr int kStage = 64;       // features staged in shared memory per step
constexpr int kThreads = kTeams * 16;
constexpr int kLoads = kRows * kStage / kThreads;  // staged elements per thread and operand
constexpr int kPartialRow = kRows * kCols + 16;    // +16: the two teams of a warp write different banks

constexpr int kGradRows = 8;     // backward: anchors or candidates per block (one warp each)
constexpr int kGradLanes = 32;
constexpr int kGradPer = 4;      // features per lane
constexpr int kGradCols = kGradLanes * kGradPer;
constexpr int kGradThreads = kGradRows * kGradLanes;

constexpr int kTcStage = 128;    // tensor-core path: one 16-feature wmma step per warp and stage
constexpr int kTcLd = kTcStage + 8;  // staged row stride in elements (16-byte multiple, rows off-bank)
constexpr int kTcParts = kThreads / (kRows + kCols);  // threads per norm row (16 features each)
constexpr int kTcLoads = kRows * kTcStage / kThreads;

static_assert(kRows == kCols && kRows == kSub * kSub, "the 4 x 4 thread grid of a team covers the tile");
static_assert(kTcStage == 16 * (kThreads / 32) && kTcParts * 16 == kTcStage, "tensor-core staging layout");
static_assert(kStage % kTeams == 0 && (kRows * kStage) % kThreads == 0, "staging layout");

// Modality 0 is visible and any other value infrared, so the raw op takes int32 modality as given.
__device__ __forceinline__ bool rule_allows(int rule, int32_t a, int32_t c) {
  return rule == 0 || (rule == 1 ? (a != 0) != (c != 0) : (a != 0) == (c != 0));
}

// (value, index) of the better candidate; index -1 means none (pair_math.h: mining_beats).
template <typename acc_t>
__device__ __forceinline__ void combine(acc_t& v, int64_t& i, acc_t ov, int64_t oi, bool farthest) {
  if (mining_beats(ov, oi, v, i, farthest)) { v = ov; i = oi; }
}

template <typename acc_t>
struct FwdShared {
  union {
    struct {
      acc_t a[kRows][kStage + 1];  // +1: the 8 distinct rows a warp reads fall in 8 banks
      acc_t c[kCols][kStage + 1];
    } stage;
    acc_t partial[kTeams][kPartialRow];  // team g's tile, [sub-tile slot][thread of the team]
  } u;
  acc_t norm[kTeams][kRows + kCols];     // team g's partial squared norms (anchors, then candidates)
};

template <typename scalar_t>
struct TcShared {
  union {
    struct {
      alignas(32) scalar_t a[kRows][kTcLd];  // wmma loads: 32-byte aligned tiles, ldm a 16-byte multiple
      alignas(32) scalar_t c[kCols][kTcLd];
    } stage;
    alignas(32) float partial[kThreads / 32][kRows * kCols];  // warp w's tile, row major
  } u;
  float norm[kTcParts][kRows + kCols];
};

// Where the results go: the outputs (one split) or this split's rows of the workspace.
template <typename scalar_t>
struct MiningOut {
  using acc_t = typename Acc<scalar_t>::type;
  acc_t *pos_d, *neg_d;
  int64_t *pos_i, *neg_i;
  bool* valid;                  // null: write partials (no validity, index -1 = none)
  scalar_t *pos_out, *neg_out;  // the result's distances again in the features' dtype (null for partials)
};

// Anchor r's result: an anchor without a positive or a negative is invalid (distance 0, index -1).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_result(const MiningOut<scalar_t>& out, int64_t r, acc_t best_pos,
                                             int64_t best_pos_i, acc_t best_neg, int64_t best_neg_i) {
  const bool ok = best_pos_i >= 0 && best_neg_i >= 0;
  const acc_t pos = ok ? best_pos : acc_t(0), neg = ok ? best_neg : acc_t(0);
  out.valid[r] = ok;
  out.pos_d[r] = pos;
  out.neg_d[r] = neg;
  out.pos_out[r] = from_acc<scalar_t, acc_t>(pos);
  out.neg_out[r] = from_acc<scalar_t, acc_t>(neg);
  out.pos_i[r] = ok ? best_pos_i : -1;
  out.neg_i[r] = ok ? best_neg_i : -1;
}

// The next stage, in the storage type (half the registers for 16-bit features); 0 outside the matrices.
template <int kWidth, int kCount, typename scalar_t>
__device__ __forceinline__ void load_stage_of(scalar_t (&ra)[kCount], scalar_t (&rc)[kCount], const scalar_t* a,
                                              const scalar_t* c, int64_t row0, int64_t col0, int64_t k0, int64_t n,
                                              int64_t m, int64_t dim) {
  const scalar_t zero = from_acc<scalar_t>(0.0f);
#pragma unroll
  for (int q = 0; q < kCount; ++q) {
    const int e = threadIdx.x + q * kThreads;  // a warp reads 32 consecutive features of one row
    const int row = e / kWidth, kk = e % kWidth;
    const int64_t k = k0 + kk, ar = row0 + row, cr = col0 + row;
    ra[q] = (ar < n && k < dim) ? a[ar * dim + k] : zero;
    rc[q] = (cr < m && k < dim) ? c[cr * dim + k] : zero;
  }
}

template <typename scalar_t>
__device__ __forceinline__ void load_stage(scalar_t (&ra)[kLoads], scalar_t (&rc)[kLoads], const scalar_t* a,
                                           const scalar_t* c, int64_t row0, int64_t col0, int64_t k0, int64_t n,
                                           int64_t m, int64_t dim) {
  load_stage_of<kStage, kLoads>(ra, rc, a, c, row0, col0, k0, n, m, dim);
}

template <typename scalar_t>
__device__ __forceinline__ void load_stage_tc(scalar_t (&ra)[kTcLoads], scalar_t (&rc)[kTcLoads], const scalar_t* a,
                                              const scalar_t* c, int64_t row0, int64_t col0, int64_t k0, int64_t n,
                                              int64_t m, int64_t dim) {
  load_stage_of<kTcStage, kTcLoads>(ra, rc, a, c, row0, col0, k0, n, m, dim);
}

// The SIMT tile (any dtype): this thread's dot product of (anchor ea, column eb), the 16 x 16 tile split over
// 16 feature teams (team g: features k = g mod 16, its 4 x 4 sub-tile at rows 4 ty.., columns 4 tx..) whose
// partial tiles are added in team order; norms[0..31] get the squared norms of the tile's anchors (when
// anchor_norms) and candidates, added the same way.
template <typename scalar_t>
__device__ __forceinline__ typename Acc<scalar_t>::type simt_tile(
    const scalar_t* __restrict__ a, const scalar_t* __restrict__ c, int64_t row0, int64_t col0, int64_t n, int64_t m,
    int64_t dim, bool anchor_norms, typename Acc<scalar_t>::type* norms) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ FwdShared<acc_t> sm;
  const int tid = threadIdx.x;
  const int team = tid / 16, lane16 = tid % 16, ty = lane16 / kSub, tx = lane16 % kSub;
  const int ea = tid / kCols, eb = tid % kCols;
  const int my_slot = (ea % kSub) * kSub + eb % kSub, my_lane = (ea / kSub) * kSub + eb / kSub;
  acc_t acc[kSub][kSub] = {};
  acc_t na[kSub] = {}, nc[kSub] = {};
  scalar_t ra[kLoads], rc[kLoads];
  if (dim > 0) load_stage(ra, rc, a, c, row0, col0, 0, n, m, dim);
  for (int64_t k0 = 0; k0 < dim; k0 += kStage) {
#pragma unroll
    for (int q = 0; q < kLoads; ++q) {
      const int e = tid + q * kThreads;
      sm.u.stage.a[e / kStage][e % kStage] = to_acc(ra[q]);
      sm.u.stage.c[e / kStage][e % kStage] = to_acc(rc[q]);
    }
    __syncthreads();
    // The next stage's loads are in flight while this one is multiplied.
    if (k0 + kStage < dim) load_stage(ra, rc, a, c, row0, col0, k0 + kStage, n, m, dim);
#pragma unroll
    for (int s = 0; s < kStage / kTeams; ++s) {
      const int kk = team + kTeams * s;
      acc_t av[kSub], cv[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) av[i] = sm.u.stage.a[ty * kSub + i][kk];
#pragma unroll
      for (int j = 0; j < kSub; ++j) cv[j] = sm.u.stage.c[tx * kSub + j][kk];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += av[i] * cv[j];
      if (tx == 0 && anchor_norms) {
#pragma unroll
        for (int i = 0; i < kSub; ++i) na[i] += av[i] * av[i];
      }
      if (ty == 0) {
#pragma unroll
        for (int j = 0; j < kSub; ++j) nc[j] += cv[j] * cv[j];
      }
    }
    __syncthreads();  // the stage is rewritten (or becomes the partials) next
  }
#pragma unroll
  for (int i = 0; i < kSub; ++i)
#pragma unroll
    for (int j = 0; j < kSub; ++j) sm.u.partial[team][(i * kSub + j) * 16 + lane16] = acc[i][j];
  if (tx == 0 && anchor_norms) {
#pragma unroll
    for (int i = 0; i < kSub; ++i) sm.norm[team][ty * kSub + i] = na[i];
  }
  if (ty == 0) {
#pragma unroll
    for (int j = 0; j < kSub; ++j) sm.norm[team][kRows + tx * kSub + j] = nc[j];
  }
  __syncthreads();
  acc_t dot = 0;
#pragma unroll
  for (int g = 0; g < kTeams; ++g) dot += sm.u.partial[g][my_slot * 16 + my_lane];
  if (tid < kRows + kCols && (tid >= kRows || anchor_norms)) {
    acc_t s = 0;
#pragma unroll
    for (int g = 0; g < kTeams; ++g) s += sm.norm[g][tid];
    norms[tid] = s;
  }
  return dot;
}

// The tensor-core tile (half / bfloat16 from sm_80 on): warp w multiplies the features 16 w .. 16 w + 15 of
// each 128-feature stage with one m16n16k16 wmma (float accumulator); the 8 warps' tiles are added in warp
// order, and the norms from the staged tiles in the same 8 feature parts and order. As on the SIMT path,
// the arithmetic of a pair depends on neither the block nor the split.
template <typename scalar_t>
__device__ __forceinline__ float tc_tile(const scalar_t* __restrict__ a, const scalar_t* __restrict__ c,
                                         int64_t row0, int64_t col0, int64_t n, int64_t m, int64_t dim,
                                         bool anchor_norms, float* norms) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the launcher takes the SIMT path before sm_80 (bfloat16 fragments need sm_80)
  return 0.0f;
#else
  namespace wmma = nvcuda::wmma;
  __shared__ TcShared<scalar_t> sm;
  const int tid = threadIdx.x, warp = tid / 32;
  const int norm_row = tid / kTcParts, part = tid % kTcParts;  // rows 0..15 anchors, 16..31 candidates
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  float nrm = 0.0f;
  scalar_t ra[kTcLoads], rc[kTcLoads];
  if (dim > 0) load_stage_tc(ra, rc, a, c, row0, col0, 0, n, m, dim);
  for (int64_t k0 = 0; k0 < dim; k0 += kTcStage) {
#pragma unroll
    for (int q = 0; q < kTcLoads; ++q) {
      const int e = tid + q * kThreads;
      sm.u.stage.a[e / kTcStage][e % kTcStage] = ra[q];
      sm.u.stage.c[e / kTcStage][e % kTcStage] = rc[q];
    }
    __syncthreads();
    if (k0 + kTcStage < dim) load_stage_tc(ra, rc, a, c, row0, col0, k0 + kTcStage, n, m, dim);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::col_major> fb;  // candidate rows = columns
    wmma::load_matrix_sync(fa, &sm.u.stage.a[0][16 * warp], kTcLd);
    wmma::load_matrix_sync(fb, &sm.u.stage.c[0][16 * warp], kTcLd);
    wmma::mma_sync(acc, fa, fb, acc);
    if (norm_row >= kRows || anchor_norms) {
      const scalar_t* row = norm_row < kRows ? sm.u.stage.a[norm_row] : sm.u.stage.c[norm_row - kRows];
#pragma unroll
      for (int kk = 0; kk < 16; ++kk) {
        const float v = to_acc(row[16 * part + kk]);
        nrm += v * v;
      }
    }
    __syncthreads();
  }
  wmma::store_matrix_sync(sm.u.partial[warp], acc, kCols, wmma::mem_row_major);
  sm.norm[part][norm_row] = nrm;
  __syncthreads();
  const int ea = tid / kCols, eb = tid % kCols;
  float dot = 0.0f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) dot += sm.u.partial[w][ea * kCols + eb];
  if (tid < kRows + kCols && (tid >= kRows || anchor_norms)) {
    float s = 0.0f;
#pragma unroll
    for (int g = 0; g < kTcParts; ++g) s += sm.norm[g][tid];
    norms[tid] = s;
  }
  return dot;
#endif
}

// Two blocks per SM (<= 128 registers) for the SIMT float path (no spills); float64 and the tensor-core path
// (which would spill at 128 on sm_80) get the registers they need.
template <typename scalar_t, bool kTc>
__global__ void __launch_bounds__(kThreads, (sizeof(typename Acc<scalar_t>::type) == 4 && !kTc) ? 2 : 1)
mining_fwd_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ c, const int64_t* __restrict__ la,
                  const int64_t* __restrict__ lc, const int32_t* __restrict__ ma, const int32_t* __restrict__ mc,
                  MiningOut<scalar_t> out, typename Acc<scalar_t>::type* __restrict__ asq_out,
                  typename Acc<scalar_t>::type* __restrict__ csq_out, int64_t n, int64_t m, int64_t dim, int metric,
                  int pos_rule, int neg_rule, bool self_mining, typename Acc<scalar_t>::type tau, int64_t tiles) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ acc_t tile_norms[kRows + kCols];  // this tile's squared norms: anchors, then candidates

  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  const int64_t tile_begin = split * tiles / splits, tile_end = (split + 1) * tiles / splits;
  const bool use_modality = pos_rule != 0 || neg_rule != 0;

  // Epilogue role: anchor ea of the block, column eb of each tile (an anchor's 16 threads: a half-warp).
  const int ea = tid / kCols, eb = tid % kCols;
  const int64_t r = row0 + ea;
  const int64_t my_label = r < n ? la[r] : 0;
  const int32_t my_mod = (r < n && use_modality) ? ma[r] : 0;
  acc_t best_pos = 0, best_neg = 0;
  int64_t best_pos_i = -1, best_neg_i = -1;

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t col0 = tile * kCols;
    const bool anchor_norms = tile == tile_begin;  // the same in every tile: computed once
    acc_t dot;
    if constexpr (kTc) {
      dot = tc_tile(a, c, row0, col0, n, m, dim, anchor_norms, tile_norms);
    } else {
      dot = simt_tile(a, c, row0, col0, n, m, dim, anchor_norms, tile_norms);
    }
    if (tid < kRows + kCols && (tid >= kRows || anchor_norms)) {
      // asq by the first split's blocks, csq by the first anchor block's: each written exactly once.
      if (tid < kRows) {
        if (split == 0 && row0 + tid < n) asq_out[row0 + tid] = tile_norms[tid];
      } else if (blockIdx.x == 0 && col0 + tid - kRows < m) {
        csq_out[col0 + tid - kRows] = tile_norms[tid];
      }
    }
    __syncthreads();  // norms visible; the partials are read before the next tile stages over them

    const int64_t col = col0 + eb;
    if (r < n && col < m) {
      const int64_t cl = lc[col];
      const int32_t cm = use_modality ? mc[col] : 0;
      const bool same_id = my_label == cl;
      const bool pos_ok = same_id && !(self_mining && r == col) && rule_allows(pos_rule, my_mod, cm);
      const bool neg_ok = !same_id && rule_allows(neg_rule, my_mod, cm);
      if (pos_ok || neg_ok) {
        const acc_t d = distance_from_dot(dot, tile_norms[ea], tile_norms[kRows + eb], metric, tau);
        if (pos_ok && mining_beats(d, col, best_pos, best_pos_i, true)) { best_pos = d; best_pos_i = col; }
        if (neg_ok && mining_beats(d, col, best_neg, best_neg_i, false)) { best_neg = d; best_neg_i = col; }
      }
    }
  }

#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) {  // the 16 lanes of one anchor
    const acc_t pv = __shfl_xor_sync(0xffffffffu, best_pos, offset);
    const int64_t pi = __shfl_xor_sync(0xffffffffu, best_pos_i, offset);
    const acc_t nv = __shfl_xor_sync(0xffffffffu, best_neg, offset);
    const int64_t ni = __shfl_xor_sync(0xffffffffu, best_neg_i, offset);
    combine(best_pos, best_pos_i, pv, pi, true);
    combine(best_neg, best_neg_i, nv, ni, false);
  }
  if (eb != 0 || r >= n) return;
  if (out.valid != nullptr) {
    store_result(out, r, best_pos, best_pos_i, best_neg, best_neg_i);
  } else {
    const int64_t w = split * n + r;
    out.pos_d[w] = best_pos; out.pos_i[w] = best_pos_i;
    out.neg_d[w] = best_neg; out.neg_i[w] = best_neg_i;
  }
}

// One thread per anchor folds the splits' partials in split order.
template <typename scalar_t>
__global__ void __launch_bounds__(256)
mining_combine_kernel(MiningOut<scalar_t> part, MiningOut<scalar_t> out, int64_t n, int64_t splits) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  acc_t best_pos = 0, best_neg = 0;
  int64_t best_pos_i = -1, best_neg_i = -1;
  for (int64_t s = 0; s < splits; ++s) {
    combine(best_pos, best_pos_i, part.pos_d[s * n + r], part.pos_i[s * n + r], true);
    combine(best_neg, best_neg_i, part.neg_d[s * n + r], part.neg_i[s * n + r], false);
  }
  store_result(out, r, best_pos, best_pos_i, best_neg, best_neg_i);
}

// The pair coefficients of anchor i (an index outside [0, m) counts as no pair: never used to address memory).
template <typename acc_t>
struct AnchorPairs {
  int64_t p, q;
  PairCoefficients<acc_t> P, Q;
};

// The upstream gradients of the public distances, read in place: the features' dtype (what autograd hands
// the op) or, when \c in_acc, the accumulation type (a direct call with float32 gradients for half
// features keeps their precision); any stride (an expanded scalar gradient has stride 0).
template <typename scalar_t>
struct MiningGrads {
  using acc_t = typename Acc<scalar_t>::type;
  const void *pos, *neg;
  int64_t pos_stride, neg_stride;
  bool in_acc;

  __device__ __forceinline__ acc_t pos_at(int64_t i) const { return at(pos, i * pos_stride); }
  __device__ __forceinline__ acc_t neg_at(int64_t i) const { return at(neg, i * neg_stride); }

 private:
  __device__ __forceinline__ acc_t at(const void* g, int64_t k) const {
    return in_acc ? static_cast<const acc_t*>(g)[k] : to_acc(static_cast<const scalar_t*>(g)[k]);
  }
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ AnchorPairs<acc_t> anchor_pairs(int64_t i, const MiningGrads<scalar_t>& g,
                                                           const int64_t* pi, const int64_t* ni, const acc_t* pd,
                                                           const acc_t* nd, const acc_t* asq, const acc_t* csq,
                                                           int64_t m, int metric) {
  AnchorPairs<acc_t> s;
  s.p = pi[i] < m ? pi[i] : -1;
  s.q = ni[i] < m ? ni[i] : -1;
  s.P = pair_coefficients<acc_t>(g.pos_at(i), pd[i], s.p, asq[i],
                                 s.p >= 0 ? csq[s.p] : acc_t(0), metric);
  s.Q = pair_coefficients<acc_t>(g.neg_at(i), nd[i], s.q, asq[i],
                                 s.q >= 0 ? csq[s.q] : acc_t(0), metric);
  return s;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kGradThreads)
mining_bwd_kernel(MiningGrads<scalar_t> g, const scalar_t* __restrict__ a,
                  const scalar_t* __restrict__ c, const int64_t* __restrict__ pi, const int64_t* __restrict__ ni,
                  const typename Acc<scalar_t>::type* __restrict__ pd,
                  const typename Acc<scalar_t>::type* __restrict__ nd,
                  const typename Acc<scalar_t>::type* __restrict__ asq,
                  const typename Acc<scalar_t>::type* __restrict__ csq, scalar_t* __restrict__ grad_a,
                  scalar_t* __restrict__ grad_c, int64_t n, int64_t m, int64_t dim, int metric,
                  int64_t anchor_blocks) {
  using acc_t = typename Acc<scalar_t>::type;
  const int warp = threadIdx.x / kGradLanes, lane = threadIdx.x % kGradLanes;
  const int64_t f0 = static_cast<int64_t>(blockIdx.y) * kGradCols + lane;

  if (blockIdx.x < anchor_blocks) {  // uniform per block: no barrier below in this branch
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kGradRows + warp;
    if (i >= n) return;
    const AnchorPairs<acc_t> s = anchor_pairs(i, g, pi, ni, pd, nd, asq, csq, m, metric);
#pragma unroll
    for (int u = 0; u < kGradPer; ++u) {
      const int64_t f = f0 + u * kGradLanes;
      if (f >= dim) break;
      const acc_t av = to_acc(a[i * dim + f]);
      // Invalid anchors (index -1) read no candidate row: their terms are exactly 0.
      const acc_t cp = s.p >= 0 ? to_acc(c[s.p * dim + f]) : acc_t(0);
      const acc_t cq = s.q >= 0 ? to_acc(c[s.q * dim + f]) : acc_t(0);
      grad_a[i * dim + f] = from_acc<scalar_t, acc_t>((s.P.alpha + s.Q.alpha) * av + s.P.beta * cp + s.Q.beta * cq);
    }
    return;
  }

  // Candidate rows j0 .. j0 + 7, warp w owns j0 + w. Each chunk of 256 anchors is planned in shared memory
  // (which of this block's candidates each pair chose, and its coefficients), then every warp adds the
  // pairs that chose its candidate in anchor order.
  __shared__ int8_t chose_p[kGradThreads], chose_q[kGradThreads];
  __shared__ acc_t beta_p[kGradThreads], gamma_p[kGradThreads], beta_q[kGradThreads], gamma_q[kGradThreads];
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) - anchor_blocks) * kGradRows, j = j0 + warp;
  acc_t cj[kGradPer], sum[kGradPer];
#pragma unroll
  for (int u = 0; u < kGradPer; ++u) {
    const int64_t f = f0 + u * kGradLanes;
    cj[u] = (j < m && f < dim) ? to_acc(c[j * dim + f]) : acc_t(0);
    sum[u] = 0;
  }
  for (int64_t i0 = 0; i0 < n; i0 += kGradThreads) {
    const int64_t i = i0 + threadIdx.x;
    int8_t lp = -1, lq = -1;
    acc_t bp = 0, gp_ = 0, bq = 0, gq_ = 0;
    if (i < n) {
      const int64_t p = pi[i] < m ? pi[i] : -1, q = ni[i] < m ? ni[i] : -1;
      const bool mine_p = p >= j0 && p < j0 + kGradRows, mine_q = q >= j0 && q < j0 + kGradRows;
      if (mine_p || mine_q) {
        const AnchorPairs<acc_t> s = anchor_pairs(i, g, pi, ni, pd, nd, asq, csq, m, metric);
        if (mine_p) { lp = static_cast<int8_t>(p - j0); bp = s.P.beta; gp_ = s.P.gamma; }
        if (mine_q) { lq = static_cast<int8_t>(q - j0); bq = s.Q.beta; gq_ = s.Q.gamma; }
      }
    }
    chose_p[threadIdx.x] = lp; chose_q[threadIdx.x] = lq;
    beta_p[threadIdx.x] = bp; gamma_p[threadIdx.x] = gp_;
    beta_q[threadIdx.x] = bq; gamma_q[threadIdx.x] = gq_;
    __syncthreads();
    const int count = static_cast<int>(n - i0 < kGradThreads ? n - i0 : kGradThreads);
    for (int k = 0; k < count; ++k) {
      const bool hit_p = chose_p[k] == warp, hit_q = chose_q[k] == warp;  // uniform per warp
      if (!hit_p && !hit_q) continue;
      const int64_t ai = i0 + k;
#pragma unroll
      for (int u = 0; u < kGradPer; ++u) {
        const int64_t f = f0 + u * kGradLanes;
        const acc_t av = f < dim ? to_acc(a[ai * dim + f]) : acc_t(0);
        if (hit_p) sum[u] += gamma_p[k] * cj[u] + beta_p[k] * av;
        if (hit_q) sum[u] += gamma_q[k] * cj[u] + beta_q[k] * av;
      }
    }
    __syncthreads();  // the plan is rewritten by the next chunk
  }
  if (j >= m) return;
#pragma unroll
  for (int u = 0; u < kGradPer; ++u) {
    const int64_t f = f0 + u * kGradLanes;
    if (f < dim) grad_c[j * dim + f] = from_acc<scalar_t, acc_t>(sum[u]);
  }
}

template <typename scalar_t>
cudaError_t fwd_typed(const void* a, const void* c, const int64_t* la, const int64_t* lc, const int32_t* ma,
                      const int32_t* mc, void* pos_d, int64_t* pos_i, void* neg_d, int64_t* neg_i, bool* valid,
                      void* asq, void* csq, void* pos_out, void* neg_out, void* workspace, int64_t n, int64_t m,
                      int64_t dim, int metric, int pos_rule, int neg_rule, bool self_mining, const MiningFwdGrid& grid,
                      cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  // Tensor cores for half / bfloat16 from sm_80 on (a device query, no synchronisation).
  bool tensor_cores = false;
  if constexpr (sizeof(scalar_t) == 2) {
    int device = 0, major = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err != cudaSuccess) return err;
    tensor_cores = major >= 8;
  }
  const MiningOut<scalar_t> out{static_cast<acc_t*>(pos_d), static_cast<acc_t*>(neg_d), pos_i, neg_i, valid,
                                 static_cast<scalar_t*>(pos_out), static_cast<scalar_t*>(neg_out)};
  MiningOut<scalar_t> part = out;
  if (grid.splits > 1) {
    if (workspace == nullptr) return cudaErrorInvalidValue;
    // [splits, n] each: indices first (8-byte aligned for any acc_t), then values.
    const int64_t rows = grid.splits * n;
    int64_t* idx = static_cast<int64_t*>(workspace);
    acc_t* val = reinterpret_cast<acc_t*>(idx + 2 * rows);
    part = MiningOut<scalar_t>{val, val + rows, idx, idx + rows, nullptr, nullptr, nullptr};
  }
  const dim3 blocks(static_cast<unsigned>(grid.anchor_blocks), static_cast<unsigned>(grid.splits));
  const acc_t tau = static_cast<acc_t>(zero_tolerance(dim));
  constexpr bool kHalf = sizeof(scalar_t) == 2;
  if (kHalf && tensor_cores) {
    mining_fwd_kernel<scalar_t, kHalf><<<blocks, kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(a), static_cast<const scalar_t*>(c), la, lc, ma, mc, part,
        static_cast<acc_t*>(asq), static_cast<acc_t*>(csq), n, m, dim, metric, pos_rule, neg_rule, self_mining, tau,
        grid.tiles);
  } else {
    mining_fwd_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(a), static_cast<const scalar_t*>(c), la, lc, ma, mc, part,
        static_cast<acc_t*>(asq), static_cast<acc_t*>(csq), n, m, dim, metric, pos_rule, neg_rule, self_mining, tau,
        grid.tiles);
  }
  if (grid.splits > 1) {
    mining_combine_kernel<scalar_t><<<blocks_for(n, 256), 256, 0, stream>>>(part, out, n, grid.splits);
  }
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bwd_typed(bool grads_in_acc, const void* gp, int64_t gp_stride, const void* gn, int64_t gn_stride,
                      const void* a, const void* c, const int64_t* pi, const int64_t* ni, const void* pd,
                      const void* nd, const void* asq, const void* csq, void* grad_a, void* grad_c, int64_t n,
                      int64_t m, int64_t dim, int metric, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (dim == 0 || n + m == 0) return cudaSuccess;
  const int64_t anchor_blocks = blocks_for(n, kGradRows);
  const int64_t blocks = anchor_blocks + blocks_for(m, kGradRows);
  const int64_t feature_blocks = blocks_for(dim, kGradCols);
  if (feature_blocks > kMaxGridYZ || blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
  mining_bwd_kernel<scalar_t><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(feature_blocks)),
                                kGradThreads, 0, stream>>>(
      MiningGrads<scalar_t>{gp, gn, gp_stride, gn_stride, grads_in_acc},
      static_cast<const scalar_t*>(a),
      static_cast<const scalar_t*>(c), pi, ni, static_cast<const acc_t*>(pd), static_cast<const acc_t*>(nd),
      static_cast<const acc_t*>(asq), static_cast<const acc_t*>(csq), static_cast<scalar_t*>(grad_a),
      static_cast<scalar_t*>(grad_c), n, m, dim, metric, anchor_blocks);
  return cudaGetLastError();
}

size_t acc_bytes(DType dtype) { return dtype == DType::kFloat64 ? sizeof(double) : sizeof(float); }

}  // namespace

MiningFwdGrid hard_mining_fwd_grid(int64_t n, int64_t m, int64_t /*dim*/, int sms) {
  MiningFwdGrid g{};
  g.anchor_blocks = blocks_for(n, kRows);
  g.tiles = blocks_for(m, kCols);
  // Enough splits that the grid fills the SMs once (kernels/_launch.py: splits_for), at most one per tile.
  int64_t splits = (static_cast<int64_t>(sms > 0 ? sms : 1) + g.anchor_blocks - 1) / (g.anchor_blocks > 0 ? g.anchor_blocks : 1);
  splits = splits < g.tiles ? splits : g.tiles;
  splits = splits < kMaxGridYZ ? splits : kMaxGridYZ;
  g.splits = splits > 1 ? splits : 1;
  g.threads = kThreads;
  g.launches = g.anchor_blocks == 0 ? 0 : (g.splits > 1 ? 2 : 1);
  return g;
}

size_t hard_mining_fwd_workspace_bytes(DType dtype, int64_t n, int64_t m, int64_t dim, int sms) {
  const MiningFwdGrid g = hard_mining_fwd_grid(n, m, dim, sms);
  if (g.splits <= 1) return 0;
  return static_cast<size_t>(g.splits * n) * 2 * (sizeof(int64_t) + acc_bytes(dtype));
}

cudaError_t hard_mining_fwd(DType dtype, const void* a, const void* c, const int64_t* la, const int64_t* lc,
                            const int32_t* ma, const int32_t* mc, void* pos_d, int64_t* pos_i, void* neg_d,
                            int64_t* neg_i, bool* valid, void* asq, void* csq, void* pos_out, void* neg_out,
                            void* workspace, int64_t n, int64_t m, int64_t dim, int metric, int pos_rule,
                            int neg_rule, bool self_mining, int sms, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const MiningFwdGrid grid = hard_mining_fwd_grid(n, m, dim, sms);
  if (grid.anchor_blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
#define VTREID_MINING_FWD(T) \
  fwd_typed<T>(a, c, la, lc, ma, mc, pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_out, neg_out, workspace, n, m, \
               dim, metric, pos_rule, neg_rule, self_mining, grid, stream)
  switch (dtype) {
    case DType::kFloat32: return VTREID_MINING_FWD(float);
    case DType::kFloat16: return VTREID_MINING_FWD(__half);
    case DType::kBFloat16: return VTREID_MINING_FWD(__nv_bfloat16);
    case DType::kFloat64: return VTREID_MINING_FWD(double);
  }
#undef VTREID_MINING_FWD
  return cudaErrorInvalidValue;
}

cudaError_t hard_mining_bwd(DType dtype, DType grad_dtype, const void* gp, int64_t gp_stride, const void* gn,
                            int64_t gn_stride, const void* a, const void* c, const int64_t* pi, const int64_t* ni,
                            const void* pd, const void* nd, const void* asq, const void* csq, void* grad_a,
                            void* grad_c, int64_t n, int64_t m, int64_t dim, int metric, cudaStream_t stream) {
  const DType acc_dtype = dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  if (grad_dtype != dtype && grad_dtype != acc_dtype) return cudaErrorInvalidValue;
#define VTREID_MINING_BWD(T) \
  bwd_typed<T>(grad_dtype != dtype, gp, gp_stride, gn, gn_stride, a, c, pi, ni, pd, nd, asq, csq, grad_a, grad_c, n, \
               m, dim, metric, stream)
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
