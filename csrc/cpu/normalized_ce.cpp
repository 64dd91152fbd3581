// CPU epilogues of the native normalized cross-entropy (driver: csrc/normalized_ce_driver.h).
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../normalized_ce_driver.h"
#include "../pair_math.h"
#include "cpu_ops.h"

namespace vtreid::cpu {
namespace {

// sum_k v_k^2 of row[0], row[stride], ...: eight running sums so the loop vectorises, added in a fixed order.
template <typename acc_t, typename T>
acc_t sum_of_squares(const T* row, int64_t dim, int64_t stride) {
  constexpr int kLanes = 8;
  acc_t lane[kLanes] = {};
  int64_t k = 0;
  if (stride == 1) {
    for (; k + kLanes <= dim; k += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const acc_t v = static_cast<acc_t>(row[k + l]);
        lane[l] += v * v;
      }
    }
  }
  acc_t total = 0;
  for (; k < dim; ++k) {
    const acc_t v = static_cast<acc_t>(row[k * stride]);
    total += v * v;
  }
  for (int l = 0; l < kLanes; ++l) total += lane[l];
  return total;
}

struct CpuEpilogue {
  static void row_norms(const at::Tensor& src, const at::Tensor& sq, const at::Tensor& inv) {
    const int64_t rows = src.size(0), dim = src.size(1), stride_row = src.stride(0), stride_col = src.stride(1);
    AT_DISPATCH_FLOATING_TYPES(sq.scalar_type(), "normalized_ce_row_norms", [&] {
      using acc_t = scalar_t;
      acc_t *s = sq.mutable_data_ptr<acc_t>(), *r = inv.mutable_data_ptr<acc_t>();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "normalized_ce_row_norms", [&] {
        const scalar_t* p = src.const_data_ptr<scalar_t>();
        at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            s[i] = sum_of_squares<acc_t>(p + i * stride_row, dim, stride_col);
            r[i] = inverse_norm(s[i]);
          }
        });
      });
    });
  }

  static void unit_rows(const at::Tensor& sq, const at::Tensor& inv, const at::Tensor& x, const at::Tensor& unit) {
    const int64_t rows = sq.size(0), dim = x.defined() ? x.size(1) : 0;
    AT_DISPATCH_FLOATING_TYPES(sq.scalar_type(), "normalized_ce_unit_rows", [&] {
      using acc_t = scalar_t;
      const acc_t* s = sq.const_data_ptr<acc_t>();
      acc_t* r = inv.mutable_data_ptr<acc_t>();
      for (int64_t i = 0; i < rows; ++i) r[i] = inverse_norm(s[i]);
      if (!x.defined()) return;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "normalized_ce_unit_rows", [&] {
        using x_t = scalar_t;
        const x_t* xp = x.const_data_ptr<x_t>();
        AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, unit.scalar_type(), "normalized_ce_unit_rows", [&] {
          scalar_t* up = unit.mutable_data_ptr<scalar_t>();
          at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
              for (int64_t k = 0; k < dim; ++k) {
                up[i * dim + k] = static_cast<scalar_t>(static_cast<acc_t>(xp[i * dim + k]) * r[i]);
              }
            }
          });
        });
      });
    });
  }

  static void grad_x(const at::Tensor& gx, const at::Tensor& x, const at::Tensor& sq, const at::Tensor& inv,
                     const at::Tensor& g, const at::Tensor& ez, const at::Tensor& tz, double scale,
                     const at::Tensor& out) {
    const int64_t rows = x.size(0), dim = x.size(1);
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "normalized_ce_grad_x", [&] {
      using acc_t = scalar_t;
      const acc_t *gp = gx.const_data_ptr<acc_t>(), *s = sq.const_data_ptr<acc_t>(), *r = inv.const_data_ptr<acc_t>();
      const acc_t *gr = g.const_data_ptr<acc_t>(), *e = ez.const_data_ptr<acc_t>(), *t = tz.const_data_ptr<acc_t>();
      const acc_t sc = static_cast<acc_t>(scale);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "normalized_ce_grad_x", [&] {
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* op = out.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const acc_t keep = norm_above_eps(s[i]) ? acc_t(1) : acc_t(0);
            const acc_t row_coef = keep * r[i] * r[i] * (gr[i] * (e[i] - t[i])), a = r[i] * sc;
            for (int64_t k = 0; k < dim; ++k) {
              const int64_t idx = i * dim + k;
              op[idx] = static_cast<scalar_t>(gp[idx] * a - static_cast<acc_t>(xp[idx]) * row_coef);
            }
          }
        });
      });
    });
  }

  // Fold one class chunk into each row's online log-sum-exp state (csrc/online_lse.h: the first chunk
  // starts it, the last writes the results).
  template <typename acc_t>
  static void merge(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes, const acc_t* inv_x,
                    const acc_t* inv_w, const int64_t* target, acc_t scale, acc_t smoothing, LseRows<acc_t> s) {
    const bool first = c0 == 0, last = c0 + cc == classes;
    at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t* row = dots + i * cc;
        const acc_t sx = scale * inv_x[i];
        acc_t chunk_max = -std::numeric_limits<acc_t>::infinity(), total = 0;
        for (int64_t j = 0; j < cc; ++j) {
          const acc_t z = row[j] * sx * inv_w[j];
          chunk_max = std::max(chunk_max, z);
          total += z;
        }
        const acc_t old_max = s.max_before(i, first);
        const acc_t new_max = std::max(old_max, chunk_max);
        acc_t sum = 0, ez = 0;
        for (int64_t j = 0; j < cc; ++j) {
          const acc_t z = row[j] * sx * inv_w[j];
          const acc_t p = std::exp(z - new_max);
          sum += p;
          ez += p * z;
        }
        const int64_t y = target[i] - c0;
        s.fold(i, first, last, old_max, new_max, sum, ez, total, y >= 0 && y < cc ? row[y] * sx * inv_w[y] : acc_t(0),
               smoothing, classes);
      }
    });
  }

  // Gq = g (p - t) q for the chunk, written as the GEMM operand(s) the driver asked for, and the
  // column coefficients [|w_c| > eps] q_c^2 sum_i G_ic z_ic (G z = Gq s dot r: no division by q).
  static void grad(const at::Tensor& dots, int64_t c0, int64_t classes, const at::Tensor& inv_x,
                   const at::Tensor& inv_w, const at::Tensor& wsq, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& grad_row, double scale, double smoothing, const at::Tensor& gq,
                   const at::Tensor& operand, const at::Tensor& coef) {
    const int64_t n = dots.size(0), cc = dots.size(1);
    const bool to_half = operand.defined() && operand.scalar_type() == at::kHalf;
    const bool to_split = operand.defined() && operand.scalar_type() == at::kBFloat16;
    AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "normalized_ce_grad", [&] {
      using acc_t = scalar_t;
      const acc_t* d = dots.const_data_ptr<acc_t>();
      const acc_t *ix = inv_x.const_data_ptr<acc_t>(), *iw = inv_w.const_data_ptr<acc_t>();
      const acc_t *ls = lse.const_data_ptr<acc_t>(), *g = grad_row.const_data_ptr<acc_t>();
      const int64_t* tg = target.const_data_ptr<int64_t>();
      acc_t* out = gq.defined() ? gq.mutable_data_ptr<acc_t>() : nullptr;
      at::Half* half = to_half ? operand.mutable_data_ptr<at::Half>() : nullptr;
      at::BFloat16* split = to_split ? operand.mutable_data_ptr<at::BFloat16>() : nullptr;
      const acc_t s = static_cast<acc_t>(scale), sm = static_cast<acc_t>(smoothing);
      const acc_t off = sm / static_cast<acc_t>(classes);
      // G q and its column sums: the rows in order for each column (column blocks in parallel).
      std::vector<acc_t> col(cc, acc_t(0));
      at::parallel_for(0, cc, 256, [&](int64_t begin, int64_t end) {
        for (int64_t i = 0; i < n; ++i) {
          const acc_t sx = s * ix[i];
          const int64_t y = tg[i] - c0;
          for (int64_t j = begin; j < end; ++j) {
            const int64_t e = i * cc + j;
            const acc_t z = d[e] * sx * iw[j];
            const acc_t t = (j == y ? acc_t(1) - sm : acc_t(0)) + off;
            const acc_t v = g[i] * (std::exp(z - ls[i]) - t) * iw[j];
            if (out) out[e] = v;
            if (half) half[e] = static_cast<at::Half>(v);
            if (split) {
              const at::BFloat16 hi = static_cast<at::BFloat16>(v);
              const acc_t hi_v = static_cast<acc_t>(static_cast<float>(hi));
              split[e] = hi;
              split[n * cc + e] = static_cast<at::BFloat16>(std::isinf(hi_v) ? acc_t(0) : v - hi_v);
            }
            col[j] += v * d[e] * sx;
          }
        }
      });
      const acc_t* w2 = wsq.const_data_ptr<acc_t>();
      acc_t* cf = coef.mutable_data_ptr<acc_t>();
      for (int64_t j = 0; j < cc; ++j) {
        const acc_t keep = norm_above_eps(w2[j]) ? acc_t(1) : acc_t(0);
        cf[j] = keep * iw[j] * iw[j] * col[j];
      }
    });
  }

  // out = scale dir - coef w, row c of W scaled by its coefficient, in W's dtype.
  static void weight_grad(const at::Tensor& dir, const at::Tensor& w, const at::Tensor& coef, double scale,
                          const at::Tensor& out) {
    const int64_t cc = w.size(0), dim = w.size(1);
    AT_DISPATCH_FLOATING_TYPES(dir.scalar_type(), "normalized_ce_weight_grad", [&] {
      using acc_t = scalar_t;
      const acc_t *dr = dir.const_data_ptr<acc_t>(), *cf = coef.const_data_ptr<acc_t>();
      const acc_t s = static_cast<acc_t>(scale);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "normalized_ce_weight_grad", [&] {
        const scalar_t* wp = w.const_data_ptr<scalar_t>();
        scalar_t* op = out.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, cc, 16, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            for (int64_t k = 0; k < dim; ++k) {
              const int64_t e = c * dim + k;
              op[e] = static_cast<scalar_t>(s * dr[e] - cf[c] * static_cast<acc_t>(wp[e]));
            }
          }
        });
      });
    });
  }
};

}  // namespace

NormalizedCeForward normalized_ce_fwd(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target, double scale, double label_smoothing) {
  return normalized_ce_forward<CpuEpilogue>(x, weight, target, scale, label_smoothing);
}

std::tuple<at::Tensor, at::Tensor> normalized_ce_bwd(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target,
    const at::Tensor& lse, const at::Tensor& ez, const at::Tensor& tz, const at::Tensor& xsq, const at::Tensor& wsq,
    const at::Tensor& dots, double scale, double label_smoothing) {
  return normalized_ce_backward<CpuEpilogue>(grad, x, weight, target, lse, ez, tz, xsq, wsq, dots, scale,
                                             label_smoothing);
}

}  // namespace vtreid::cpu
