// CUDA registrations of the vtreid ops: argument checks, device guard, current stream, launcher calls.
// The kernels themselves are in csrc/cuda/ and see only raw pointers.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/types.h>

#include <array>
#include <atomic>
#include <optional>

#include "cuda/launch.h"
#include "center_common.h"
#include "mining_common.h"
#include "normalized_ce_driver.h"
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

// SMs of the device (hard_mining_fwd and the pairwise_distance launchers size their grids to fill them
// once), queried once per device: the attribute query does not synchronise, and the cache keeps it off
// every later call.
int multiprocessor_count(const at::Device& device) {
  static std::array<std::atomic<int>, 64> cache{};
  const int index = device.index();
  if (index >= 0 && index < static_cast<int>(cache.size())) {
    if (const int known = cache[index].load(std::memory_order_relaxed); known > 0) return known;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, index));
  if (index >= 0 && index < static_cast<int>(cache.size())) cache[index].store(sms, std::memory_order_relaxed);
  return sms;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "vtreid::", op, " CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_distance_fwd_cuda(const at::Tensor& x, const at::Tensor& y,
                                                                     std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_pair_inputs(x, y);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t n = xc.size(0), m = yc.size(0), d = xc.size(1);
  const auto norm_options = xc.options().dtype(accumulation_type(x.scalar_type()));
  at::Tensor dist = at::empty({n, m}, xc.options());
  // Norms are written by the first tile column/row; zero-filled so that empty inputs stay defined.
  at::Tensor xsq = at::zeros({n}, norm_options), ysq = at::zeros({m}, norm_options);
  // Small N x M: the features are split over the SMs, partial sums in a workspace (pairwise_distance_fwd_grid).
  const int sms = multiprocessor_count(x.device());
  at::Tensor workspace = at::empty(
      {static_cast<int64_t>(pairwise_distance_fwd_workspace_bytes(dtype_of(xc), n, m, d, sms))},
      xc.options().dtype(at::kByte));
  check_launch(vtreid::cuda::pairwise_distance_fwd(dtype_of(xc), xc.const_data_ptr(), yc.const_data_ptr(),
                                                   dist.mutable_data_ptr(), xsq.mutable_data_ptr(),
                                                   ysq.mutable_data_ptr(),
                                                   workspace.numel() > 0 ? workspace.mutable_data_ptr() : nullptr, n,
                                                   m, d, metric, sms, c10::cuda::getCurrentCUDAStream()),
               "pairwise_distance_fwd");
  return {dist, xsq, ysq};
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_bwd_cuda(const at::Tensor& grad, const at::Tensor& dist,
                                                         const at::Tensor& x, const at::Tensor& y,
                                                         const at::Tensor& xsq, const at::Tensor& ysq,
                                                         std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_pairwise_bwd_inputs(grad, dist, x, y, xsq, ysq);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  // grad and dist go to the kernel in the accumulation type: a float32 grad (or dist) is not rounded to
  // the features' half type before the per-pair coefficients are formed.
  const auto norm_type = accumulation_type(x.scalar_type());
  const at::Tensor g = grad.to(norm_type);
  const at::Tensor dc = dist.to(norm_type);
  const at::Tensor xs = xsq.to(norm_type).contiguous(), ys = ysq.to(norm_type).contiguous();
  const int64_t n = xc.size(0), m = yc.size(0), d = xc.size(1);
  at::Tensor grad_x = at::empty_like(xc), grad_y = at::empty_like(yc);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int sms = multiprocessor_count(x.device());
  check_launch(pairwise_distance_bwd_side(dtype_of(xc), g.const_data_ptr(), dc.const_data_ptr(), xc.const_data_ptr(),
                                          yc.const_data_ptr(), xs.const_data_ptr(), ys.const_data_ptr(),
                                          grad_x.mutable_data_ptr(), n, m, d, g.stride(0), g.stride(1),
                                          dc.stride(0), dc.stride(1), metric, sms, stream),
               "pairwise_distance_bwd");
  check_launch(pairwise_distance_bwd_side(dtype_of(xc), g.const_data_ptr(), dc.const_data_ptr(), yc.const_data_ptr(),
                                          xc.const_data_ptr(), ys.const_data_ptr(), xs.const_data_ptr(),
                                          grad_y.mutable_data_ptr(), m, n, d, g.stride(1), g.stride(0),
                                          dc.stride(1), dc.stride(0), metric, sms, stream),
               "pairwise_distance_bwd");
  return {grad_x, grad_y};
}

MiningFwdOut hard_mining_fwd_cuda(
    const at::Tensor& anchors, const at::Tensor& anchor_labels, const at::Tensor& candidates,
    const at::Tensor& candidate_labels, const std::optional<at::Tensor>& anchor_modality,
    const std::optional<at::Tensor>& candidate_modality, std::string_view metric_name, std::string_view positive,
    std::string_view negative, bool self_mining) {
  const Metric metric = parse_metric(metric_name);
  const MiningIds ids = prepare_mining_ids(anchors, candidates, anchor_labels, candidate_labels, anchor_modality,
                                           candidate_modality, positive, negative);
  const bool use_modality = ids.use_modality;
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor a = anchors.contiguous(), c = candidates.contiguous();
  const at::Tensor &la = ids.anchor_labels, &lc = ids.candidate_labels;
  const at::Tensor &ma = ids.anchor_modality, &mc = ids.candidate_modality;
  const int64_t n = a.size(0), m = c.size(0), dim = a.size(1);
  const auto acc_options = a.options().dtype(accumulation_type(a.scalar_type()));
  // With anchors and candidates the kernels write every output (asq by the first split, csq by the first
  // anchor block: tests/cuda_emu poisons them), so they are not filled: nine fill launches fewer per
  // call at the training shape. Without candidates no kernel runs and the outputs are the defaults.
  const bool run = n > 0 && m > 0;
  const auto output = [&](int64_t size, const at::TensorOptions& options, double fill) {
    return run ? at::empty({size}, options) : at::full({size}, fill, options);
  };
  at::Tensor pos_d = output(n, acc_options, 0), neg_d = output(n, acc_options, 0);
  at::Tensor pos_i = output(n, la.options(), -1), neg_i = output(n, la.options(), -1);
  at::Tensor valid = output(n, la.options().dtype(at::kBool), 0);
  at::Tensor asq = output(n, acc_options, 0), csq = output(m, acc_options, 0);
  at::Tensor pos_out = output(n, a.options(), 0), neg_out = output(n, a.options(), 0);
  if (run) {
    const int sms = multiprocessor_count(a.device());
    // Per-split partial bests when the candidates are split (see launch.h); uninitialised is fine.
    at::Tensor workspace = at::empty(
        {static_cast<int64_t>(hard_mining_fwd_workspace_bytes(dtype_of(a), n, m, dim, sms))},
        a.options().dtype(at::kByte));
    check_launch(vtreid::cuda::hard_mining_fwd(
                     dtype_of(a), a.const_data_ptr(), c.const_data_ptr(), la.const_data_ptr<int64_t>(),
                     lc.const_data_ptr<int64_t>(), use_modality ? ma.const_data_ptr<int32_t>() : nullptr,
                     use_modality ? mc.const_data_ptr<int32_t>() : nullptr, pos_d.mutable_data_ptr(),
                     pos_i.mutable_data_ptr<int64_t>(), neg_d.mutable_data_ptr(), neg_i.mutable_data_ptr<int64_t>(),
                     valid.mutable_data_ptr<bool>(), asq.mutable_data_ptr(), csq.mutable_data_ptr(),
                     pos_out.mutable_data_ptr(), neg_out.mutable_data_ptr(),
                     workspace.numel() > 0 ? workspace.mutable_data_ptr() : nullptr, n, m, dim, metric, ids.pos_rule,
                     ids.neg_rule, self_mining, sms, c10::cuda::getCurrentCUDAStream()),
                 "hard_mining_fwd");
  }
  return {pos_out, pos_i, neg_out, neg_i, valid, asq, csq, pos_d, neg_d};
}

std::tuple<at::Tensor, at::Tensor> hard_mining_bwd_cuda(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& pos_index, const at::Tensor& neg_index, const at::Tensor& pos_dist, const at::Tensor& neg_dist,
    const at::Tensor& asq, const at::Tensor& csq, std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_mining_bwd_inputs(grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq, csq);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const auto acc = accumulation_type(anchors.scalar_type());
  const at::Tensor a = anchors.contiguous(), c = candidates.contiguous();
  // The kernel reads the gradients with their strides (autograd hands them in the features' dtype, often
  // expanded from a sum): no cast or copy launch. It reads the accumulation type too, so a direct call with
  // float32 gradients for half features keeps their precision; any other dtype is converted to that.
  const auto given = grad_pos.scalar_type();
  const bool readable = given == grad_neg.scalar_type() && (given == a.scalar_type() || given == acc);
  const auto grad_type = readable ? given : acc;
  const at::Tensor gp = grad_pos.to(grad_type), gn = grad_neg.to(grad_type);
  const at::Tensor pd = pos_dist.to(acc).contiguous(), nd = neg_dist.to(acc).contiguous();
  const at::Tensor as = asq.to(acc).contiguous(), cs = csq.to(acc).contiguous();
  const at::Tensor pi = pos_index.to(at::kLong).contiguous(), ni = neg_index.to(at::kLong).contiguous();
  const int64_t n = a.size(0), m = c.size(0), dim = a.size(1);
  at::Tensor grad_a = at::empty_like(a), grad_c = at::empty_like(c);
  check_launch(vtreid::cuda::hard_mining_bwd(
                   dtype_of(a), dtype_of(gp), gp.const_data_ptr(), gp.stride(0), gn.const_data_ptr(), gn.stride(0),
                   a.const_data_ptr(), c.const_data_ptr(),
                   pi.const_data_ptr<int64_t>(), ni.const_data_ptr<int64_t>(), pd.const_data_ptr(), nd.const_data_ptr(),
                   as.const_data_ptr(), cs.const_data_ptr(), grad_a.mutable_data_ptr(), grad_c.mutable_data_ptr(), n,
                   m, dim, metric, c10::cuda::getCurrentCUDAStream()),
               "hard_mining_bwd");
  return {grad_a, grad_c};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_slots_cuda(const at::Tensor& labels) {
  check_slot_labels(labels);
  const c10::cuda::CUDAGuard guard(labels.device());
  const at::Tensor l = labels.contiguous();
  const int64_t n = l.size(0);
  const auto i64 = l.options().dtype(at::kLong);
  at::Tensor order = at::empty({n}, i64), slot = at::empty({n}, i64);
  at::Tensor sorted_labels = at::empty({n}, i64), sorted_slot = at::empty({n}, i64);
  at::Tensor seg = n > 0 ? at::empty({n + 1}, i64) : at::zeros({1}, i64);  // the kernels write all of it
  check_launch(vtreid::cuda::class_slots(l.scalar_type() == at::kInt, l.const_data_ptr(),
                                         order.mutable_data_ptr<int64_t>(), seg.mutable_data_ptr<int64_t>(),
                                         slot.mutable_data_ptr<int64_t>(), sorted_labels.mutable_data_ptr<int64_t>(),
                                         sorted_slot.mutable_data_ptr<int64_t>(), n,
                                         c10::cuda::getCurrentCUDAStream()),
               "class_slots");
  return {order, seg, slot, sorted_labels, sorted_slot};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hetero_center_fwd_cuda(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& seg, const at::Tensor& slot,
    const at::Tensor& modality, std::string_view metric_name, bool strong, double margin) {
  const CenterLayout layout = prepare_center_layout(x, order, seg, modality, metric_name, margin);
  const Metric metric = layout.metric;
  const at::Tensor &ord = layout.order, &sg = layout.seg, &mod = layout.modality;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t sets = xc.size(0), n = xc.size(1), dim = xc.size(2);
  const auto acc = xc.options().dtype(accumulation_type(xc.scalar_type()));
  // The kernel writes every slot, empty ones included (zeros), so nothing is filled first; counts are
  // written by the first feature set's blocks, so they need zeros only when there is none.
  at::Tensor hinge = at::empty({sets, n}, acc), centers = at::empty({sets, n, 2, dim}, acc);
  at::Tensor variances = at::empty_like(centers), stats = at::empty({sets, n, 5}, acc);
  at::Tensor counts = sets > 0 ? at::empty({n, 2}, ord.options()) : at::zeros({n, 2}, ord.options());
  // Per-slice class scalars when the features span more than one slice (see launch.h); uninitialised is fine.
  at::Tensor workspace = at::empty(
      {static_cast<int64_t>(hetero_center_fwd_workspace_bytes(dtype_of(xc), sets, n, dim))},
      xc.options().dtype(at::kByte));
  check_launch(vtreid::cuda::hetero_center_fwd(dtype_of(xc), xc.const_data_ptr(), ord.const_data_ptr<int64_t>(),
                                               sg.const_data_ptr<int64_t>(), mod.const_data_ptr<int32_t>(),
                                               hinge.mutable_data_ptr(), centers.mutable_data_ptr(),
                                               variances.mutable_data_ptr(), counts.mutable_data_ptr<int64_t>(),
                                               stats.mutable_data_ptr(),
                                               workspace.numel() > 0 ? workspace.mutable_data_ptr() : nullptr, sets,
                                               n, dim, metric, strong, margin, c10::cuda::getCurrentCUDAStream()),
               "hetero_center_fwd");
  return {hinge, centers, variances, counts, stats};
}

at::Tensor hetero_center_bwd_cuda(const at::Tensor& x, const at::Tensor& slot, const at::Tensor& modality,
                                  const at::Tensor& hinge, const at::Tensor& centers, const at::Tensor& variances,
                                  const at::Tensor& counts, const at::Tensor& stats, const at::Tensor& grad_hinge,
                                  const std::optional<at::Tensor>& grad_centers, std::string_view metric_name,
                                  bool strong) {
  const Metric metric = parse_metric(metric_name);
  const at::Tensor mod = check_center_bwd_inputs(x, slot, modality, hinge, centers, variances, counts, stats,
                                                 grad_hinge, grad_centers);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xc = x.contiguous();
  const at::Tensor sl = slot.to(at::kLong).contiguous(), cnt = counts.to(at::kLong).contiguous();
  // grad_hinge is read with its strides: autograd hands back the sum's gradient expanded, not a copy.
  const at::Tensor h = hinge.to(acc).contiguous(), gh = grad_hinge.to(acc);
  const at::Tensor c = centers.to(acc).contiguous(), v = variances.to(acc).contiguous(), st = stats.to(acc).contiguous();
  const bool has_gc = grad_centers.has_value() && grad_centers->defined();
  const at::Tensor gc = has_gc ? grad_centers->to(acc).contiguous() : at::Tensor();
  at::Tensor grad_x = at::empty_like(xc);
  check_launch(vtreid::cuda::hetero_center_bwd(dtype_of(xc), xc.const_data_ptr(), sl.const_data_ptr<int64_t>(),
                                               mod.const_data_ptr<int32_t>(), h.const_data_ptr(), c.const_data_ptr(),
                                               v.const_data_ptr(), cnt.const_data_ptr<int64_t>(), st.const_data_ptr(),
                                               gh.const_data_ptr(), gh.stride(0), gh.stride(1),
                                               has_gc ? gc.const_data_ptr() : nullptr,
                                               grad_x.mutable_data_ptr(), xc.size(0), xc.size(1), xc.size(2), metric,
                                               strong, c10::cuda::getCurrentCUDAStream()),
               "hetero_center_bwd");
  return grad_x;
}

struct CudaEpilogue {
  static void row_norms(const at::Tensor& src, const at::Tensor& sq, const at::Tensor& inv) {
    AT_DISPATCH_FLOATING_TYPES(sq.scalar_type(), "normalized_ce_row_norms", [&] {
      check_launch(normalized_ce_row_norms<scalar_t>(dtype_of(src), src.const_data_ptr(), src.size(0), src.size(1),
                                                     src.stride(0), src.stride(1), sq.mutable_data_ptr<scalar_t>(),
                                                     inv.mutable_data_ptr<scalar_t>(),
                                                     c10::cuda::getCurrentCUDAStream()),
                   "normalized_ce_fwd");
    });
  }
  static void unit_rows(const at::Tensor& sq, const at::Tensor& inv, const at::Tensor& x, const at::Tensor& unit) {
    const bool has_x = x.defined();  // else the inverse norms alone
    AT_DISPATCH_FLOATING_TYPES(sq.scalar_type(), "normalized_ce_unit_rows", [&] {
      check_launch(normalized_ce_unit_rows<scalar_t>(
                       sq.const_data_ptr<scalar_t>(), sq.size(0), inv.mutable_data_ptr<scalar_t>(),
                       has_x ? dtype_of(x) : DType::kFloat32, has_x ? x.const_data_ptr() : nullptr,
                       has_x ? x.size(1) : 0, has_x ? dtype_of(unit) : DType::kFloat32,
                       has_x ? unit.mutable_data_ptr() : nullptr,
                       c10::cuda::getCurrentCUDAStream()),
                   "normalized_ce_bwd");
    });
  }
  static void grad_x(const at::Tensor& gx, const at::Tensor& x, const at::Tensor& sq, const at::Tensor& inv,
                     const at::Tensor& g, const at::Tensor& ez, const at::Tensor& tz, double scale,
                     const at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "normalized_ce_grad_x", [&] {
      check_launch(normalized_ce_grad_x<scalar_t>(
                       gx.const_data_ptr<scalar_t>(), dtype_of(x), x.const_data_ptr(), sq.const_data_ptr<scalar_t>(),
                       inv.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), ez.const_data_ptr<scalar_t>(),
                       tz.const_data_ptr<scalar_t>(), static_cast<scalar_t>(scale), x.size(0), x.size(1),
                       out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
                   "normalized_ce_bwd");
    });
  }
  template <typename acc_t>
  static void merge(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes, const acc_t* inv_x,
                    const acc_t* inv_w, const int64_t* target, acc_t scale, acc_t smoothing, LseRows<acc_t> rows) {
    check_launch(normalized_ce_merge<acc_t>(dots, n, cc, c0, classes, inv_x, inv_w, target, scale, smoothing, rows,
                                            c10::cuda::getCurrentCUDAStream()),
                 "normalized_ce_fwd");
  }
  static void grad(const at::Tensor& dots, int64_t c0, int64_t classes, const at::Tensor& inv_x,
                   const at::Tensor& inv_w, const at::Tensor& wsq, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& grad_row, double scale, double smoothing, const at::Tensor& gq,
                   const at::Tensor& operand, const at::Tensor& coef) {
    const int64_t n = dots.size(0), cc = dots.size(1);
    const at::Tensor partials = at::empty({normalized_ce_grad_row_blocks(n), cc}, dots.options());
    AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "normalized_ce_grad", [&] {
      check_launch(normalized_ce_grad<scalar_t>(
                       dots.const_data_ptr<scalar_t>(), n, cc, c0, classes, inv_x.const_data_ptr<scalar_t>(),
                       inv_w.const_data_ptr<scalar_t>(), wsq.const_data_ptr<scalar_t>(),
                       target.const_data_ptr<int64_t>(), lse.const_data_ptr<scalar_t>(),
                       grad_row.const_data_ptr<scalar_t>(), static_cast<scalar_t>(scale),
                       static_cast<scalar_t>(smoothing), gq.defined() ? gq.mutable_data_ptr<scalar_t>() : nullptr,
                       operand.defined() ? dtype_of(operand) : DType::kFloat32,
                       operand.defined() ? operand.mutable_data_ptr() : nullptr, partials.mutable_data_ptr<scalar_t>(),
                       coef.mutable_data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream()),
                   "normalized_ce_bwd");
    });
  }
  static void weight_grad(const at::Tensor& dir, const at::Tensor& w, const at::Tensor& coef, double scale,
                          const at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES(dir.scalar_type(), "normalized_ce_weight_grad", [&] {
      check_launch(normalized_ce_weight_grad<scalar_t>(
                       dir.const_data_ptr<scalar_t>(), dtype_of(w), w.const_data_ptr(), coef.const_data_ptr<scalar_t>(),
                       static_cast<scalar_t>(scale), w.size(0), w.size(1), out.mutable_data_ptr(),
                       c10::cuda::getCurrentCUDAStream()),
                   "normalized_ce_bwd");
    });
  }
};

NormalizedCeForward normalized_ce_fwd_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target, double scale, double label_smoothing) {
  const c10::cuda::CUDAGuard guard(x.device());
  return normalized_ce_forward<CudaEpilogue>(x, weight, target, scale, label_smoothing);
}

std::tuple<at::Tensor, at::Tensor> normalized_ce_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target,
    const at::Tensor& lse, const at::Tensor& ez, const at::Tensor& tz, const at::Tensor& xsq, const at::Tensor& wsq,
    const at::Tensor& dots, double scale, double label_smoothing) {
  const c10::cuda::CUDAGuard guard(x.device());
  return normalized_ce_backward<CudaEpilogue>(grad, x, weight, target, lse, ez, tz, xsq, wsq, dots, scale,
                                              label_smoothing);
}

}  // namespace
}  // namespace vtreid::cuda

TORCH_LIBRARY_IMPL(vtreid, CUDA, m) {
  m.impl("pairwise_distance_fwd", &vtreid::cuda::pairwise_distance_fwd_cuda);
  m.impl("pairwise_distance_bwd", &vtreid::cuda::pairwise_distance_bwd_cuda);
  m.impl("hard_mining_fwd", &vtreid::cuda::hard_mining_fwd_cuda);
  m.impl("hard_mining_bwd", &vtreid::cuda::hard_mining_bwd_cuda);
  m.impl("hetero_center_fwd", &vtreid::cuda::hetero_center_fwd_cuda);
  m.impl("hetero_center_bwd", &vtreid::cuda::hetero_center_bwd_cuda);
  m.impl("class_slots", &vtreid::cuda::class_slots_cuda);
  m.impl("normalized_ce_fwd", &vtreid::cuda::normalized_ce_fwd_cuda);
  m.impl("normalized_ce_bwd", &vtreid::cuda::normalized_ce_bwd_cuda);
}
