// Inputs of the hetero_center ops shared by the CPU and CUDA registrations (ATen only, any device).
#pragma once
#include <torch/types.h>

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
                                          const at::Tensor& modality, std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  TORCH_CHECK_VALUE(metric != kEuclidean, "hetero_center metric must be 'sqeuclidean' or 'cosine'");
  TORCH_CHECK_VALUE(x.dim() == 3, "x must be [S, N, D]");
  CenterLayout layout{metric, order.to(at::kLong).contiguous(), seg.to(at::kLong).contiguous(),
                      modality.to(at::kInt).contiguous()};
  const int64_t n = x.size(1);
  TORCH_CHECK_VALUE(layout.seg.numel() == n + 1 && layout.order.numel() == n && layout.modality.numel() == n,
                    "layout tensors must match x");
  return layout;
}

}  // namespace vtreid
