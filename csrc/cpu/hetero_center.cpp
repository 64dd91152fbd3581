// CPU native backend of vtreid.ops.modality_centers / hetero_center_loss (formulas in
// kernels/hetero_center.py). Forward: parallel over (feature set, class slot); each slot walks its
// samples in batch order (order[seg[k]:seg[k+1]]) for the centres, and again for the two-pass variance
// when strong. Backward: parallel over (feature set, sample), each writing its own gradient row.
// No shared accumulators, so results are bitwise reproducible.
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "../center_common.h"
#include "../op_checks.h"
#include "../pair_math.h"
#include "cpu_ops.h"

namespace vtreid::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hetero_center_fwd(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& seg, const at::Tensor& slot,
    const at::Tensor& modality, std::string_view metric_name, bool strong, double margin) {
  const CenterLayout layout = prepare_center_layout(x, order, seg, modality, metric_name, margin);
  const Metric metric = layout.metric;
  const at::Tensor &ord = layout.order, &sg = layout.seg, &mod = layout.modality;
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xa = x.to(acc).contiguous();
  const int64_t s_count = xa.size(0), n = xa.size(1), dim = xa.size(2);
  at::Tensor hinge = at::zeros({s_count, n}, xa.options());
  at::Tensor centers = at::zeros({s_count, n, 2, dim}, xa.options());
  at::Tensor variances = at::zeros_like(centers);
  at::Tensor counts = at::zeros({n, 2}, ord.options());
  at::Tensor stats = at::zeros({s_count, n, 5}, xa.options());
  const int64_t* op = ord.const_data_ptr<int64_t>();
  const int64_t* sp = sg.const_data_ptr<int64_t>();
  const int32_t* mp = mod.const_data_ptr<int32_t>();
  // 0 is visible and any other value infrared, as in every backend: the index of the sample's centre.
  const auto side = [mp](int64_t j) -> int64_t { return mp[j] != 0 ? 1 : 0; };
  int64_t* cnt = counts.mutable_data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t p = sp[k]; p < sp[k + 1]; ++p) ++cnt[2 * k + side(op[p])];
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "hetero_center_fwd_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* xp = xa.const_data_ptr<acc_t>();
    acc_t* cp = centers.mutable_data_ptr<acc_t>();
    acc_t* vp = variances.mutable_data_ptr<acc_t>();
    acc_t* hp = hinge.mutable_data_ptr<acc_t>();
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    at::parallel_for(0, s_count * n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t sk = begin; sk < end; ++sk) {
        const int64_t s = sk / n, k = sk % n;
        const int64_t n_vis = cnt[2 * k], n_ir = cnt[2 * k + 1];
        if (n_vis + n_ir == 0) continue;
        const acc_t inv[2] = {acc_t(1) / std::max<int64_t>(n_vis, 1), acc_t(1) / std::max<int64_t>(n_ir, 1)};
        acc_t* c = cp + sk * 2 * dim;
        acc_t* v = vp + sk * 2 * dim;
        const acc_t* xs = xp + s * n * dim;
        for (int64_t p = sp[k]; p < sp[k + 1]; ++p) {
          const int64_t j = op[p];
          acc_t* cm = c + side(j) * dim;
          for (int64_t d = 0; d < dim; ++d) cm[d] += xs[j * dim + d];
        }
        for (int64_t d = 0; d < 2 * dim; ++d) c[d] *= inv[d / dim];
        if (strong) {
          for (int64_t p = sp[k]; p < sp[k + 1]; ++p) {
            const int64_t j = op[p];
            const acc_t* cm = c + side(j) * dim;
            acc_t* vm = v + side(j) * dim;
            for (int64_t d = 0; d < dim; ++d) {
              const acc_t dev = xs[j * dim + d] - cm[d];
              vm[d] += dev * dev;
            }
          }
          for (int64_t d = 0; d < 2 * dim; ++d) v[d] *= inv[d / dim];
        }
        acc_t diff_sq = 0, dot = 0, vis_sq = 0, ir_sq = 0, var_diff_sq = 0;
        for (int64_t d = 0; d < dim; ++d) {
          const acc_t a = c[d], b = c[dim + d];
          diff_sq += (a - b) * (a - b);
          dot += a * b;
          vis_sq += a * a;
          ir_sq += b * b;
          if (strong) var_diff_sq += (v[d] - v[dim + d]) * (v[d] - v[dim + d]);
        }
        acc_t* out = st + sk * 5;
        out[0] = diff_sq; out[1] = dot; out[2] = vis_sq; out[3] = ir_sq; out[4] = var_diff_sq;
        hp[sk] = class_hinge(out, n_vis, n_ir, metric, static_cast<acc_t>(margin));
      }
    });
  });
  return {hinge, centers, variances, counts, stats};
}

at::Tensor hetero_center_bwd(const at::Tensor& x, const at::Tensor& slot, const at::Tensor& modality,
                             const at::Tensor& hinge, const at::Tensor& centers, const at::Tensor& variances,
                             const at::Tensor& counts, const at::Tensor& stats, const at::Tensor& grad_hinge,
                             const std::optional<at::Tensor>& grad_centers, std::string_view metric_name, bool strong) {
  const Metric metric = parse_metric(metric_name);
  const at::Tensor mod = check_center_bwd_inputs(x, slot, modality, hinge, centers, variances, counts, stats,
                                                 grad_hinge, grad_centers);
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor sl = slot.to(at::kLong).contiguous(), cnt = counts.to(at::kLong).contiguous();
  const at::Tensor h = hinge.to(acc).contiguous(), gh = grad_hinge.to(acc).contiguous();
  const at::Tensor c = centers.to(acc).contiguous(), v = variances.to(acc).contiguous(), st = stats.to(acc).contiguous();
  const bool has_gc = grad_centers.has_value() && grad_centers->defined();
  const at::Tensor gc = has_gc ? grad_centers->to(acc).contiguous() : at::Tensor();
  const int64_t s_count = xa.size(0), n = xa.size(1), dim = xa.size(2);
  at::Tensor grad_x = at::empty({s_count, n, dim}, xa.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "hetero_center_bwd_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* xp = xa.const_data_ptr<acc_t>();
    const acc_t* cp = c.const_data_ptr<acc_t>();
    const acc_t* vp = v.const_data_ptr<acc_t>();
    const acc_t* stp = st.const_data_ptr<acc_t>();
    const acc_t* hp = h.const_data_ptr<acc_t>();
    const acc_t* ghp = gh.const_data_ptr<acc_t>();
    const acc_t* gcp = has_gc ? gc.const_data_ptr<acc_t>() : nullptr;
    const int64_t* slp = sl.const_data_ptr<int64_t>();
    const int64_t* cntp = cnt.const_data_ptr<int64_t>();
    const int32_t* mp = mod.const_data_ptr<int32_t>();
    acc_t* out = grad_x.mutable_data_ptr<acc_t>();
    at::parallel_for(0, s_count * n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t sj = begin; sj < end; ++sj) {
        const int64_t s = sj / n, j = sj % n, k = slp[j];
        const int m = mp[j] != 0 ? 1 : 0;  // any non-zero value is infrared: never an index past 1
        const int64_t sk = s * n + k;
        const acc_t inv_n = acc_t(1) / std::max<int64_t>(cntp[2 * k + m], 1);
        // The hinge passes gradient where it is active or NaN, as relu, and only for a class seen in both
        // modalities (the sample's own has a count >= 1; a one-modality class's hinge is 0 or NaN, times 0).
        // An inactive hinge (or an unused one, passed as 0) adds no term at all: not 0 * a NaN centre.
        const bool live = hp[sk] != acc_t(0);
        const bool passes = live && cntp[2 * k + 1 - m] > 0;
        const acc_t g = passes ? ghp[sk] : acc_t(0);
        const acc_t* cm = cp + (sk * 2 + m) * dim;
        const acc_t* co = cp + (sk * 2 + 1 - m) * dim;
        acc_t own = 0, other = 2;  // d dist / d c_m = own * c_m - other * c_o
        if (metric == kCosine) {
          const acc_t* s5 = stp + sk * 5;
          const acc_t norm_m = std::sqrt(s5[2 + m]);
          const acc_t inv_m = acc_t(1) / std::max(norm_m, acc_t(kCosineEps));
          const acc_t inv_o = acc_t(1) / std::max(std::sqrt(s5[3 - m]), acc_t(kCosineEps));
          own = norm_m > acc_t(kCosineEps) ? s5[1] * inv_m * inv_o * inv_m * inv_m : acc_t(0);
          other = inv_m * inv_o;
        } else {
          own = 2;
        }
        const acc_t* xj = xp + (s * n + j) * dim;
        const acc_t* vm = vp + (sk * 2 + m) * dim;
        const acc_t* vo = vp + (sk * 2 + 1 - m) * dim;
        const acc_t* gcm = has_gc ? gcp + (sk * 2 + m) * dim : nullptr;
        acc_t* o = out + sj * dim;
        for (int64_t d = 0; d < dim; ++d) {
          acc_t grad = live ? g * (own * cm[d] - other * co[d]) : acc_t(0);
          if (strong && live) grad += g * acc_t(4) * (vm[d] - vo[d]) * (xj[d] - cm[d]);
          if (has_gc) grad += gcm[d];
          o[d] = grad * inv_n;
        }
      }
    });
  });
  return grad_x.to(x.scalar_type());
}

// A stable sort of the sample indices by label, then one walk along it (O(N log N); the GPU kernels
// count instead, O(N^2) and without a sort).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> class_slots(const at::Tensor& labels) {
  check_slot_labels(labels);
  const at::Tensor l = labels.to(at::kLong).contiguous();
  const int64_t n = l.size(0);
  const auto i64 = l.options();
  at::Tensor order = at::empty({n}, i64), seg = at::empty({n + 1}, i64), slot = at::empty({n}, i64);
  at::Tensor sorted_labels = at::empty({n}, i64), sorted_slot = at::empty({n}, i64);
  const int64_t* lp = l.const_data_ptr<int64_t>();
  int64_t *op = order.mutable_data_ptr<int64_t>(), *sp = seg.mutable_data_ptr<int64_t>();
  int64_t *slp = slot.mutable_data_ptr<int64_t>(), *lab = sorted_labels.mutable_data_ptr<int64_t>();
  int64_t* ss = sorted_slot.mutable_data_ptr<int64_t>();
  std::iota(op, op + n, int64_t{0});
  std::stable_sort(op, op + n, [lp](int64_t a, int64_t b) { return lp[a] < lp[b]; });
  int64_t k = -1;
  for (int64_t p = 0; p < n; ++p) {
    lab[p] = lp[op[p]];
    if (p == 0 || lab[p] != lab[p - 1]) sp[++k] = p;
    ss[p] = k;
    slp[op[p]] = k;
  }
  std::fill(sp + k + 1, sp + n + 1, n);  // the slots past the last class (and seg[N]) are empty at N
  return {order, seg, slot, sorted_labels, sorted_slot};
}

}  // namespace vtreid::cpu
