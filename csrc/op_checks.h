// Argument checks for direct calls of torch.ops.vtreid.* (the Python layer checks first, with the
// user's argument names). These check what costs no pass over the data: ranks, shapes, dtypes, devices,
// scalar arguments. CPU and CUDA registrations call the same checks, so a direct call is refused alike.
// Index values (labels, targets, class slots) are the Python layer's to check (on CPU tensors, and on
// CUDA with VTREID_CHECK_VALUES=1): a direct caller must pass them in range.
#pragma once
#include <torch/types.h>

#include <cmath>
#include <optional>
#include <string_view>

#include "metric.h"

namespace vtreid {

inline Metric parse_metric(std::string_view metric) {
  if (metric == "euclidean") return kEuclidean;
  if (metric == "sqeuclidean") return kSqEuclidean;
  if (metric == "cosine") return kCosine;
  TORCH_CHECK_VALUE(false, "metric must be 'euclidean', 'sqeuclidean' or 'cosine', got '", metric, "'");
}

inline void check_features(const at::Tensor& t, const char* name, int64_t ndim = 2) {
  TORCH_CHECK_VALUE(t.dim() == ndim, name, " must be a ", ndim, "-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
                   t.scalar_type());
  // A zero-sized grid is an invalid launch on a GPU; the Python layer rejects D = 0 too.
  TORCH_CHECK_VALUE(t.size(ndim - 1) > 0, name, " has a feature dimension of size 0");
}

// `t` (argument `name`) lives on the features' device: a CPU index tensor with CUDA features would
// hand host pointers to a kernel.
inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& features,
                         const char* features_name) {
  TORCH_CHECK_VALUE(t.device() == features.device(), name, " is on ", t.device(), " but ", features_name, " is on ",
                    features.device());
}

// A second feature tensor of an op has the first one's dtype, as the Python layer requires: the CUDA
// kernels read both as one type, and the CPU ones would return the first one's.
inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& first, const char* first_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == first.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", first_name,
                   " has dtype ", first.scalar_type());
}

// A scalar argument (scale, margin, label smoothing): finite, and in [low, high] where given. A NaN or
// inf turns every loss into NaN or inf (the Python layer refuses them with the same words).
inline void check_real(double value, const char* name, std::optional<double> low = std::nullopt,
                       std::optional<double> high = std::nullopt, bool positive = false) {
  TORCH_CHECK_VALUE(std::isfinite(value) && (!positive || value > 0), name, " must be a finite",
                    positive ? " positive" : "", " number, got ", value);
  TORCH_CHECK_VALUE((!low || value >= *low) && (!high || value <= *high), name, " must be in [", low.value_or(-INFINITY),
                    ", ", high.value_or(INFINITY), "], got ", value);
}

// Device and exact shape of an auxiliary tensor.
inline void check_aux(const at::Tensor& t, const char* name, const at::Tensor& features, const char* features_name,
                      at::IntArrayRef shape) {
  check_device(t, name, features, features_name);
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

// An index tensor (labels, targets, class slots): integers, which the kernels read as int64 (a float
// tensor would be truncated, 0.2 and 0.7 both becoming 0).
inline void check_index(const at::Tensor& t, const char* name, const at::Tensor& features, const char* features_name,
                        at::IntArrayRef shape) {
  check_aux(t, name, features, features_name, shape);
  TORCH_CHECK_TYPE(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), name,
                   " must be an integer tensor, got ", t.scalar_type());
}

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Modality as the kernels read it: int32, 0 visible and any other value infrared (every backend). int32
// goes as given (the kernels test != 0: no launch; the Python layer passes int32); another dtype costs
// one launch, != 0 written as int32 (ne then to() was two).
inline at::Tensor modality_ids(const at::Tensor& modality) {
  if (modality.scalar_type() == at::kInt) return modality.contiguous();
  at::Tensor ids = at::empty(modality.sizes(), modality.options().dtype(at::kInt));
  at::ne_out(ids, modality, 0);
  return ids;
}

// x [n, d] and y [m, d] on one device with one feature dimension.
inline void check_pair_inputs(const at::Tensor& x, const at::Tensor& y) {
  check_features(x, "x");
  check_features(y, "y");
  check_device(y, "y", x, "x");
  check_same_dtype(y, "y", x, "x");
  TORCH_CHECK_VALUE(x.size(1) == y.size(1), "x and y must have the same feature dimension, got ", x.size(1), " and ",
                    y.size(1));
}

// pairwise_distance_bwd's inputs: grad and dist [n, m], xsq [n], ysq [m], all on x's device.
inline void check_pairwise_bwd_inputs(const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& x,
                                      const at::Tensor& y, const at::Tensor& xsq, const at::Tensor& ysq) {
  check_pair_inputs(x, y);
  const int64_t n = x.size(0), m = y.size(0);
  check_aux(grad, "grad", x, "x", {n, m});
  check_aux(dist, "dist", x, "x", {n, m});
  check_aux(xsq, "xsq", x, "x", {n});
  check_aux(ysq, "ysq", x, "x", {m});
}

}  // namespace vtreid
