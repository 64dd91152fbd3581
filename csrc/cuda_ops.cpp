// CUDA registrations of the vtreid ops: argument checks, device guard, current stream, launcher calls.
// The kernels themselves are in csrc/cuda/ and see only raw pointers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/types.h>

#include "cuda/launch.h"
#include "op_checks.h"

namespace vtreid::cuda {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK_TYPE(false, "vtreid CUDA kernels take float32/float16/bfloat16/float64, got ", t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "vtreid::", op, " CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_distance_fwd(const at::Tensor& x, const at::Tensor& y,
                                                                     std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_features(x, "x");
  check_features(y, "y");
  TORCH_CHECK_VALUE(x.size(1) == y.size(1), "x and y must have the same feature dimension");
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), "x and y must have the same dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t n = xc.size(0), m = yc.size(0), d = xc.size(1);
  const auto norm_options = xc.options().dtype(accumulation_type(x.scalar_type()));
  at::Tensor dist = at::empty({n, m}, xc.options());
  // Norms are written by the first tile column/row; zero-filled so that empty inputs stay defined.
  at::Tensor xsq = at::zeros({n}, norm_options), ysq = at::zeros({m}, norm_options);
  check_launch(vtreid::cuda::pairwise_distance_fwd(dtype_of(xc), xc.const_data_ptr(), yc.const_data_ptr(),
                                                   dist.mutable_data_ptr(), xsq.mutable_data_ptr(),
                                                   ysq.mutable_data_ptr(), n, m, d, metric,
                                                   at::cuda::getCurrentCUDAStream()),
               "pairwise_distance_fwd");
  return {dist, xsq, ysq};
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_bwd(const at::Tensor& grad, const at::Tensor& dist,
                                                         const at::Tensor& x, const at::Tensor& y,
                                                         const at::Tensor& xsq, const at::Tensor& ysq,
                                                         std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor g = grad.to(x.scalar_type());
  const at::Tensor dc = dist.to(x.scalar_type());
  const auto norm_type = accumulation_type(x.scalar_type());
  const at::Tensor xs = xsq.to(norm_type).contiguous(), ys = ysq.to(norm_type).contiguous();
  const int64_t n = xc.size(0), m = yc.size(0), d = xc.size(1);
  TORCH_CHECK_VALUE(g.size(0) == n && g.size(1) == m, "grad must have shape [", n, ", ", m, "]");
  at::Tensor grad_x = at::empty_like(xc), grad_y = at::empty_like(yc);
  const auto stream = at::cuda::getCurrentCUDAStream();
  check_launch(pairwise_distance_bwd_side(dtype_of(xc), g.const_data_ptr(), dc.const_data_ptr(), xc.const_data_ptr(),
                                          yc.const_data_ptr(), xs.const_data_ptr(), ys.const_data_ptr(),
                                          grad_x.mutable_data_ptr(), n, m, d, g.stride(0), g.stride(1),
                                          dc.stride(0), dc.stride(1), metric, stream),
               "pairwise_distance_bwd");
  check_launch(pairwise_distance_bwd_side(dtype_of(xc), g.const_data_ptr(), dc.const_data_ptr(), yc.const_data_ptr(),
                                          xc.const_data_ptr(), ys.const_data_ptr(), xs.const_data_ptr(),
                                          grad_y.mutable_data_ptr(), m, n, d, g.stride(1), g.stride(0),
                                          dc.stride(1), dc.stride(0), metric, stream),
               "pairwise_distance_bwd");
  return {grad_x, grad_y};
}

}  // namespace
}  // namespace vtreid::cuda

TORCH_LIBRARY_IMPL(vtreid, CUDA, m) {
  m.impl("pairwise_distance_fwd", &vtreid::cuda::pairwise_distance_fwd);
  m.impl("pairwise_distance_bwd", &vtreid::cuda::pairwise_distance_bwd);
}
