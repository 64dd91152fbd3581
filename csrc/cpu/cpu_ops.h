// CPU kernels of the native backend, registered in csrc/ops.cpp.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "../mining_common.h"
#include "../normalized_ce_driver.h"

namespace vtreid::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_distance_fwd(
    const at::Tensor& x, const at::Tensor& y, std::string_view metric);

std::tuple<at::Tensor, at::Tensor> pairwise_distance_bwd(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& xsq, const at::Tensor& ysq, std::string_view metric);

MiningFwdOut hard_mining_fwd(
    const at::Tensor& anchors, const at::Tensor& anchor_labels, const at::Tensor& candidates,
    const at::Tensor& candidate_labels, const std::optional<at::Tensor>& anchor_modality,
    const std::optional<at::Tensor>& candidate_modality, std::string_view metric, std::string_view positive,
    std::string_view negative, bool self_mining);

std::tuple<at::Tensor, at::Tensor> hard_mining_bwd(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& pos_index, const at::Tensor& neg_index, const at::Tensor& pos_dist, const at::Tensor& neg_dist,
    const at::Tensor& asq, const at::Tensor& csq, std::string_view metric);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hetero_center_fwd(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& seg, const at::Tensor& slot,
    const at::Tensor& modality, std::string_view metric, bool strong, double margin);

at::Tensor hetero_center_bwd(const at::Tensor& x, const at::Tensor& slot, const at::Tensor& modality,
                             const at::Tensor& hinge, const at::Tensor& centers, const at::Tensor& variances,
                             const at::Tensor& counts, const at::Tensor& stats, const at::Tensor& grad_hinge,
                             const std::optional<at::Tensor>& grad_centers, std::string_view metric, bool strong);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_slots(const at::Tensor& labels);

NormalizedCeForward normalized_ce_fwd(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target, double scale, double label_smoothing);

std::tuple<at::Tensor, at::Tensor> normalized_ce_bwd(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target,
    const at::Tensor& lse, const at::Tensor& ez, const at::Tensor& tz, const at::Tensor& xsq, const at::Tensor& wsq,
    const at::Tensor& dots, double scale, double label_smoothing);

}  // namespace vtreid::cpu
