// CPU epilogues of the native normalized cross-entropy (driver: csrc/normalized_ce_driver.h).
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../normalized_ce_driver.h"
#include "cpu_ops.h"

namespace vtreid::cpu {
namespace {

struct CpuEpilogue {
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

  // Gq = g (p - t) q for the chunk, and its column sums of G z = Gq s dot r (no division by q).
  template <typename acc_t>
  static void grad(const acc_t* dots, int64_t n, int64_t cc, int64_t c0, int64_t classes, const acc_t* inv_x,
                   const acc_t* inv_w, const int64_t* target, const acc_t* lse, const acc_t* grad_row, acc_t scale,
                   acc_t smoothing, acc_t* gq, acc_t* col_gz) {
    const acc_t off = smoothing / static_cast<acc_t>(classes);
    at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t sx = scale * inv_x[i];
        const int64_t y = target[i] - c0;
        for (int64_t j = 0; j < cc; ++j) {
          const acc_t z = dots[i * cc + j] * sx * inv_w[j];
          const acc_t t = (j == y ? acc_t(1) - smoothing : acc_t(0)) + off;
          gq[i * cc + j] = grad_row[i] * (std::exp(z - lse[i]) - t) * inv_w[j];
        }
      }
    });
    at::parallel_for(0, cc, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = 0; i < n; ++i) {
        const acc_t sx = scale * inv_x[i];
        for (int64_t j = begin; j < end; ++j) col_gz[j] += gq[i * cc + j] * dots[i * cc + j] * sx;
      }
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
