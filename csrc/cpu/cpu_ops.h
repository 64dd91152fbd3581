// CPU kernels of the native backend, registered in csrc/ops.cpp.
#pragma once
#include <torch/types.h>

#include <string_view>
#include <tuple>

namespace vtreid::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_distance_fwd(
    const at::Tensor& x, const at::Tensor& y, std::string_view metric);

std::tuple<at::Tensor, at::Tensor> pairwise_distance_bwd(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& xsq, const at::Tensor& ysq, std::string_view metric);

}  // namespace vtreid::cpu
