// C entry points of the emulated CUDA launchers (csrc/cuda/launch.h), for tests/cuda_emu through ctypes.
// Test-only: built by tests/cuda_emu/build.py together with csrc/cuda/*.cu compiled as C++.
#include "cuda/launch.h"
#include "emu/wmma_selftest.h"

using vtreid::cuda::DType;

extern "C" {

void emu_set_dry_run(int on) { emu::dry_run = on != 0; }

// What the emulated device queries answer (launchers that choose a kernel by SM count or architecture).
void emu_set_device(int sms, int cc_major) {
  emu::device_sms = sms;
  emu::device_cc_major = cc_major;
}

// D [2, 16, 24] = 2 A B + C per warp of a 64-thread block (csrc/emu/wmma_selftest.h); dtype 1 half, 2 bfloat16
// (m16n16k16), 0 float32 as TF32 (m16n16k8; `round`: through __float_to_tf32 first).
int emu_wmma_selftest(int dtype, int a_col, int b_col, const void* a, const void* b, const float* c, float* d,
                      int c_col, int d_col, int sync, int round) {
  if (dtype == 0) {
    return emu_selftest::run_layouts<nvcuda::wmma::precision::tf32>(a_col, b_col, a, b, c, d, c_col, d_col, sync,
                                                                    round);
  }
  return dtype == 1 ? emu_selftest::run_layouts<__half>(a_col, b_col, a, b, c, d, c_col, d_col, sync)
                    : emu_selftest::run_layouts<__nv_bfloat16>(a_col, b_col, a, b, c, d, c_col, d_col, sync);
}

int emu_pairwise_distance_fwd(int dtype, const void* x, const void* y, void* dist, void* xsq, void* ysq,
                              void* workspace, int64_t n, int64_t m, int64_t dim, int metric, int sms) {
  return vtreid::cuda::pairwise_distance_fwd(static_cast<DType>(dtype), x, y, dist, xsq, ysq, workspace, n, m, dim,
                                             metric, sms, nullptr);
}

// out[7]: kernel, tile, tiles, splits, blocks, threads, launches (vtreid::cuda::PairwiseFwdGrid).
void emu_pairwise_distance_fwd_grid(int dtype, int64_t n, int64_t m, int64_t dim, int sms, int cc_major,
                                    int64_t* out) {
  const vtreid::cuda::PairwiseFwdGrid g =
      vtreid::cuda::pairwise_distance_fwd_grid(static_cast<DType>(dtype), n, m, dim, sms, cc_major);
  const int64_t fields[] = {g.kernel, g.tile, g.tiles, g.splits, g.blocks, g.threads, g.launches};
  for (int k = 0; k < 7; ++k) out[k] = fields[k];
}

int64_t emu_pairwise_distance_fwd_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t dim, int sms) {
  return static_cast<int64_t>(
      vtreid::cuda::pairwise_distance_fwd_workspace_bytes(static_cast<DType>(dtype), n, m, dim, sms));
}

int emu_pairwise_distance_bwd_side(int dtype, const void* grad, const void* dist, const void* a, const void* b,
                                   const void* asq, const void* bsq, void* grad_a, int64_t n, int64_t k, int64_t dim,
                                   int64_t gsn, int64_t gsk, int64_t dsn, int64_t dsk, int metric, int sms) {
  return vtreid::cuda::pairwise_distance_bwd_side(static_cast<DType>(dtype), grad, dist, a, b, asq, bsq, grad_a, n, k,
                                                  dim, gsn, gsk, dsn, dsk, metric, sms, nullptr);
}

// out[4]: tile_rows, blocks, threads, tensor_cores (vtreid::cuda::PairwiseBwdGrid).
void emu_pairwise_distance_bwd_grid(int dtype, int64_t n, int64_t dim, int sms, int cc_major, int64_t* out) {
  const vtreid::cuda::PairwiseBwdGrid g =
      vtreid::cuda::pairwise_distance_bwd_grid(static_cast<DType>(dtype), n, dim, sms, cc_major);
  const int64_t fields[] = {g.tile_rows, g.blocks, g.threads, g.tensor_cores};
  for (int k = 0; k < 4; ++k) out[k] = fields[k];
}

int emu_hard_mining_fwd(int dtype, const void* anchors, const void* candidates, const int64_t* anchor_labels,
                        const int64_t* candidate_labels, const int32_t* anchor_modality,
                        const int32_t* candidate_modality, void* pos_dist, int64_t* pos_index, void* neg_dist,
                        int64_t* neg_index, bool* valid, void* asq, void* csq, void* pos_out, void* neg_out,
                        void* workspace, int64_t n, int64_t m, int64_t dim, int metric, int pos_rule, int neg_rule,
                        int self_mining, int sms) {
  return vtreid::cuda::hard_mining_fwd(static_cast<DType>(dtype), anchors, candidates, anchor_labels, candidate_labels,
                                       anchor_modality, candidate_modality, pos_dist, pos_index, neg_dist, neg_index,
                                       valid, asq, csq, pos_out, neg_out, workspace, n, m, dim, metric, pos_rule,
                                       neg_rule, self_mining != 0, sms, nullptr);
}

// out[5]: anchor_blocks, splits, tiles, threads, launches (vtreid::cuda::MiningFwdGrid).
void emu_hard_mining_fwd_grid(int64_t n, int64_t m, int64_t dim, int sms, int64_t* out) {
  const vtreid::cuda::MiningFwdGrid g = vtreid::cuda::hard_mining_fwd_grid(n, m, dim, sms);
  const int64_t fields[] = {g.anchor_blocks, g.splits, g.tiles, g.threads, g.launches};
  for (int k = 0; k < 5; ++k) out[k] = fields[k];
}

int64_t emu_hard_mining_fwd_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t dim, int sms) {
  return static_cast<int64_t>(
      vtreid::cuda::hard_mining_fwd_workspace_bytes(static_cast<DType>(dtype), n, m, dim, sms));
}

int emu_hard_mining_bwd(int dtype, int grad_dtype, const void* grad_pos, int64_t grad_pos_stride,
                        const void* grad_neg, int64_t grad_neg_stride, const void* anchors, const void* candidates,
                        const int64_t* pos_index, const int64_t* neg_index, const void* pos_dist,
                        const void* neg_dist, const void* asq, const void* csq, void* grad_anchors,
                        void* grad_candidates, int64_t n, int64_t m, int64_t dim, int metric) {
  return vtreid::cuda::hard_mining_bwd(static_cast<DType>(dtype), static_cast<DType>(grad_dtype), grad_pos,
                                       grad_pos_stride, grad_neg, grad_neg_stride, anchors, candidates, pos_index,
                                       neg_index, pos_dist, neg_dist, asq, csq, grad_anchors, grad_candidates, n, m,
                                       dim, metric, nullptr);
}

int emu_hetero_center_fwd(int dtype, const void* x, const int64_t* order, const int64_t* seg, const int32_t* modality,
                          void* hinge, void* centers, void* variances, int64_t* counts, void* stats, void* workspace,
                          int64_t sets, int64_t n, int64_t dim, int metric, int strong, double margin) {
  return vtreid::cuda::hetero_center_fwd(static_cast<DType>(dtype), x, order, seg, modality, hinge, centers, variances,
                                         counts, stats, workspace, sets, n, dim, metric, strong != 0, margin, nullptr);
}

int64_t emu_hetero_center_fwd_workspace_bytes(int dtype, int64_t sets, int64_t n, int64_t dim) {
  return static_cast<int64_t>(vtreid::cuda::hetero_center_fwd_workspace_bytes(static_cast<DType>(dtype), sets, n, dim));
}

int emu_hetero_center_bwd(int dtype, const void* x, const int64_t* slot, const int32_t* modality, const void* hinge,
                          const void* centers, const void* variances, const int64_t* counts, const void* stats,
                          const void* grad_hinge, int64_t grad_hinge_stride_s, int64_t grad_hinge_stride_n,
                          const void* grad_centers, void* grad_x, int64_t sets, int64_t n, int64_t dim, int metric,
                          int strong) {
  return vtreid::cuda::hetero_center_bwd(static_cast<DType>(dtype), x, slot, modality, hinge, centers, variances,
                                         counts, stats, grad_hinge, grad_hinge_stride_s, grad_hinge_stride_n,
                                         grad_centers, grad_x, sets, n, dim, metric, strong != 0, nullptr);
}

int emu_class_slots(int labels_int32, const void* labels, int64_t* order, int64_t* seg, int64_t* slot,
                    int64_t* sorted_labels, int64_t* sorted_slot, int64_t n) {
  return vtreid::cuda::class_slots(labels_int32 != 0, labels, order, seg, slot, sorted_labels, sorted_slot, n,
                                   nullptr);
}

#define VTREID_EMU_NCE(T, SUFFIX)                                                                                  \
  /* state [5, n]: run_max, run_sum, run_ez, z_target, z_total; out [4, n]: loss, lse, E_p[z], target term */    \
  int emu_normalized_ce_merge_##SUFFIX(const T* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,          \
                                       const T* inv_x, const T* inv_w, const int64_t* target, T scale, T smoothing, \
                                       T* state, T* out) {                                                         \
    const vtreid::LseRows<T> rows{state,   state + n,   state + 2 * n, state + 3 * n, state + 4 * n,              \
                                  out,     out + n,     out + 2 * n,   out + 3 * n};                               \
    return vtreid::cuda::normalized_ce_merge<T>(dots, n, cc, c0, classes, inv_x, inv_w, target, scale, smoothing,  \
                                                rows, nullptr);                                                    \
  }                                                                                                                \
  /* operand_dtype as DType (ignored when operand is null); partials [normalized_ce_grad_row_blocks(n), cc] */   \
  int emu_normalized_ce_grad_##SUFFIX(const T* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes,           \
                                      const T* inv_x, const T* inv_w, const T* wsq, const int64_t* target,         \
                                      const T* lse, const T* grad_row, T scale, T smoothing, T* gq,                \
                                      int operand_dtype, void* operand, T* partials, T* coef) {                    \
    return vtreid::cuda::normalized_ce_grad<T>(dots, n, cc, c0, classes, inv_x, inv_w, wsq, target, lse, grad_row, \
                                               scale, smoothing, gq, static_cast<vtreid::cuda::DType>(operand_dtype), \
                                               operand, partials, coef, nullptr);                                  \
  }                                                                                                                \
  int emu_normalized_ce_weight_grad_##SUFFIX(const T* dir, int w_dtype, const void* w, const T* coef, T scale,     \
                                             int64_t cc, int64_t dim, void* out) {                                 \
    return vtreid::cuda::normalized_ce_weight_grad<T>(dir, static_cast<vtreid::cuda::DType>(w_dtype), w, coef,     \
                                                      scale, cc, dim, out, nullptr);                               \
  }                                                                                                                \
  /* the row passes around the GEMMs; dtypes as DType codes */                                                   \
  int emu_normalized_ce_row_norms_##SUFFIX(int src_dtype, const void* src, int64_t rows, int64_t dim,             \
                                           int64_t stride_row, int64_t stride_col, T* sq, T* inv) {                \
    return vtreid::cuda::normalized_ce_row_norms<T>(static_cast<vtreid::cuda::DType>(src_dtype), src, rows, dim,   \
                                                    stride_row, stride_col, sq, inv, nullptr);                     \
  }                                                                                                                \
  int emu_normalized_ce_unit_rows_##SUFFIX(const T* sq, int64_t rows, T* inv, int x_dtype, const void* x,          \
                                           int64_t dim, int unit_dtype, void* unit) {                             \
    return vtreid::cuda::normalized_ce_unit_rows<T>(sq, rows, inv, static_cast<vtreid::cuda::DType>(x_dtype), x,   \
                                                    dim, static_cast<vtreid::cuda::DType>(unit_dtype), unit,       \
                                                    nullptr);                                                      \
  }                                                                                                                \
  int emu_normalized_ce_grad_x_##SUFFIX(const T* gx, int x_dtype, const void* x, const T* sq, const T* inv,        \
                                        const T* g, const T* ez, const T* tz, T scale, int64_t rows, int64_t dim,  \
                                        void* out) {                                                               \
    return vtreid::cuda::normalized_ce_grad_x<T>(gx, static_cast<vtreid::cuda::DType>(x_dtype), x, sq, inv, g, ez, \
                                                 tz, scale, rows, dim, out, nullptr);                              \
  }
VTREID_EMU_NCE(float, f32)
VTREID_EMU_NCE(double, f64)
#undef VTREID_EMU_NCE

int64_t emu_normalized_ce_grad_row_blocks(int64_t n) { return vtreid::cuda::normalized_ce_grad_row_blocks(n); }
int64_t emu_normalized_ce_grad_blocks(int64_t n, int64_t cc) { return vtreid::cuda::normalized_ce_grad_blocks(n, cc); }

}  // extern "C"
