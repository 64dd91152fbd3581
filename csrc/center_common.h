// Inputs of the hetero_center ops shared by the CPU and CUDA registrations (ATen only, any device).
#pragma once
#include <torch/types.h>

#include <optional>
#include <string_view>

#include "op_checks.h"

namespace vtreid {

// The class-slot layout in the kernels' types (order / seg int64, modality int32, contiguous), checked
// against x [S, N, D].
struct CenterLayout {
  Metric metric;
  at::Tensor order, seg, modality;
};

inline CenterLayout prepare_center_layout(const at::Tensor& x, const at::Tensor& order, const at::Tensor& seg,
                                          const at::Tensor& modality, std::string_view metric_name, double margin) {
  const Metric metric = parse_metric(metric_name);
  check_real(margin, "margin");
  TORCH_CHECK_VALUE(metric != kEuclidean, "hetero_center metric must be 'sqeuclidean' or 'cosine'");
  check_features(x, "x", 3);
  const int64_t n = x.size(1);
  check_index(order, "order", x, "x", {n});
  check_index(seg, "seg", x, "x", {n + 1});
  check_aux(modality, "modality", x, "x", {n});
  return {metric, order.to(at::kLong).contiguous(), seg.to(at::kLong).contiguous(), modality_ids(modality)};
}

// class_slots' labels: a 1-D int32 or int64 tensor (what the kernels read as it is).
inline void check_slot_labels(const at::Tensor& labels) {
  TORCH_CHECK_VALUE(labels.dim() == 1, "labels must be a 1-D tensor, got shape ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
                   "labels must have dtype torch.int32 or torch.int64, got ", labels.scalar_type());
}

// Devices and shapes of hetero_center_bwd's inputs, for x [S, N, D]; returns modality as the kernels read it.
inline at::Tensor check_center_bwd_inputs(const at::Tensor& x, const at::Tensor& slot, const at::Tensor& modality,
                                          const at::Tensor& hinge, const at::Tensor& centers,
                                          const at::Tensor& variances, const at::Tensor& counts,
                                          const at::Tensor& stats, const at::Tensor& grad_hinge,
                                          const std::optional<at::Tensor>& grad_centers) {
  check_features(x, "x", 3);
  const int64_t s = x.size(0), n = x.size(1), d = x.size(2);
  check_index(slot, "slot", x, "x", {n});
  check_aux(modality, "modality", x, "x", {n});
  check_aux(hinge, "hinge", x, "x", {s, n});
  check_aux(centers, "centers", x, "x", {s, n, 2, d});
  check_aux(variances, "variances", x, "x", {s, n, 2, d});
  check_aux(counts, "counts", x, "x", {n, 2});
  check_aux(stats, "stats", x, "x", {s, n, 5});
  check_aux(grad_hinge, "grad_hinge", x, "x", {s, n});
  if (grad_centers.has_value() && grad_centers->defined()) {
    check_aux(*grad_centers, "grad_centers", x, "x", {s, n, 2, d});
  }
  return modality_ids(modality);
}

}  // namespace vtreid
