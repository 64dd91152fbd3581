// The vtreid operator library: schemas (torch.ops.vtreid.*) and their CPU kernels.
// CUDA kernels are registered in cuda_ops.cpp, autograd in autograd.cpp, fake kernels in vtreid/ops/*.py.
#include <torch/extension.h>

#include "cpu/cpu_ops.h"

TORCH_LIBRARY(vtreid, m) {
  // dist [N, M] in x's dtype; xsq [N], ysq [M]: squared row norms in the accumulation dtype
  // (float64 for float64 inputs, else float32), saved for the backward.
  m.def("pairwise_distance_fwd(Tensor x, Tensor y, str metric) -> (Tensor dist, Tensor xsq, Tensor ysq)");
  m.def(
      "pairwise_distance_bwd(Tensor grad, Tensor dist, Tensor x, Tensor y, Tensor xsq, Tensor ysq, "
      "str metric) -> (Tensor grad_x, Tensor grad_y)");
  // Distances in the anchors' dtype (the differentiable outputs), indices int64 (-1 where invalid), valid
  // bool; saved for the backward: the squared row norms of anchors and candidates and the same distances
  // in the accumulation dtype (the kernels write both: no cast launch for half inputs).
  m.def(
      "hard_mining_fwd(Tensor anchors, Tensor anchor_labels, Tensor candidates, Tensor candidate_labels, "
      "Tensor? anchor_modality, Tensor? candidate_modality, str metric, str positive, str negative, "
      "bool self_mining) -> (Tensor pos_dist, Tensor pos_index, Tensor neg_dist, Tensor neg_index, Tensor valid, "
      "Tensor asq, Tensor csq, Tensor pos_dist_acc, Tensor neg_dist_acc)");
  // grad_pos / grad_neg: any float dtype and stride (the CUDA kernel reads the anchors' dtype or their
  // accumulation dtype in place, and converts any other);
  // pos_dist / neg_dist: the forward's accumulation-dtype distances.
  m.def(
      "hard_mining_bwd(Tensor grad_pos, Tensor grad_neg, Tensor anchors, Tensor candidates, Tensor pos_index, "
      "Tensor neg_index, Tensor pos_dist, Tensor neg_dist, Tensor asq, Tensor csq, str metric) "
      "-> (Tensor grad_anchors, Tensor grad_candidates)");
  // x [S, N, D]; samples of class slot k are order[seg[k]:seg[k+1]]. Outputs per (set, slot): the hinge
  // [D + V - margin]_+ (0 unless both modalities are present), centres and variances [S, N, 2, D],
  // counts [N, 2] int64 and stats [S, N, 5] (||c0 - c1||^2, c0.c1, |c0|^2, |c1|^2, ||v0 - v1||^2),
  // all in the accumulation dtype except counts.
  m.def(
      "hetero_center_fwd(Tensor x, Tensor order, Tensor seg, Tensor slot, Tensor modality, str metric, "
      "bool strong, float margin) -> (Tensor hinge, Tensor centers, Tensor variances, Tensor counts, Tensor stats)");
  m.def(
      "hetero_center_bwd(Tensor x, Tensor slot, Tensor modality, Tensor hinge, Tensor centers, Tensor variances, "
      "Tensor counts, Tensor stats, Tensor grad_hinge, Tensor? grad_centers, str metric, bool strong) -> Tensor");
  // The class slots of a batch's labels (int32/int64 [N]), all int64: samples stably sorted by label
  // (order), slot k's samples order[seg[k]:seg[k+1]] (seg [N + 1], N past the last class), each sample's
  // slot, the sorted labels and their slots. Exactly what a stable sort gives (vtreid.ops.reference.class_slots).
  m.def("class_slots(Tensor labels) -> (Tensor order, Tensor seg, Tensor slot, Tensor sorted_labels, "
        "Tensor sorted_slot)");
  // Per row: loss, log-sum-exp, E_p[z], target term, |x|^2; per class |w|^2 (accumulation dtype);
  // dots = x.W^T [N, C] when C <= 8192 (the backward reuses it), else empty [0].
  m.def(
      "normalized_ce_fwd(Tensor x, Tensor weight, Tensor target, float scale, float label_smoothing) "
      "-> (Tensor loss, Tensor lse, Tensor ez, Tensor tz, Tensor xsq, Tensor wsq, Tensor dots)");
  m.def(
      "normalized_ce_bwd(Tensor grad, Tensor x, Tensor weight, Tensor target, Tensor lse, Tensor ez, Tensor tz, "
      "Tensor xsq, Tensor wsq, Tensor dots, float scale, float label_smoothing) "
      "-> (Tensor grad_x, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(vtreid, CPU, m) {
  m.impl("pairwise_distance_fwd", &vtreid::cpu::pairwise_distance_fwd);
  m.impl("pairwise_distance_bwd", &vtreid::cpu::pairwise_distance_bwd);
  m.impl("hard_mining_fwd", &vtreid::cpu::hard_mining_fwd);
  m.impl("hard_mining_bwd", &vtreid::cpu::hard_mining_bwd);
  m.impl("hetero_center_fwd", &vtreid::cpu::hetero_center_fwd);
  m.impl("hetero_center_bwd", &vtreid::cpu::hetero_center_bwd);
  m.impl("class_slots", &vtreid::cpu::class_slots);
  m.impl("normalized_ce_fwd", &vtreid::cpu::normalized_ce_fwd);
  m.impl("normalized_ce_bwd", &vtreid::cpu::normalized_ce_bwd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "vtreid native kernels; the ops are torch.ops.vtreid.*";
  module.def("with_cuda", [] {
#ifdef VTREID_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
