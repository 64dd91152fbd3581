// CPU native backend of vtreid.ops.hard_mining.
//
// Forward streams anchor x candidate blocks: each block's dot products come from at::mm into a small
// reused buffer (never N x M), then a parallel pass over the block's anchors applies the metric, the
// label / modality / self masks, and folds the block into running max/argmax and min/argmin. Blocks
// and columns are visited in increasing candidate order and only a strictly better value replaces the
// running best, so ties keep the lowest index.
// Backward: per-anchor coefficients of the two chosen pairs (formulas in kernels/hard_mining.py), the
// anchor gradient and the 2N candidate contributions in one parallel pass; the candidate gradient sums
// each candidate's contributions in a stable sorted order (deterministic, parallel over candidates).
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../mining_common.h"
#include "../op_checks.h"
#include "cpu_ops.h"
#include "distance.h"

namespace vtreid::cpu {
namespace {

constexpr int64_t kAnchorBlock = 512;
constexpr int64_t kCandidateBlock = 1024;

// Modality 0 is visible and any other value infrared, so the raw op takes int32 modality as given.
inline bool rule_allows(Rule rule, int32_t a, int32_t c) {
  return rule == kAny || (rule == kCross ? (a != 0) != (c != 0) : (a != 0) == (c != 0));
}

}  // namespace

MiningFwdOut hard_mining_fwd(
    const at::Tensor& anchors, const at::Tensor& anchor_labels, const at::Tensor& candidates,
    const at::Tensor& candidate_labels, const std::optional<at::Tensor>& anchor_modality,
    const std::optional<at::Tensor>& candidate_modality, std::string_view metric_name, std::string_view positive,
    std::string_view negative, bool self_mining) {
  const Metric metric = parse_metric(metric_name);
  const MiningIds ids = prepare_mining_ids(anchors, candidates, anchor_labels, candidate_labels, anchor_modality,
                                           candidate_modality, positive, negative);
  const Rule pos_rule = ids.pos_rule, neg_rule = ids.neg_rule;
  const bool use_modality = ids.use_modality;
  const auto acc = accumulation_type(anchors.scalar_type());
  const at::Tensor a = anchors.to(acc).contiguous(), c = candidates.to(acc).contiguous();
  const at::Tensor &la = ids.anchor_labels, &lc = ids.candidate_labels;
  const at::Tensor &ma = ids.anchor_modality, &mc = ids.candidate_modality;
  const int64_t n = a.size(0), m = c.size(0), dim = a.size(1);
  at::Tensor asq = at::empty({n}, a.options()), csq = at::empty({m}, a.options());
  at::Tensor pos_d = at::empty({n}, a.options()), neg_d = at::empty({n}, a.options());
  at::Tensor pos_i = at::full({n}, -1, la.options()), neg_i = at::full({n}, -1, la.options());
  at::Tensor valid = at::empty({n}, la.options().dtype(at::kBool));

  AT_DISPATCH_FLOATING_TYPES(acc, "hard_mining_fwd_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t tau = static_cast<acc_t>(zero_tolerance(dim));
    row_sq_norms(a.const_data_ptr<acc_t>(), n, dim, asq.mutable_data_ptr<acc_t>());
    row_sq_norms(c.const_data_ptr<acc_t>(), m, dim, csq.mutable_data_ptr<acc_t>());
    acc_t* best_pos = pos_d.mutable_data_ptr<acc_t>();
    acc_t* best_neg = neg_d.mutable_data_ptr<acc_t>();
    std::fill(best_pos, best_pos + n, -std::numeric_limits<acc_t>::infinity());
    std::fill(best_neg, best_neg + n, std::numeric_limits<acc_t>::infinity());
    int64_t* pi = pos_i.mutable_data_ptr<int64_t>();
    int64_t* ni = neg_i.mutable_data_ptr<int64_t>();
    const acc_t* as = asq.const_data_ptr<acc_t>();
    const acc_t* cs = csq.const_data_ptr<acc_t>();
    const int64_t* la_p = la.const_data_ptr<int64_t>();
    const int64_t* lc_p = lc.const_data_ptr<int64_t>();
    const int32_t* ma_p = use_modality ? ma.const_data_ptr<int32_t>() : nullptr;
    const int32_t* mc_p = use_modality ? mc.const_data_ptr<int32_t>() : nullptr;

    for (int64_t n0 = 0; n0 < n; n0 += kAnchorBlock) {
      const int64_t nb = std::min(kAnchorBlock, n - n0);
      for (int64_t m0 = 0; m0 < m; m0 += kCandidateBlock) {
        const int64_t mb = std::min(kCandidateBlock, m - m0);
        const at::Tensor dots = at::mm(a.narrow(0, n0, nb), c.narrow(0, m0, mb).t()).contiguous();
        const acc_t* dp = dots.const_data_ptr<acc_t>();
        at::parallel_for(0, nb, 8, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const int64_t i = n0 + r;
            acc_t bp = best_pos[i], bn = best_neg[i];
            int64_t bpi = pi[i], bni = ni[i];
            for (int64_t col = 0; col < mb; ++col) {
              const int64_t j = m0 + col;
              const bool same_id = la_p[i] == lc_p[j];
              bool pos_ok = same_id && !(self_mining && i == j);
              bool neg_ok = !same_id;
              if (use_modality) {
                pos_ok = pos_ok && rule_allows(pos_rule, ma_p[i], mc_p[j]);
                neg_ok = neg_ok && rule_allows(neg_rule, ma_p[i], mc_p[j]);
              }
              if (!pos_ok && !neg_ok) continue;
              const acc_t d = distance_from_dot(dp[r * mb + col], as[i], cs[j], metric, tau);
              if (pos_ok && mining_beats(d, j, bp, bpi, true)) { bp = d; bpi = j; }
              if (neg_ok && mining_beats(d, j, bn, bni, false)) { bn = d; bni = j; }
            }
            best_pos[i] = bp; best_neg[i] = bn; pi[i] = bpi; ni[i] = bni;
          }
        });
      }
    }
    bool* v = valid.mutable_data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i) {
      v[i] = pi[i] >= 0 && ni[i] >= 0;
      if (!v[i]) { best_pos[i] = 0; best_neg[i] = 0; pi[i] = -1; ni[i] = -1; }
    }
  });
  // The public distances: tensors of their own (never the saved ones, even when the dtypes agree), each
  // value rounded once as .to() rounds it; written here rather than by copy ops, whose dispatch costs
  // more than the loop at training sizes.
  at::Tensor pos_out = at::empty({n}, anchors.options()), neg_out = at::empty({n}, anchors.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(), "hard_mining_fwd_cpu_out", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    for (const auto& [from, to] : {std::pair{pos_d, pos_out}, std::pair{neg_d, neg_out}}) {
      const acc_t* src = from.const_data_ptr<acc_t>();
      scalar_t* dst = to.mutable_data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
    }
  });
  return {pos_out, pos_i, neg_out, neg_i, valid, asq, csq, pos_d, neg_d};
}

std::tuple<at::Tensor, at::Tensor> hard_mining_bwd(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& pos_index, const at::Tensor& neg_index, const at::Tensor& pos_dist, const at::Tensor& neg_dist,
    const at::Tensor& asq, const at::Tensor& csq, std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_mining_bwd_inputs(grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq, csq);
  const auto acc = accumulation_type(anchors.scalar_type());
  const at::Tensor a = anchors.to(acc).contiguous(), c = candidates.to(acc).contiguous();
  const at::Tensor gp = grad_pos.to(acc).contiguous(), gn = grad_neg.to(acc).contiguous();
  const at::Tensor dp = pos_dist.to(acc).contiguous(), dn = neg_dist.to(acc).contiguous();
  const at::Tensor as = asq.to(acc).contiguous(), cs = csq.to(acc).contiguous();
  const at::Tensor pi = pos_index.to(at::kLong).contiguous(), ni = neg_index.to(at::kLong).contiguous();
  const int64_t n = a.size(0), m = c.size(0), dim = a.size(1);
  at::Tensor grad_a = at::empty({n, dim}, a.options());
  at::Tensor contrib = at::empty({2 * n, dim}, a.options());
  at::Tensor grad_c = at::zeros({m, dim}, a.options());

  const auto [order, seg] = segment_layout(pi, ni, m);

  AT_DISPATCH_FLOATING_TYPES(acc, "hard_mining_bwd_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* ap = a.const_data_ptr<acc_t>();
    const acc_t* cp = c.const_data_ptr<acc_t>();
    const int64_t* pip = pi.const_data_ptr<int64_t>();
    const int64_t* nip = ni.const_data_ptr<int64_t>();
    acc_t* ga = grad_a.mutable_data_ptr<acc_t>();
    acc_t* ct = contrib.mutable_data_ptr<acc_t>();
    at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        // An index outside [0, m) is "no pair" (-1): never used to address memory.
        const int64_t p = pip[i] < m ? pip[i] : -1, q = nip[i] < m ? nip[i] : -1;
        const auto P = pair_coefficients<acc_t>(gp.const_data_ptr<acc_t>()[i], dp.const_data_ptr<acc_t>()[i], p,
                                                as.const_data_ptr<acc_t>()[i], p >= 0 ? cs.const_data_ptr<acc_t>()[p] : 0,
                                                metric);
        const auto Q = pair_coefficients<acc_t>(gn.const_data_ptr<acc_t>()[i], dn.const_data_ptr<acc_t>()[i], q,
                                                as.const_data_ptr<acc_t>()[i], q >= 0 ? cs.const_data_ptr<acc_t>()[q] : 0,
                                                metric);
        const acc_t* ai = ap + i * dim;
        acc_t* g = ga + i * dim;
        acc_t* tp = ct + i * dim;
        acc_t* tq = ct + (n + i) * dim;
        for (int64_t k = 0; k < dim; ++k) g[k] = (P.alpha + Q.alpha) * ai[k];
        // Invalid anchors (index -1) read no candidate row: their contributions are exactly 0.
        for (auto [idx, C, out] : {std::tuple{p, &P, tp}, std::tuple{q, &Q, tq}}) {
          if (idx < 0) {
            std::fill(out, out + dim, acc_t(0));
            continue;
          }
          const acc_t* row = cp + idx * dim;
          for (int64_t k = 0; k < dim; ++k) {
            g[k] += C->beta * row[k];
            out[k] = C->gamma * row[k] + C->beta * ai[k];
          }
        }
      }
    });
    const int64_t* op = order.const_data_ptr<int64_t>();
    const int64_t* sp = seg.const_data_ptr<int64_t>();
    acc_t* gc = grad_c.mutable_data_ptr<acc_t>();
    at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        acc_t* out = gc + j * dim;
        for (int64_t s = sp[j]; s < sp[j + 1]; ++s) {
          const acc_t* row = ct + op[s] * dim;
          for (int64_t k = 0; k < dim; ++k) out[k] += row[k];
        }
      }
    });
  });
  return {grad_a.to(anchors.scalar_type()), grad_c.to(candidates.scalar_type())};
}

}  // namespace vtreid::cpu
