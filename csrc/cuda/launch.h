// Types shared by the CUDA launchers. No torch headers, so nvcc compiles csrc/cuda/ on its own
// (CMakeLists.txt) on machines without a CUDA build of torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../online_lse.h"

namespace vtreid::cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Feature inputs are row-major contiguous [rows, dim]; norms are float32 (float64 for kFloat64). When the
// output tiles alone do not fill `sms` SMs once, the features are split (pairwise_distance_fwd_grid) and
// `workspace` must hold pairwise_distance_fwd_workspace_bytes(dtype, n, m, dim, sms) bytes (256-byte aligned,
// any contents; null is fine when that is 0). Deterministic; results may differ in the last bits between
// SM counts (the split changes the summation order), never between runs.
cudaError_t pairwise_distance_fwd(DType dtype, const void* x, const void* y, void* dist, void* xsq, void* ysq,
                                  void* workspace, int64_t n, int64_t m, int64_t dim, int metric, int sms,
                                  cudaStream_t stream);

// The launch configuration pairwise_distance_fwd uses for compute capability cc_major: `tiles` output tiles of
// tile x tile on grid dimension x, `splits` feature ranges on y (blocks = tiles * splits, `threads` each), and
// `launches` kernels (a combine when splits > 1). kernel: kFwdSimt, kFwdTc64 or kFwdTc128 (tensor cores).
constexpr int64_t kFwdSimt = 0, kFwdTc64 = 1, kFwdTc128 = 2;
struct PairwiseFwdGrid {
  int64_t kernel, tile, tiles, splits, blocks, threads, launches;
};
PairwiseFwdGrid pairwise_distance_fwd_grid(DType dtype, int64_t n, int64_t m, int64_t dim, int sms, int cc_major);
size_t pairwise_distance_fwd_workspace_bytes(DType dtype, int64_t n, int64_t m, int64_t dim, int sms);

// grad_a [n, dim] of sum_ij g_ij dist(a_i, b_j), b is [k, dim]. grad and dist are in the accumulation
// type (float32, float64 for kFloat64) and read at (i, j) -> i * stride_n + j * stride_k, so passing
// swapped strides gives the other operand's side. The row tile shrinks until the grid fills `sms` SMs
// (pairwise_distance_bwd_grid); results do not depend on it.
cudaError_t pairwise_distance_bwd_side(DType dtype, const void* grad, const void* dist, const void* a,
                                const void* b, const void* asq, const void* bsq, void* grad_a, int64_t n,
                                int64_t k, int64_t dim, int64_t grad_stride_n, int64_t grad_stride_k,
                                int64_t dist_stride_n, int64_t dist_stride_k, int metric, int sms,
                                cudaStream_t stream);

// pairwise_distance_bwd_side's grid: `blocks` of `threads` threads, each tile_rows rows x 64 features;
// tensor_cores: the half / bfloat16 kernel with TF32 tensor cores (compute capability 8 and later).
struct PairwiseBwdGrid {
  int64_t tile_rows, blocks, threads, tensor_cores;
};
PairwiseBwdGrid pairwise_distance_bwd_grid(DType dtype, int64_t n, int64_t dim, int sms, int cc_major);

// Hardest positive / negative per anchor (rules: 0 any, 1 cross, 2 same). Features row-major
// contiguous; labels int64; modality int32 (may be null when both rules are 0); distances and norms in
// the accumulation type, and the distances again in the features' dtype (pos_out / neg_out). asq / csq
// must be zero-initialised (they stay 0 when m == 0). The candidates are split over grid dimension y
// until the grid fills `sms` SMs once (hard_mining_fwd_grid); with more than one split, `workspace` must
// hold hard_mining_fwd_workspace_bytes(dtype, n, m, dim, sms) bytes (256-byte aligned, any contents; null
// is fine when that is 0). Results do not depend on `sms`.
cudaError_t hard_mining_fwd(DType dtype, const void* anchors, const void* candidates, const int64_t* anchor_labels,
                            const int64_t* candidate_labels, const int32_t* anchor_modality,
                            const int32_t* candidate_modality, void* pos_dist, int64_t* pos_index, void* neg_dist,
                            int64_t* neg_index, bool* valid, void* asq, void* csq, void* pos_out, void* neg_out,
                            void* workspace, int64_t n, int64_t m, int64_t dim, int metric, int pos_rule,
                            int neg_rule, bool self_mining, int sms, cudaStream_t stream);

// The launch configuration hard_mining_fwd uses: grid (anchor_blocks, splits) of `threads` threads, each
// split a contiguous range of the `tiles` candidate tiles; `launches` kernels (a combine when splits > 1).
struct MiningFwdGrid {
  int64_t anchor_blocks, splits, tiles, threads, launches;
};
MiningFwdGrid hard_mining_fwd_grid(int64_t n, int64_t m, int64_t dim, int sms);
size_t hard_mining_fwd_workspace_bytes(DType dtype, int64_t n, int64_t m, int64_t dim, int sms);

// grad_anchors [n, dim] and grad_candidates [m, dim], in one launch. An index outside [0, m) counts as no
// pair. grad_pos / grad_neg are of grad_dtype, the features' dtype or their accumulation type (another:
// cudaErrorInvalidValue), element i at [i * stride] (stride 0: one value for all); distances and norms
// are in the accumulation type.
cudaError_t hard_mining_bwd(DType dtype, DType grad_dtype, const void* grad_pos, int64_t grad_pos_stride,
                            const void* grad_neg, int64_t grad_neg_stride, const void* anchors, const void* candidates,
                            const int64_t* pos_index, const int64_t* neg_index, const void* pos_dist,
                            const void* neg_dist, const void* asq, const void* csq, void* grad_anchors,
                            void* grad_candidates, int64_t n, int64_t m, int64_t dim, int metric, cudaStream_t stream);

// Per-class modality centres and the Hetero-Center hinge. x is contiguous [sets, n, dim]; the samples
// of class slot k are order[seg[k] .. seg[k + 1]); modality int32 (0 visible, any other value infrared);
// every float output and stats [sets, n, 5] in the accumulation type; counts [n, 2]. Every element of the
// outputs is written (the empty slots past the classes too), so they need no initialisation, except counts
// when sets == 0: nothing is launched then, and the caller zero-fills it. The
// features are split into 64-wide slices; with more than one, `workspace` must hold
// hetero_center_fwd_workspace_bytes(dtype, sets, n, dim) bytes (any contents; null is fine when that is 0).
cudaError_t hetero_center_fwd(DType dtype, const void* x, const int64_t* order, const int64_t* seg,
                              const int32_t* modality, void* hinge, void* centers, void* variances, int64_t* counts,
                              void* stats, void* workspace, int64_t sets, int64_t n, int64_t dim, int metric,
                              bool strong, double margin, cudaStream_t stream);
size_t hetero_center_fwd_workspace_bytes(DType dtype, int64_t sets, int64_t n, int64_t dim);

// grad_x [sets, n, dim] (x's type) from grad_hinge [sets, n] and grad_centers [sets, n, 2, dim] (may be
// null, else contiguous), both in the accumulation type. grad_hinge's element (s, k) is at
// [s * grad_hinge_stride_s + k * grad_hinge_stride_n]: the expanded gradient of a sum is read in place.
cudaError_t hetero_center_bwd(DType dtype, const void* x, const int64_t* slot, const int32_t* modality,
                              const void* hinge, const void* centers, const void* variances, const int64_t* counts,
                              const void* stats, const void* grad_hinge, int64_t grad_hinge_stride_s,
                              int64_t grad_hinge_stride_n, const void* grad_centers, void* grad_x, int64_t sets,
                              int64_t n, int64_t dim, int metric, bool strong, cudaStream_t stream);

// The class slots of labels [n] (int64, or int32 when labels_int32), as a stable sort by label gives them
// (vtreid.ops.reference.class_slots): order, slot, sorted_labels, sorted_slot [n] and seg [n + 1], all
// int64. Two O(n^2) launches, no sort and no scratch; n == 0 launches nothing (seg[0] = 0 is the caller's).
cudaError_t class_slots(bool labels_int32, const void* labels, int64_t* order, int64_t* seg, int64_t* slot,
                        int64_t* sorted_labels, int64_t* sorted_slot, int64_t n, cudaStream_t stream);

// Epilogues of the normalized cross-entropy driver (csrc/normalized_ce_driver.h), for acc_t float or
// double, all arrays contiguous:
// - merge folds a class chunk's dot products [n, cc] into the per-row online log-sum-exp state (the first
//   chunk starts it, the last writes the results: csrc/online_lse.h).
// - grad writes G q [n, cc] into gq (may be null) and into `operand` (null, or for float: kFloat16 G q
//   [n, cc], kBFloat16 hi rows then lo rows [2n, cc]); `partials` [normalized_ce_grad_row_blocks(n), cc]
//   is scratch (any contents); coef [cc] gets [|w_c| > eps] q_c^2 sum_i G_ic z_ic (wsq: |w_c|^2).
// - weight_grad writes out = scale dir - coef_c w [cc, dim] in w's dtype (dir in acc_t).
// - row_norms writes sq = sum_k src_k^2 and inv = 1 / max(sqrt(sq), eps) for the rows of src [rows, dim],
//   read with the given element strides in any float dtype.
// - unit_rows writes inv from sq, and unit = x inv [rows, dim] in unit_dtype when x is not null (x, unit
//   contiguous; unit_dtype accumulates in acc_t).
// - grad_x writes out = scale inv gx - [sqrt(sq) > eps] inv^2 g (ez - tz) x [rows, dim] in x's dtype.
template <typename acc_t>
cudaError_t normalized_ce_merge(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
                                const acc_t* inv_x, const acc_t* inv_w, const int64_t* target, acc_t scale,
                                acc_t smoothing, LseRows<acc_t> rows, cudaStream_t stream);

int64_t normalized_ce_grad_row_blocks(int64_t n);
int64_t normalized_ce_grad_blocks(int64_t n, int64_t cc);  // the grad kernel's grid (one block per 16 rows x 32 columns)

template <typename acc_t>
cudaError_t normalized_ce_grad(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,
                               const acc_t* inv_x, const acc_t* inv_w, const acc_t* wsq, const int64_t* target,
                               const acc_t* lse, const acc_t* grad_row, acc_t scale, acc_t smoothing, acc_t* gq,
                               DType operand_dtype, void* operand, acc_t* partials, acc_t* coef, cudaStream_t stream);

template <typename acc_t>
cudaError_t normalized_ce_row_norms(DType src_dtype, const void* src, int64_t rows, int64_t dim, int64_t stride_row,
                                    int64_t stride_col, acc_t* sq, acc_t* inv, cudaStream_t stream);

template <typename acc_t>
cudaError_t normalized_ce_unit_rows(const acc_t* sq, int64_t rows, acc_t* inv, DType x_dtype, const void* x,
                                    int64_t dim, DType unit_dtype, void* unit, cudaStream_t stream);

template <typename acc_t>
cudaError_t normalized_ce_grad_x(const acc_t* gx, DType x_dtype, const void* x, const acc_t* sq, const acc_t* inv,
                                 const acc_t* g, const acc_t* ez, const acc_t* tz, acc_t scale, int64_t rows,
                                 int64_t dim, void* out, cudaStream_t stream);

template <typename acc_t>
cudaError_t normalized_ce_weight_grad(const acc_t* dir, DType w_dtype, const void* w, const acc_t* coef, acc_t scale,
                                      int64_t cc, int64_t dim, void* out, cudaStream_t stream);

}  // namespace vtreid::cuda
