// Pieces of the hard_mining ops shared by the CPU and CUDA registrations (ATen only, any device).
#pragma once
#include <torch/types.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "op_checks.h"

namespace vtreid {

enum Rule : int { kAny = 0, kCross = 1, kSame = 2 };

// hard_mining_fwd's outputs (csrc/ops.cpp): pos_dist, pos_index, neg_dist, neg_index, valid, asq, csq,
// pos_dist_acc, neg_dist_acc.
using MiningFwdOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor>;

inline Rule parse_rule(std::string_view rule, const char* name) {
  if (rule == "any") return kAny;
  if (rule == "cross") return kCross;
  if (rule == "same") return kSame;
  TORCH_CHECK_VALUE(false, name, " must be 'any', 'cross' or 'same', got '", rule, "'");
}

// The id vectors of a hard_mining call, checked and in the kernels' layout (labels int64, modality int32,
// contiguous; modality undefined when both rules are 'any'). Shared by the CPU and CUDA registrations.
struct MiningIds {
  Rule pos_rule, neg_rule;
  bool use_modality;
  at::Tensor anchor_labels, candidate_labels, anchor_modality, candidate_modality;
};

inline MiningIds prepare_mining_ids(const at::Tensor& anchors, const at::Tensor& candidates,
                                    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                                    const std::optional<at::Tensor>& anchor_modality,
                                    const std::optional<at::Tensor>& candidate_modality, std::string_view positive,
                                    std::string_view negative) {
  MiningIds ids{parse_rule(positive, "positive"), parse_rule(negative, "negative"), false, {}, {}, {}, {}};
  check_features(anchors, "anchors");
  check_features(candidates, "candidates");
  ids.use_modality = ids.pos_rule != kAny || ids.neg_rule != kAny;
  TORCH_CHECK_VALUE(!ids.use_modality || (anchor_modality.has_value() && candidate_modality.has_value()),
                    "anchor_modality and candidate_modality are required when a rule is not 'any'");
  check_device(candidates, "candidates", anchors, "anchors");
  check_same_dtype(candidates, "candidates", anchors, "anchors");
  TORCH_CHECK_VALUE(anchors.size(1) == candidates.size(1), "anchors and candidates must have the same feature dimension");
  check_index(anchor_labels, "anchor_labels", anchors, "anchors", {anchors.size(0)});
  check_index(candidate_labels, "candidate_labels", anchors, "anchors", {candidates.size(0)});
  ids.anchor_labels = anchor_labels.to(at::kLong).contiguous();
  ids.candidate_labels = candidate_labels.to(at::kLong).contiguous();
  if (ids.use_modality) {
    check_aux(*anchor_modality, "anchor_modality", anchors, "anchors", {anchors.size(0)});
    check_aux(*candidate_modality, "candidate_modality", anchors, "anchors", {candidates.size(0)});
    ids.anchor_modality = modality_ids(*anchor_modality);
    ids.candidate_modality = modality_ids(*candidate_modality);
  }
  return ids;
}

// Devices and shapes of hard_mining_bwd's inputs (anchors [n, d], candidates [m, d], per-anchor [n], csq [m]).
inline void check_mining_bwd_inputs(const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& anchors,
                                    const at::Tensor& candidates, const at::Tensor& pos_index,
                                    const at::Tensor& neg_index, const at::Tensor& pos_dist,
                                    const at::Tensor& neg_dist, const at::Tensor& asq, const at::Tensor& csq) {
  check_features(anchors, "anchors");
  check_features(candidates, "candidates");
  check_device(candidates, "candidates", anchors, "anchors");
  check_same_dtype(candidates, "candidates", anchors, "anchors");
  TORCH_CHECK_VALUE(anchors.size(1) == candidates.size(1), "anchors and candidates must have the same feature dimension");
  const int64_t n = anchors.size(0), m = candidates.size(0);
  check_aux(grad_pos, "grad_pos", anchors, "anchors", {n});
  check_aux(grad_neg, "grad_neg", anchors, "anchors", {n});
  check_aux(pos_index, "pos_index", anchors, "anchors", {n});
  check_aux(neg_index, "neg_index", anchors, "anchors", {n});
  check_aux(pos_dist, "pos_dist", anchors, "anchors", {n});
  check_aux(neg_dist, "neg_dist", anchors, "anchors", {n});
  check_aux(asq, "asq", anchors, "anchors", {n});
  check_aux(csq, "csq", anchors, "anchors", {m});
}

// (order, seg): the 2n pair rows (positives 0..n-1, negatives n..2n-1) stably sorted by the candidate
// they chose, and the offsets seg[m + 1] of each candidate's run. Invalid pairs (-1) sort past the last
// run. Summing a candidate's rows in this order is deterministic. Device ops only: no host sync.
inline std::pair<at::Tensor, at::Tensor> segment_layout(const at::Tensor& pos_index, const at::Tensor& neg_index,
                                                        int64_t m) {
  at::Tensor idx = at::cat({pos_index, neg_index});
  idx = at::where(idx < 0, at::full_like(idx, m), idx);
  auto [sorted_idx, order] = at::sort(idx, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor seg = at::searchsorted(sorted_idx, at::arange(m + 1, idx.options()));
  return {order.contiguous(), seg.contiguous()};
}

}  // namespace vtreid
