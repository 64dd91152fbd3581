// Argument checks for direct calls of torch.ops.vtreid.* (the Python layer checks first, with the
// user's argument names; these guard the kernels when the ops are called on their own).
#pragma once
#include <torch/types.h>

#include <string_view>

#include "metric.h"

namespace vtreid {

inline Metric parse_metric(std::string_view metric) {
  if (metric == "euclidean") return kEuclidean;
  if (metric == "sqeuclidean") return kSqEuclidean;
  if (metric == "cosine") return kCosine;
  TORCH_CHECK_VALUE(false, "metric must be 'euclidean', 'sqeuclidean' or 'cosine', got '", metric, "'");
}

inline void check_features(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be a 2-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
                   t.scalar_type());
}

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace vtreid
