// Autograd of the native ops (torch.ops.vtreid.<family>_fwd), registered for the Autograd dispatch key:
// each forward saves what its <family>_bwd op needs and calls that op in the backward. The formulas are
// the ones vtreid/ops/<family>.py registers in Python for the Triton ops. In C++ a forward + backward call
// costs less (bench/overhead.py, CPU, tiny shapes: pairwise 112 -> 68 us, mining 188 -> 100 us). Both
// backward ops are ordinary dispatcher calls, so torch.compile and opcheck see the same graph as with the
// Python formulas.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>
#include <torch/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include "mining_common.h"

namespace vtreid::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using torch::autograd::variable_list;

// A backward runs as its forward does (vtreid/ops/_autocast.py runs the forward with autocast off): the
// at::mm calls inside the _bwd kernels must keep their dtypes, not be cast to bf16 / fp16 when the user
// calls backward() inside torch.autocast (the native NCE backward then failed: no bf16 weight-grad kernel).
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

// The registered op (all backends: the dispatcher picks CPU or CUDA from the tensors).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// --- pairwise_distance ----------------------------------------------------------------------------------
using PairwiseFwd = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, c10::string_view);
using PairwiseBwd = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                               const Tensor&, const Tensor&, c10::string_view);

struct PairwiseDistance : torch::autograd::Function<PairwiseDistance> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, c10::string_view metric) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto fwd = op<PairwiseFwd>("vtreid::pairwise_distance_fwd");
    auto [dist, xsq, ysq] = fwd.call(x, y, metric);
    ctx->save_for_backward({x, y, dist, xsq, ysq});
    ctx->saved_data["metric"] = std::string(metric);
    ctx->mark_non_differentiable({xsq, ysq});
    ctx->set_materialize_grads(false);  // see HardMining
    return {dist, xsq, ysq};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
    static const auto bwd = op<PairwiseBwd>("vtreid::pairwise_distance_bwd");
    const auto s = ctx->get_saved_variables();
    const Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(s[2]);
    auto [grad_x, grad_y] = bwd.call(grad, s[2], s[0], s[1], s[3], s[4], ctx->saved_data["metric"].toStringRef());
    return {grad_x, grad_y, Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> pairwise_distance_fwd(const Tensor& x, const Tensor& y, c10::string_view metric) {
  const auto out = PairwiseDistance::apply(x, y, metric);
  return {out[0], out[1], out[2]};
}

// --- hard_mining ----------------------------------------------------------------------------------------
using MiningFwd = MiningFwdOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                               const std::optional<Tensor>&, c10::string_view, c10::string_view, c10::string_view,
                               bool);
using MiningBwd = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                             const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                             const Tensor&, const Tensor&, c10::string_view);

struct HardMining : torch::autograd::Function<HardMining> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& anchors, const Tensor& anchor_labels,
                             const Tensor& candidates, const Tensor& candidate_labels,
                             const std::optional<Tensor>& anchor_modality,
                             const std::optional<Tensor>& candidate_modality, c10::string_view metric,
                             c10::string_view positive, c10::string_view negative, bool self_mining) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto fwd = op<MiningFwd>("vtreid::hard_mining_fwd");
    auto [pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_acc, neg_acc] =
        fwd.call(anchors, anchor_labels, candidates, candidate_labels, anchor_modality, candidate_modality, metric,
                 positive, negative, self_mining);
    // The backward works from the accumulation-dtype distances; pos_d / neg_d carry the gradient.
    ctx->save_for_backward({anchors, candidates, pos_i, neg_i, pos_acc, neg_acc, asq, csq});
    ctx->saved_data["metric"] = std::string(metric);
    ctx->mark_non_differentiable({pos_i, neg_i, valid, asq, csq, pos_acc, neg_acc});
    // Only pos_d and neg_d carry gradients: materialized, the seven others were seven zero-fill launches a
    // step (a non-differentiable output's gradient is materialized too).
    ctx->set_materialize_grads(false);
    return {pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_acc, neg_acc};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
    static const auto bwd = op<MiningBwd>("vtreid::hard_mining_bwd");
    const auto s = ctx->get_saved_variables();
    // A loss of one side only: the other side's gradient is a zero of stride 0 (the kernels take any stride),
    // and its pairs are passed as none (index -1): 0 times a non-finite anchor's pair would be NaN.
    const auto or_zero = [&](const Tensor& g) {
      return g.defined() ? g : at::zeros({}, s[0].options()).expand({s[0].size(0)});
    };
    const auto or_none = [&](const Tensor& g, const Tensor& index) {
      return g.defined() ? index : at::full_like(index, -1);
    };
    auto [grad_a, grad_c] = bwd.call(or_zero(grads[0]), or_zero(grads[2]), s[0], s[1], or_none(grads[0], s[2]),
                                     or_none(grads[2], s[3]), s[4], s[5], s[6], s[7],
                                     ctx->saved_data["metric"].toStringRef());
    return {grad_a, Tensor(), grad_c, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

MiningFwdOut hard_mining_fwd(const Tensor& anchors, const Tensor& anchor_labels, const Tensor& candidates,
                             const Tensor& candidate_labels, const std::optional<Tensor>& anchor_modality,
                             const std::optional<Tensor>& candidate_modality, c10::string_view metric,
                             c10::string_view positive, c10::string_view negative, bool self_mining) {
  const auto o = HardMining::apply(anchors, anchor_labels, candidates, candidate_labels, anchor_modality,
                                   candidate_modality, metric, positive, negative, self_mining);
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8]};
}

// --- hetero_center --------------------------------------------------------------------------------------
using Five = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using CenterFwd = Five(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view,
                       bool, double);
using CenterBwd = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, c10::string_view,
                         bool);

struct HeteroCenter : torch::autograd::Function<HeteroCenter> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& order, const Tensor& seg,
                             const Tensor& slot, const Tensor& modality, c10::string_view metric, bool strong,
                             double margin) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto fwd = op<CenterFwd>("vtreid::hetero_center_fwd");
    auto [hinge, centers, variances, counts, stats] = fwd.call(x, order, seg, slot, modality, metric, strong, margin);
    ctx->save_for_backward({x, slot, modality, hinge, centers, variances, counts, stats});
    ctx->saved_data["metric"] = std::string(metric);
    ctx->saved_data["strong"] = strong;
    ctx->mark_non_differentiable({variances, counts, stats});
    // An unused output's gradient stays undefined: no zero [S, N, 2, D] centre gradient to read.
    ctx->set_materialize_grads(false);
    return {hinge, centers, variances, counts, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
    static const auto bwd = op<CenterBwd>("vtreid::hetero_center_bwd");
    const auto s = ctx->get_saved_variables();
    // An unused hinge is passed as an inactive one (zeros): the kernels read it only to gate its gradient, and
    // a NaN hinge would give 0 * NaN to samples that reach the loss through the centres alone.
    const Tensor grad_hinge = grads[0].defined() ? grads[0] : at::zeros_like(s[3]);
    const Tensor& hinge = grads[0].defined() ? s[3] : grad_hinge;
    const std::optional<Tensor> grad_centers = grads[1].defined() ? std::optional<Tensor>(grads[1]) : std::nullopt;
    Tensor grad_x = bwd.call(s[0], s[1], s[2], hinge, s[4], s[5], s[6], s[7], grad_hinge, grad_centers,
                             ctx->saved_data["metric"].toStringRef(), ctx->saved_data["strong"].toBool());
    return {grad_x, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Five hetero_center_fwd(const Tensor& x, const Tensor& order, const Tensor& seg, const Tensor& slot,
                       const Tensor& modality, c10::string_view metric, bool strong, double margin) {
  const auto o = HeteroCenter::apply(x, order, seg, slot, modality, metric, strong, margin);
  return {o[0], o[1], o[2], o[3], o[4]};
}

// --- normalized_ce --------------------------------------------------------------------------------------
using Seven = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using NceFwd = Seven(const Tensor&, const Tensor&, const Tensor&, double, double);
using NceBwd = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                          const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                          double, double);

struct NormalizedCe : torch::autograd::Function<NormalizedCe> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& target,
                             double scale, double label_smoothing) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto fwd = op<NceFwd>("vtreid::normalized_ce_fwd");
    auto [loss, lse, ez, tz, xsq, wsq, dots] = fwd.call(x, weight, target, scale, label_smoothing);
    ctx->save_for_backward({x, weight, target, lse, ez, tz, xsq, wsq, dots});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->mark_non_differentiable({lse, ez, tz, xsq, wsq, dots});
    ctx->set_materialize_grads(false);  // see HardMining
    return {loss, lse, ez, tz, xsq, wsq, dots};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
    static const auto bwd = op<NceBwd>("vtreid::normalized_ce_bwd");
    const auto s = ctx->get_saved_variables();
    const Tensor grad = grads[0].defined() ? grads[0].contiguous() : at::zeros({s[0].size(0)}, s[0].options());
    auto [grad_x, grad_w] = bwd.call(grad, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8],
                                     ctx->saved_data["scale"].toDouble(),
                                     ctx->saved_data["label_smoothing"].toDouble());
    return {grad_x, grad_w, Tensor(), Tensor(), Tensor()};
  }
};

Seven normalized_ce_fwd(const Tensor& x, const Tensor& weight, const Tensor& target, double scale,
                        double label_smoothing) {
  const auto o = NormalizedCe::apply(x, weight, target, scale, label_smoothing);
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6]};
}

}  // namespace
}  // namespace vtreid::autograd

TORCH_LIBRARY_IMPL(vtreid, Autograd, m) {
  m.impl("pairwise_distance_fwd", &vtreid::autograd::pairwise_distance_fwd);
  m.impl("hard_mining_fwd", &vtreid::autograd::hard_mining_fwd);
  m.impl("hetero_center_fwd", &vtreid::autograd::hetero_center_fwd);
  m.impl("normalized_ce_fwd", &vtreid::autograd::normalized_ce_fwd);
  // The backward ops have no derivative: a double backward (create_graph=True) through them is an error
  // that names the op, as with the Triton ops, instead of the deprecated fallthrough that treated their
  // outputs as constants and gave silently wrong second derivatives.
  for (const char* op : {"pairwise_distance_bwd", "hard_mining_bwd", "hetero_center_bwd", "normalized_ce_bwd"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
