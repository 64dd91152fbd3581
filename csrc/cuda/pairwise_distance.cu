// CUDA kernels of vtreid.ops.pairwise_distance. Formulas in kernels/pairwise_distance.py; the distance of a
// pair from its dot product and the two squared norms is csrc/pair_math.h:distance_from_dot.
//
// Forward, half (sm_70 and later) and bfloat16 (sm_80 and later): tensor cores (nvcuda::wmma, m16n16k16, float
// accumulators). A block owns a 128 x 128 output tile (8 warps, each 32 x 64 = 2 x 4 fragments) or, when
// that gives fewer blocks than SMs, a 64 x 64 tile (4 warps of 32 x 32). Features stream in slices of 32
// through two shared-memory stages: the next slice is loaded into registers (16-byte loads) while the
// tensor cores work on the current one, then stored to the other stage, so each slice costs one
// __syncthreads(). The squared row norms are summed in float from the same staged half values. The
// epilogue stages the accumulators in shared memory (reusing the operand stages), applies the distance
// formula and stores rows of the tile with consecutive threads on consecutive columns.
// No cp.async / ldmatrix (inline PTX): the kernels also run on the CPU emulation (csrc/emu).
//
// Forward, float32 and float64 (and half / bfloat16 on older devices): SIMT. Each 256-thread block owns a
// 64 x 64 output tile, each thread a 4 x 4 sub-tile at stride 16 so that shared-memory reads are
// conflict-free and global stores coalesce; float32 accumulates in IEEE float32 (no TF32), float64 in
// float64.
//
// Backward: grad_a = rowcoef * a - B b with the coefficient matrix B built on the fly per 16-column slice,
// 64 x 64 tiles of (rows of a) x features. grad and dist tiles are read with consecutive threads along
// whichever index has unit stride (the y side reads them transposed) and transposed through shared memory.
// B b: half / bfloat16 on sm_80 and later on tensor cores (wmma m16n16k8, TF32, B split into two TF32
// parts: pairwise_bwd_tc_kernel), float32 / float64 and older devices SIMT.
//
// Split-K (pairwise_distance_fwd_grid): when the 64 x 64 tiles alone give fewer blocks than SMs (the training
// shape N = M = 256 has 16), the features are also split into `splits` contiguous ranges of whole 64-feature
// granules on grid dimension y. Each block then writes its raw dot products and partial squared norms to a
// [splits, N, M] + [splits, N] + [splits, M] workspace in the accumulation type, and a combine kernel adds the
// splits in index order (dots and norms alike) and applies the distance epilogue: no atomics, so a given
// device (SM count) gives bitwise-identical results on every run. The 128 x 128 tensor-core path and every
// problem with enough tiles never split.
//
// Backward tiles have 64 rows, or 32 / 16 when that is what it takes to give every SM a block
// (pairwise_distance_bwd_grid); the summation order over the other operand does not depend on the tile.
//
// Tiles are numbered on grid dimension x (up to 2^31 - 1 blocks; y and z stop at 65535).
#include <mma.h>

#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "launch.h"

namespace vtreid::cuda {
namespace {

constexpr int kTile = 64;   // SIMT: rows of each operand per block (forward), rows x features (backward)
constexpr int kStep = 16;   // SIMT: reduction slice held in shared memory
constexpr int kThreads = 256;
constexpr int kSub = 4;     // SIMT: per-thread sub-tile side
constexpr int kSplitK = 64; // split-K granule (features): a whole number of SIMT slices and tensor-core stages

// The feature splits: `count` ranges of whole granules, the first `extra` of them one granule longer than
// `per`, none empty while count <= granules. Built on the host: a 64-bit division by the split count in
// the kernels made ptxas spill the SIMT half forward (sm_90) and the 64 x 64 tensor-core one (sm_80).
struct SplitK {
  int64_t count, per, extra;
  static SplitK make(int64_t dim, int64_t count) {
    const int64_t granules = (dim + kSplitK - 1) / kSplitK;
    return {count, granules / count, granules % count};
  }
  // Features [begin, end) of split s.
  __device__ void range(int64_t s, int64_t dim, int64_t& begin, int64_t& end) const {
    begin = (s * per + (s < extra ? s : extra)) * kSplitK;
    end = begin + (per + (s < extra ? 1 : 0)) * kSplitK;
    begin = begin < dim ? begin : dim;
    end = end < dim ? end : dim;
  }
};

// The split-K workspace: dots [splits, n, m], then xsq [splits, n], then ysq [splits, m].
template <typename acc_t>
struct Partials {
  acc_t* dot;
  acc_t* xsq;
  acc_t* ysq;
  __host__ __device__ Partials(void* base, int64_t splits, int64_t n, int64_t m)
      : dot(static_cast<acc_t*>(base)), xsq(dot + splits * n * m), ysq(xsq + splits * n) {}
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pairwise_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, scalar_t* __restrict__ out,
                    typename Acc<scalar_t>::type* __restrict__ xsq_out,
                    typename Acc<scalar_t>::type* __restrict__ ysq_out, void* __restrict__ workspace, int64_t n,
                    int64_t m, int64_t dim, SplitK split_k, int metric, typename Acc<scalar_t>::type tau) {
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
  int64_t kb, ke;  // this split's features
  split_k.range(blockIdx.y, dim, kb, ke);
  const int64_t splits = split_k.count;

  acc_t acc[kSub][kSub] = {};
  acc_t norm_part = 0;  // threads 0..63: |x_row|^2, threads 64..127: |y_row|^2

  for (int64_t k0 = kb; k0 < ke; k0 += kStep) {
#pragma unroll
    for (int r = 0; r < kTile * kStep / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int row = e / kStep, kk = e % kStep;
      const int64_t k = k0 + kk;
      const int64_t xr = row0 + row, yr = col0 + row;
      xs[kk][row] = (xr < n && k < ke) ? to_acc(x[xr * dim + k]) : acc_t(0);
      ys[kk][row] = (yr < m && k < ke) ? to_acc(y[yr * dim + k]) : acc_t(0);
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
  if (splits > 1) {  // partial sums for the combine kernel
    const Partials<acc_t> part(workspace, splits, n, m);
    const int64_t s = blockIdx.y;
    if (col_tile == 0 && tid < kTile && row0 + tid < n) part.xsq[s * n + row0 + tid] = norm_part;
    if (row_tile == 0 && tid >= kTile && tid < 2 * kTile && col0 + tid - kTile < m)
      part.ysq[s * m + col0 + tid - kTile] = norm_part;
#pragma unroll
    for (int i = 0; i < kSub; ++i) {
      const int64_t r = row0 + ty + 16 * i;
      if (r >= n) continue;
#pragma unroll
      for (int j = 0; j < kSub; ++j) {
        const int64_t c = col0 + tx + 16 * j;
        if (c < m) part.dot[(s * n + r) * m + c] = acc[i][j];
      }
    }
    return;
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

// Split-K combine: one thread per output element adds the splits' dots and norms in split order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pairwise_combine_kernel(const void* __restrict__ workspace, scalar_t* __restrict__ out,
                        typename Acc<scalar_t>::type* __restrict__ xsq_out,
                        typename Acc<scalar_t>::type* __restrict__ ysq_out, int64_t n, int64_t m, int64_t splits,
                        int metric, typename Acc<scalar_t>::type tau) {
  using acc_t = typename Acc<scalar_t>::type;
  const Partials<acc_t> part(const_cast<void*>(workspace), splits, n, m);
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= n * m) return;
  const int64_t i = e / m, j = e % m;
  acc_t dot = 0, xq = 0, yq = 0;
  for (int64_t s = 0; s < splits; ++s) {
    dot += part.dot[s * n * m + e];
    xq += part.xsq[s * n + i];
    yq += part.ysq[s * m + j];
  }
  out[e] = from_acc<scalar_t, acc_t>(distance_from_dot(dot, xq, yq, metric, tau));
  if (j == 0) xsq_out[i] = xq;
  if (i == 0) ysq_out[j] = yq;
}

// --- tensor-core forward (half, bfloat16) ---------------------------------------------------------------

constexpr int kTcK = 32;         // features per stage
constexpr int kTcLd = kTcK + 8;  // stage row stride (elements): 80 bytes keeps rows 16-byte aligned and
                                 // spreads the 8 rows a fragment load touches over all banks
constexpr int kTcGroup = 8;      // row tiles per raster group: blocks in flight share y tiles in L2

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct TcConfig {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int FM = BM / WARPS_M / 16, FN = BN / WARPS_N / 16;  // fragments per warp
  static constexpr int kChunks = BM * kTcK / 8 / kThreads;               // 16-byte loads per thread and operand
  static constexpr int kStageRows = WARPS_M * 16;                        // epilogue: one fragment row per warp
  static constexpr int kStageLd = BN + 4;
  static_assert(BM == BN && BM + BN == kThreads, "one norm row per thread, equal chunk counts for x and y");
  static_assert(kChunks * kThreads * 8 == BM * kTcK, "stages split evenly into 16-byte chunks");
};
using TcLarge = TcConfig<128, 128, 4, 2>;
using TcSmall = TcConfig<64, 64, 2, 2>;

template <typename T, typename C>
struct alignas(128) TcShared {
  static constexpr int kOperands = 2 * (C::BM + C::BN) * kTcLd * static_cast<int>(sizeof(T));  // two stages
  static constexpr int kStaging = C::kStageRows * C::kStageLd * static_cast<int>(sizeof(float));
  unsigned char raw[kOperands > kStaging ? kOperands : kStaging];  // operand stages, then the epilogue's staging
  float xsq[C::BM];
  float ysq[C::BN];
};

// Features k .. k + 7 of row `row` (16-bit elements, row stride dim), zero outside [0, rows) x [0, end).
template <typename T>
__device__ __forceinline__ uint4 load_chunk(const T* __restrict__ src, int64_t row, int64_t rows, int64_t k,
                                            int64_t end, int64_t dim, bool vec) {
  if (row < rows && vec && k + 8 <= end) return *reinterpret_cast<const uint4*>(src + row * dim + k);
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  unsigned v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = (row < rows && k + i < end) ? bits[row * dim + k + i] : 0u;
  uint4 out;
  out.x = v[0] | (v[1] << 16);
  out.y = v[2] | (v[3] << 16);
  out.z = v[4] | (v[5] << 16);
  out.w = v[6] | (v[7] << 16);
  return out;
}

// norm += sum of squares of one staged row (kTcK values), in float, 16-byte shared-memory reads.
template <typename T>
__device__ __forceinline__ void add_squares(const T* row, float& norm) {
#pragma unroll
  for (int q = 0; q < kTcK / 8; ++q) {
    const uint4 u = *reinterpret_cast<const uint4*>(row + 8 * q);
    T v[8];
    memcpy(v, &u, sizeof(u));
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float f = to_acc(v[i]);
      norm += f * f;
    }
  }
}

// One block tile of the tensor-core forward (the kernel's body).
template <typename T, typename C>
__device__ __forceinline__ void fwd_tc_tile(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                                            float* __restrict__ xsq_out, float* __restrict__ ysq_out,
                                            void* __restrict__ workspace, int64_t n, int64_t m, int64_t dim,
                                            SplitK split_k, int metric, float tau, bool vec) {
  namespace wmma = nvcuda::wmma;
  constexpr int kStageElems = (C::BM + C::BN) * kTcLd;
  __shared__ TcShared<T, C> s;
  T* const stages = reinterpret_cast<T*>(s.raw);

  const int tid = threadIdx.x;
  const int warp = tid / 32, wr = warp / C::WARPS_N, wc = warp % C::WARPS_N;
  // Grouped raster: kTcGroup row tiles share their column tiles while they are in flight.
  const int64_t row_tiles = (n + C::BM - 1) / C::BM, col_tiles = (m + C::BN - 1) / C::BN;
  const int64_t per_group = kTcGroup * col_tiles;
  const int64_t first = (blockIdx.x / per_group) * kTcGroup, in_group = blockIdx.x % per_group;
  const int64_t group_rows = row_tiles - first < kTcGroup ? row_tiles - first : kTcGroup;
  const int64_t row_tile = first + in_group % group_rows, col_tile = in_group / group_rows;
  const int64_t row0 = row_tile * C::BM, col0 = col_tile * C::BN;
  int64_t kb, ke;  // this split's features
  split_k.range(blockIdx.y, dim, kb, ke);
  const int64_t splits = split_k.count;

  uint4 xr[C::kChunks], yr[C::kChunks];  // the next slice, in flight while the current one is multiplied
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int c = 0; c < C::kChunks; ++c) {
      const int e = tid + c * C::kThreads, r = e / (kTcK / 8), k = (e % (kTcK / 8)) * 8;
      xr[c] = load_chunk(x, row0 + r, n, k0 + k, ke, dim, vec);
      yr[c] = load_chunk(y, col0 + r, m, k0 + k, ke, dim, vec);
    }
  };
  auto stash = [&](int stage) {
    T* const xs = stages + stage * kStageElems;
    T* const ys = xs + C::BM * kTcLd;
#pragma unroll
    for (int c = 0; c < C::kChunks; ++c) {
      const int e = tid + c * C::kThreads, r = e / (kTcK / 8), k = (e % (kTcK / 8)) * 8;
      *reinterpret_cast<uint4*>(xs + r * kTcLd + k) = xr[c];
      *reinterpret_cast<uint4*>(ys + r * kTcLd + k) = yr[c];
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[C::FM][C::FN];
#pragma unroll
  for (int i = 0; i < C::FM; ++i)
#pragma unroll
    for (int j = 0; j < C::FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  float norm = 0;  // thread t < BM: |x_{row0 + t}|^2, else |y_{col0 + t - BM}|^2

  const int64_t steps = (ke - kb + kTcK - 1) / kTcK;
  if (steps > 0) {
    fetch(kb);
    stash(0);
  }
  __syncthreads();
  for (int64_t step = 0; step < steps; ++step) {
    const int stage = static_cast<int>(step & 1);
    if (step + 1 < steps) fetch(kb + (step + 1) * kTcK);
    const T* const xs = stages + stage * kStageElems;
    const T* const ys = xs + C::BM * kTcLd;
    add_squares(tid < C::BM ? xs + tid * kTcLd : ys + (tid - C::BM) * kTcLd, norm);
#pragma unroll
    for (int kk = 0; kk < kTcK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[C::FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[C::FN];  // y rows = columns of y^T
#pragma unroll
      for (int i = 0; i < C::FM; ++i) wmma::load_matrix_sync(fa[i], xs + ((wr * C::FM + i) * 16) * kTcLd + kk, kTcLd);
#pragma unroll
      for (int j = 0; j < C::FN; ++j) wmma::load_matrix_sync(fb[j], ys + ((wc * C::FN + j) * 16) * kTcLd + kk, kTcLd);
#pragma unroll
      for (int i = 0; i < C::FM; ++i)
#pragma unroll
        for (int j = 0; j < C::FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    // The other stage was last read before the previous iteration's barrier: safe to overwrite now.
    if (step + 1 < steps) stash(stage ^ 1);
    __syncthreads();
  }

  const int64_t split = blockIdx.y;
  const Partials<float> part(workspace, splits, n, m);  // used only when splits > 1
  if (splits > 1) {
    if (tid < C::BM) {
      if (col_tile == 0 && row0 + tid < n) part.xsq[split * n + row0 + tid] = norm;
    } else if (row_tile == 0 && col0 + tid - C::BM < m) {
      part.ysq[split * m + col0 + tid - C::BM] = norm;
    }
  } else if (tid < C::BM) {
    s.xsq[tid] = norm;
    if (col_tile == 0 && row0 + tid < n) xsq_out[row0 + tid] = norm;
  } else {
    s.ysq[tid - C::BM] = norm;
    if (row_tile == 0 && col0 + tid - C::BM < m) ysq_out[col0 + tid - C::BM] = norm;
  }
  // Epilogue in FM passes; pass i stages fragment row i of every warp. The loop's last barrier ended every
  // read of the operand stages, so the staging area may overwrite them.
  float* const staged = reinterpret_cast<float*>(s.raw);
#pragma unroll
  for (int i = 0; i < C::FM; ++i) {
#pragma unroll
    for (int j = 0; j < C::FN; ++j) {
      wmma::store_matrix_sync(staged + wr * 16 * C::kStageLd + (wc * C::FN + j) * 16, acc[i][j], C::kStageLd,
                              wmma::mem_row_major);
    }
    __syncthreads();
    for (int e = tid; e < C::kStageRows * C::BN; e += C::kThreads) {
      const int sr = e / C::BN, c = e % C::BN;
      const int tr = (sr / 16) * (C::FM * 16) + i * 16 + sr % 16;  // row within the block tile
      const int64_t r = row0 + tr, col = col0 + c;
      if (r < n && col < m) {
        if (splits > 1) {
          part.dot[(split * n + r) * m + col] = staged[sr * C::kStageLd + c];
        } else {
          out[r * m + col] =
              from_acc<T, float>(distance_from_dot(staged[sr * C::kStageLd + c], s.xsq[tr], s.ysq[c], metric, tau));
        }
      }
    }
    if (i + 1 < C::FM) __syncthreads();  // every thread has read the staging area before the next pass
  }
}

#if defined(__CUDA_ARCH__)
constexpr int kArch = __CUDA_ARCH__;
#else
constexpr int kArch = 1000;  // the host pass (and the CPU emulation): no device code to generate
#endif

// Tensor-core fragments of half exist from sm_70, of bfloat16 from sm_80.
template <typename T>
__host__ __device__ constexpr bool tc_supported(int arch) {
  return arch >= (std::is_same_v<T, __nv_bfloat16> ? 800 : 700);
}

template <typename T, typename C>
__global__ void __launch_bounds__(C::kThreads)
pairwise_fwd_tc_kernel(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                       float* __restrict__ xsq_out, float* __restrict__ ysq_out, void* __restrict__ workspace,
                       int64_t n, int64_t m, int64_t dim, SplitK split_k, int metric, float tau, bool vec) {
  if constexpr (tc_supported<T>(kArch)) {
    fwd_tc_tile<T, C>(x, y, out, xsq_out, ysq_out, workspace, n, m, dim, split_k, metric, tau, vec);
  } else {
    __trap();  // not launched: the launcher takes the SIMT kernel on such a device
  }
}

// One [R rows i] x [kStep columns j] tile of a matrix read at i * sn + j * sk, zero outside [0, n) x
// [0, k), into dst[j][i] (rows of LD elements). Consecutive threads walk i when i has unit stride (the y side
// of a row-major [n, m] grad: a transposed read), else j, so global reads coalesce either way.
template <int R, int LD, typename acc_t>
__device__ __forceinline__ void load_coef_tile(const acc_t* __restrict__ src, int64_t sn, int64_t sk, int64_t row0,
                                               int64_t k0, int64_t n, int64_t k, acc_t (*dst)[LD]) {
  const bool along_rows = sn == 1 && sk != 1;
#pragma unroll
  for (int r = 0; r < R * kStep / kThreads; ++r) {
    const int e = threadIdx.x + r * kThreads;
    const int row = along_rows ? e % R : e / kStep, kk = along_rows ? e / R : e % kStep;
    const int64_t i = row0 + row, j = k0 + kk;
    dst[kk][row] = (i < n && j < k) ? src[i * sn + j * sk] : acc_t(0);
  }
}

// The backward's shared-memory slice j in [k0, k0 + kStep): coef[j][i] = B_ij and term[j][i] = what a_i sums
// (rows of LD), bs[j][f] = b_{k0 + j, f0 + f} widened (rows of BLD). Ends with a barrier; the thread that owns
// row tid < R then adds this slice's terms to its row_coef.
template <typename scalar_t, int R, int LD, int BLD>
__device__ __forceinline__ void bwd_stage_slice(
    const typename Acc<scalar_t>::type* __restrict__ grad, const typename Acc<scalar_t>::type* __restrict__ dist,
    const scalar_t* __restrict__ b, const typename Acc<scalar_t>::type* __restrict__ asq,
    const typename Acc<scalar_t>::type* __restrict__ bsq, int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk,
    int64_t dsn, int64_t dsk, int metric, int64_t row0, int64_t f0, int64_t k0,
    typename Acc<scalar_t>::type (*coef_s)[LD], typename Acc<scalar_t>::type (*term_s)[LD],
    typename Acc<scalar_t>::type (*bs)[BLD], typename Acc<scalar_t>::type& row_coef) {
  using acc_t = typename Acc<scalar_t>::type;
  const int tid = threadIdx.x;
  load_coef_tile<R, LD>(grad, gsn, gsk, row0, k0, n, k, coef_s);
  load_coef_tile<R, LD>(dist, dsn, dsk, row0, k0, n, k, term_s);
#pragma unroll
  for (int r = 0; r < kTile * kStep / kThreads; ++r) {
    // The b slice: kStep rows x kTile features, 4 per thread, contiguous along features.
    const int e = tid + r * kThreads;
    const int brow = e / kTile, bcol = e % kTile;
    const int64_t bj = k0 + brow, bf = f0 + bcol;
    bs[brow][bcol] = (bj < k && bf < dim) ? to_acc(b[bj * dim + bf]) : acc_t(0);
  }
  __syncthreads();
  // grad and dist -> coefficients, in place: each element is read and rewritten by the same thread. Not
  // unrolled: float64 divisions and square roots are subroutines whose registers would add up.
#pragma unroll 1
  for (int r = 0; r < R * kStep / kThreads; ++r) {
    const int e = tid + r * kThreads;
    const int row = e % R, kk = e / R;
    const int64_t i = row0 + row, j = k0 + kk;
    acc_t c = 0, t = 0;
    if (i < n && j < k) {
      const acc_t g = coef_s[kk][row], d = term_s[kk][row];
      if (metric == kCosine) {
        const acc_t na = hd_max(sqrt(asq[i]), acc_t(kCosineEps)), nb = hd_max(sqrt(bsq[j]), acc_t(kCosineEps));
        c = g / (na * nb);
        t = g * (acc_t(1) - d);
      } else {
        c = d != acc_t(0) ? (metric == kEuclidean ? g / d : acc_t(2) * g) : acc_t(0);
        t = c;
      }
    }
    coef_s[kk][row] = c;
    term_s[kk][row] = t;
  }
  __syncthreads();
  if (tid < R) {
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) row_coef += term_s[kk][tid];
  }
}

// a_i: the summed terms, over n_i^2 for the cosine (0 for a row of norm <= eps).
template <typename acc_t>
__device__ __forceinline__ acc_t finish_row_coef(acc_t row_coef, const acc_t* __restrict__ asq, int64_t i, int64_t n,
                                                 int metric) {
  if (metric == kCosine && i < n) {
    const acc_t na = sqrt(asq[i]);
    return na > acc_t(kCosineEps) ? row_coef / (na * na) : acc_t(0);
  }
  return row_coef;
}

// R rows of a per block (64, 32 or 16), each thread kSub features x R / 16 rows.
template <typename scalar_t, int R>
__global__ void __launch_bounds__(kThreads)
pairwise_bwd_side_kernel(const typename Acc<scalar_t>::type* __restrict__ grad,
                         const typename Acc<scalar_t>::type* __restrict__ dist, const scalar_t* __restrict__ a,
                         const scalar_t* __restrict__ b, const typename Acc<scalar_t>::type* __restrict__ asq,
                         const typename Acc<scalar_t>::type* __restrict__ bsq, scalar_t* __restrict__ grad_a,
                         int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk, int64_t dsn, int64_t dsk,
                         int metric) {
  using acc_t = typename Acc<scalar_t>::type;
  constexpr int kSubR = R / 16;
  static_assert(R % 16 == 0 && R * kStep % kThreads == 0, "whole rows per thread, whole loads per thread");
  __shared__ acc_t coef_s[kStep][R + 1];  // grad, then B_ij for this block's rows i and slice j
  __shared__ acc_t term_s[kStep][R + 1];  // dist, then what a_i sums over j
  __shared__ acc_t bs[kStep][kTile];      // b rows of the slice, this block's feature columns
  __shared__ acc_t row_coef_s[R];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t f_tiles = (dim + kTile - 1) / kTile;
  const int64_t row0 = (blockIdx.x / f_tiles) * R;
  const int64_t f0 = (blockIdx.x % f_tiles) * kTile;

  acc_t acc[kSubR][kSub] = {};
  acc_t row_coef = 0;  // threads 0..R-1 own row tid

  for (int64_t k0 = 0; k0 < k; k0 += kStep) {
    bwd_stage_slice<scalar_t, R, R + 1, kTile>(grad, dist, b, asq, bsq, n, k, dim, gsn, gsk, dsn, dsk, metric, row0,
                                               f0, k0, coef_s, term_s, bs, row_coef);
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      acc_t cv[kSubR], bv[kSub];
#pragma unroll
      for (int i = 0; i < kSubR; ++i) cv[i] = coef_s[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kSub; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kSubR; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] += cv[i] * bv[j];
    }
    __syncthreads();
  }
  if (tid < R) row_coef_s[tid] = finish_row_coef(row_coef, asq, row0 + tid, n, metric);
  __syncthreads();

#pragma unroll
  for (int i = 0; i < kSubR; ++i) {
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

// The same backward for half / bfloat16 on sm_80 and later, B @ b on tensor cores: wmma m16n16k8 with TF32
// operands. b's values (fp16 / bf16, widened) are exact in TF32; B is float, so each fragment of it is split
// into hi = B rounded to TF32 and lo = B - hi (exact), and both are multiplied: ~2^-21 relative per product
// where a single TF32 product would keep 2^-11 (kernels/pairwise_distance.py: _dot_2xtf32, the same idea).
// The R x 64 block tile is (R / 16) x 4 fragments of 16 x 16, dealt to the 8 warps in order (R = 16: warps
// 4-7 only stage); the accumulators are staged through shared memory for the epilogue, which stores rows
// with consecutive threads on consecutive features.
constexpr int kBwdTcPad = 4;  // floats: rows of a multiple of 16 bytes (wmma's ldm), fragments 32-byte aligned

template <int R>
struct alignas(32) BwdTcShared {
  static constexpr int LD = R + kBwdTcPad, BLD = kTile + kBwdTcPad;
  float coef[kStep][LD];  // B_ij at [j][i]: matrix_a (i, j) col_major
  float term[kStep][LD];
  float bs[kStep][BLD];   // matrix_b (j, f) row_major
  float staged[R][BLD];   // the accumulators, row major
  float row_coef[R];
};

template <typename T, int R>
__device__ __forceinline__ void bwd_tc_tile(const float* __restrict__ grad, const float* __restrict__ dist,
                                            const T* __restrict__ a, const T* __restrict__ b,
                                            const float* __restrict__ asq, const float* __restrict__ bsq,
                                            T* __restrict__ grad_a, int64_t n, int64_t k, int64_t dim, int64_t gsn,
                                            int64_t gsk, int64_t dsn, int64_t dsk, int metric) {
  namespace wmma = nvcuda::wmma;
  using S = BwdTcShared<R>;
  constexpr int kFrags = (R / 16) * (kTile / 16), kWarps = kThreads / 32;
  constexpr int kPerWarp = kFrags >= kWarps ? kFrags / kWarps : 1;
  static_assert((kFrags % kWarps == 0 || kFrags < kWarps) && (kTile / 16) % kPerWarp == 0,
                "fragments dealt evenly, a warp's within one row block");
  __shared__ S s;

  const int tid = threadIdx.x, warp = tid / 32;
  const int64_t f_tiles = (dim + kTile - 1) / kTile;
  const int64_t row0 = (blockIdx.x / f_tiles) * R;
  const int64_t f0 = (blockIdx.x % f_tiles) * kTile;
  const bool computes = warp * kPerWarp < kFrags;

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[kPerWarp];
#pragma unroll
  for (int q = 0; q < kPerWarp; ++q) wmma::fill_fragment(acc[q], 0.0f);
  float row_coef = 0;

  for (int64_t k0 = 0; k0 < k; k0 += kStep) {
    bwd_stage_slice<T, R, S::LD, S::BLD>(grad, dist, b, asq, bsq, n, k, dim, gsn, gsk, dsn, dsk, metric, row0, f0, k0,
                                         s.coef, s.term, s.bs, row_coef);
    if (computes) {
#pragma unroll
      for (int kk = 0; kk < kStep; kk += 8) {
        // A warp's fragments share their row block (kPerWarp divides the 4 column blocks): split B once.
        const int fr = warp * kPerWarp / (kTile / 16);
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> hi, lo;
        wmma::load_matrix_sync(hi, &s.coef[kk][fr * 16], S::LD);
#pragma unroll
        for (int e = 0; e < hi.num_elements; ++e) {
          const float v = hi.x[e], h = wmma::__float_to_tf32(v);
          hi.x[e] = h;
          lo.x[e] = h == v ? 0.0f : wmma::__float_to_tf32(v - h);  // inf: lo 0, not inf - inf
        }
#pragma unroll
        for (int q = 0; q < kPerWarp; ++q) {
          const int fc = (warp * kPerWarp + q) % (kTile / 16);
          wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, &s.bs[kk][fc * 16], S::BLD);
#pragma unroll
          for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);  // exact
          wmma::mma_sync(acc[q], lo, fb, acc[q]);
          wmma::mma_sync(acc[q], hi, fb, acc[q]);
        }
      }
    }
    __syncthreads();  // every warp has read the slice before the next one overwrites it
  }
  if (tid < R) s.row_coef[tid] = finish_row_coef(row_coef, asq, row0 + tid, n, metric);
  if (computes) {
#pragma unroll
    for (int q = 0; q < kPerWarp; ++q) {
      const int frag = warp * kPerWarp + q, fr = frag / (kTile / 16), fc = frag % (kTile / 16);
      wmma::store_matrix_sync(&s.staged[fr * 16][fc * 16], acc[q], S::BLD, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = tid; e < R * kTile; e += kThreads) {
    const int row = e / kTile, col = e % kTile;
    const int64_t r = row0 + row, f = f0 + col;
    if (r < n && f < dim) {
      grad_a[r * dim + f] = from_acc<T, float>(s.row_coef[row] * to_acc(a[r * dim + f]) - s.staged[row][col]);
    }
  }
}

// TF32 fragments exist from sm_80.
__host__ __device__ constexpr bool tf32_supported(int arch) { return arch >= 800; }

template <typename T, int R>
__global__ void __launch_bounds__(kThreads)
pairwise_bwd_tc_kernel(const float* __restrict__ grad, const float* __restrict__ dist, const T* __restrict__ a,
                       const T* __restrict__ b, const float* __restrict__ asq, const float* __restrict__ bsq,
                       T* __restrict__ grad_a, int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk,
                       int64_t dsn, int64_t dsk, int metric) {
  if constexpr (tf32_supported(kArch)) {
    bwd_tc_tile<T, R>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric);
  } else {
    __trap();  // not launched: the launcher takes the SIMT kernel on such a device
  }
}

// Row tiles x column tiles; 0 when the count exceeds grid dimension x.
int64_t tiles(int64_t rows, int64_t cols, int64_t tile_rows, int64_t tile_cols) {
  const int64_t count = ((rows + tile_rows - 1) / tile_rows) * ((cols + tile_cols - 1) / tile_cols);
  return count <= kMaxGridX ? count : 0;
}

template <typename scalar_t>
cudaError_t fwd_simt(const void* x, const void* y, void* dist, void* xsq, void* ysq, void* workspace, int64_t n,
                     int64_t m, int64_t dim, int metric, const PairwiseFwdGrid& g, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  pairwise_fwd_kernel<scalar_t><<<dim3(static_cast<unsigned>(g.tiles), static_cast<unsigned>(g.splits)), kThreads,
                                  0, stream>>>(
      static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(y), static_cast<scalar_t*>(dist),
      static_cast<acc_t*>(xsq), static_cast<acc_t*>(ysq), workspace, n, m, dim, SplitK::make(dim, g.splits), metric,
      static_cast<acc_t>(zero_tolerance(dim)));
  return cudaGetLastError();
}

template <typename T, typename C>
cudaError_t fwd_tc(const void* x, const void* y, void* dist, void* xsq, void* ysq, void* workspace, int64_t n,
                   int64_t m, int64_t dim, int metric, const PairwiseFwdGrid& g, cudaStream_t stream) {
  const bool vec = dim % 8 == 0 && (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y)) % 16 == 0;
  pairwise_fwd_tc_kernel<T, C><<<dim3(static_cast<unsigned>(g.tiles), static_cast<unsigned>(g.splits)), C::kThreads,
                                 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(y), static_cast<T*>(dist), static_cast<float*>(xsq),
      static_cast<float*>(ysq), workspace, n, m, dim, SplitK::make(dim, g.splits), metric,
      static_cast<float>(zero_tolerance(dim)), vec);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t fwd_typed(const void* x, const void* y, void* dist, void* xsq, void* ysq, void* workspace, int64_t n,
                      int64_t m, int64_t dim, int metric, const PairwiseFwdGrid& g, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  cudaError_t err = cudaSuccess;
  if constexpr (std::is_same_v<scalar_t, __half> || std::is_same_v<scalar_t, __nv_bfloat16>) {
    if (g.kernel == kFwdTc128) err = fwd_tc<scalar_t, TcLarge>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
    else if (g.kernel == kFwdTc64) err = fwd_tc<scalar_t, TcSmall>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
    else err = fwd_simt<scalar_t>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
  } else {
    err = fwd_simt<scalar_t>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
  }
  if (err != cudaSuccess || g.splits <= 1) return err;
  pairwise_combine_kernel<scalar_t><<<static_cast<unsigned>(blocks_for(n * m, kThreads)), kThreads, 0, stream>>>(
      workspace, static_cast<scalar_t*>(dist), static_cast<acc_t*>(xsq), static_cast<acc_t*>(ysq), n, m, g.splits,
      metric, static_cast<acc_t>(zero_tolerance(dim)));
  return cudaGetLastError();
}

template <typename scalar_t, int R>
cudaError_t bwd_launch(const void* grad, const void* dist, const void* a, const void* b, const void* asq,
                       const void* bsq, void* grad_a, int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk,
                       int64_t dsn, int64_t dsk, int metric, unsigned blocks, bool tc, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if constexpr (std::is_same_v<scalar_t, __half> || std::is_same_v<scalar_t, __nv_bfloat16>) {
    if (tc) {
      pairwise_bwd_tc_kernel<scalar_t, R><<<blocks, kThreads, 0, stream>>>(
          static_cast<const float*>(grad), static_cast<const float*>(dist), static_cast<const scalar_t*>(a),
          static_cast<const scalar_t*>(b), static_cast<const float*>(asq), static_cast<const float*>(bsq),
          static_cast<scalar_t*>(grad_a), n, k, dim, gsn, gsk, dsn, dsk, metric);
      return cudaGetLastError();
    }
  }
  pairwise_bwd_side_kernel<scalar_t, R><<<blocks, kThreads, 0, stream>>>(
      static_cast<const acc_t*>(grad), static_cast<const acc_t*>(dist), static_cast<const scalar_t*>(a),
      static_cast<const scalar_t*>(b), static_cast<const acc_t*>(asq), static_cast<const acc_t*>(bsq),
      static_cast<scalar_t*>(grad_a), n, k, dim, gsn, gsk, dsn, dsk, metric);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bwd_typed(const void* grad, const void* dist, const void* a, const void* b, const void* asq, const void* bsq,
               void* grad_a, int64_t n, int64_t k, int64_t dim, int64_t gsn, int64_t gsk, int64_t dsn, int64_t dsk,
               int metric, const PairwiseBwdGrid& g, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(g.blocks);
  const bool tc = g.tensor_cores;
  switch (g.tile_rows) {
    case 64: return bwd_launch<scalar_t, 64>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, blocks, tc, stream);
    case 32: return bwd_launch<scalar_t, 32>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, blocks, tc, stream);
    default: return bwd_launch<scalar_t, 16>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, blocks, tc, stream);
  }
}

size_t acc_bytes(DType dtype) { return dtype == DType::kFloat64 ? sizeof(double) : sizeof(float); }

// The current device's compute capability (major) for half / bfloat16, which have tensor-core kernels; 0
// for the other dtypes, which do not ask.
cudaError_t tensor_core_arch(DType dtype, int& major) {
  major = 0;
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  return err;
}

}  // namespace

PairwiseFwdGrid pairwise_distance_fwd_grid(DType dtype, int64_t n, int64_t m, int64_t dim, int sms, int cc_major) {
  PairwiseFwdGrid g{};
  g.kernel = kFwdSimt;
  g.tile = kTile;
  g.threads = kThreads;
  g.splits = 1;
  const bool tc = (dtype == DType::kFloat16 && tc_supported<__half>(cc_major * 100)) ||
                  (dtype == DType::kBFloat16 && tc_supported<__nv_bfloat16>(cc_major * 100));
  const int64_t want = sms > 0 ? sms : 1;
  const int64_t large = tiles(n, m, TcLarge::BM, TcLarge::BN);
  if (tc && large >= want) {  // a full wave of 128 x 128 tiles: the large path, never split
    g.kernel = kFwdTc128;
    g.tile = TcLarge::BM;
    g.threads = TcLarge::kThreads;
    g.tiles = large;
  } else {
    if (tc) {
      g.kernel = kFwdTc64;
      g.threads = TcSmall::kThreads;
    }
    g.tiles = tiles(n, m, kTile, kTile);
    if (g.tiles > 0 && g.tiles < want) {
      // Enough feature splits to fill the SMs once, at most one per granule (kernels/_launch.py: splits_for).
      const int64_t granules = (dim + kSplitK - 1) / kSplitK;
      int64_t splits = (want + g.tiles - 1) / g.tiles;
      splits = splits < granules ? splits : granules;
      splits = splits < kMaxGridYZ ? splits : kMaxGridYZ;
      g.splits = splits > 1 ? splits : 1;
    }
  }
  g.blocks = g.tiles * g.splits;
  g.launches = n == 0 || m == 0 ? 0 : (g.splits > 1 ? 2 : 1);
  return g;
}

size_t pairwise_distance_fwd_workspace_bytes(DType dtype, int64_t n, int64_t m, int64_t dim, int sms) {
  // The 128 x 128 path never splits and the others split alike: the architecture does not matter.
  const PairwiseFwdGrid g = pairwise_distance_fwd_grid(dtype, n, m, dim, sms, 0);
  if (g.splits <= 1 || n == 0 || m == 0) return 0;
  return static_cast<size_t>(g.splits * (n * m + n + m)) * acc_bytes(dtype);
}

PairwiseBwdGrid pairwise_distance_bwd_grid(DType dtype, int64_t n, int64_t dim, int sms, int cc_major) {
  PairwiseBwdGrid g{};
  g.threads = kThreads;
  g.tensor_cores = (dtype == DType::kFloat16 || dtype == DType::kBFloat16) && tf32_supported(cc_major * 100);
  // The largest row tile that gives every SM a block (the smallest one if none does).
  for (const int64_t rows : {64, 32, 16}) {
    g.tile_rows = rows;
    g.blocks = tiles(n, dim, rows, kTile);
    if (g.blocks >= sms) break;
  }
  return g;
}

cudaError_t pairwise_distance_fwd(DType dtype, const void* x, const void* y, void* dist, void* xsq, void* ysq,
                                  void* workspace, int64_t n, int64_t m, int64_t dim, int metric, int sms,
                                  cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  int major = 0;
  if (const cudaError_t err = tensor_core_arch(dtype, major); err != cudaSuccess) return err;
  const PairwiseFwdGrid g = pairwise_distance_fwd_grid(dtype, n, m, dim, sms, major);
  if (g.tiles == 0 || (g.splits > 1 && n * m > kMaxGridX * kThreads)) return cudaErrorInvalidConfiguration;
  switch (dtype) {
    case DType::kFloat32: return fwd_typed<float>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
    case DType::kFloat16: return fwd_typed<__half>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
    case DType::kBFloat16:
      return fwd_typed<__nv_bfloat16>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
    case DType::kFloat64: return fwd_typed<double>(x, y, dist, xsq, ysq, workspace, n, m, dim, metric, g, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t pairwise_distance_bwd_side(DType dtype, const void* grad, const void* dist, const void* a, const void* b,
                                const void* asq, const void* bsq, void* grad_a, int64_t n, int64_t k, int64_t dim,
                                int64_t gsn, int64_t gsk, int64_t dsn, int64_t dsk, int metric, int sms,
                                cudaStream_t stream) {
  if (n == 0 || dim == 0) return cudaSuccess;
  int major = 0;
  if (const cudaError_t err = tensor_core_arch(dtype, major); err != cudaSuccess) return err;
  const PairwiseBwdGrid g = pairwise_distance_bwd_grid(dtype, n, dim, sms, major);
  if (g.blocks == 0) return cudaErrorInvalidConfiguration;
#define VTREID_PAIR_BWD(T) bwd_typed<T>(grad, dist, a, b, asq, bsq, grad_a, n, k, dim, gsn, gsk, dsn, dsk, metric, g, stream)
  switch (dtype) {
    case DType::kFloat32: return VTREID_PAIR_BWD(float);
    case DType::kFloat16: return VTREID_PAIR_BWD(__half);
    case DType::kBFloat16: return VTREID_PAIR_BWD(__nv_bfloat16);
    case DType::kFloat64: return VTREID_PAIR_BWD(double);
  }
#undef VTREID_PAIR_BWD
  return cudaErrorInvalidValue;
}

}  // namespace vtreid::cuda
