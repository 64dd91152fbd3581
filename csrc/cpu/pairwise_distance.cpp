// CPU native backend of vtreid.ops.pairwise_distance.
//
// Forward: x.y^T by at::mm (BLAS), the squared row norms by a parallel loop, then one fused
// parallel epilogue over rows that turns the product into the metric in place.
// Backward: grad_x = a * x - B @ y and grad_y = b * y - B^T @ x, with B built in one parallel pass
// (formulas in kernels/pairwise_distance.py) and the two products by at::mm.
// Half inputs are computed in float32, float64 in float64; results are cast back to the input dtype.
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>

#include "../op_checks.h"
#include "cpu_ops.h"
#include "distance.h"

namespace vtreid::cpu {
namespace {

constexpr int64_t kRowGrain = 16;
constexpr int64_t kColBlock = 256;

template <typename acc_t>
void distance_epilogue(acc_t* prod, const acc_t* xsq, const acc_t* ysq, int64_t n, int64_t m,
                       Metric metric, acc_t tau) {
  at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t* row = prod + i * m;
      for (int64_t j = 0; j < m; ++j) row[j] = distance_from_dot(row[j], xsq[i], ysq[j], metric, tau);
    }
  });
}

// B (in place over a copy of grad) and the row coefficients a_i of grad_x = a * x - B @ y.
template <typename acc_t>
void backward_coefficients(acc_t* coef, const acc_t* dist, const acc_t* xsq, const acc_t* ysq,
                           int64_t n, int64_t m, Metric metric, acc_t* row_coef) {
  at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t* c = coef + i * m;
      const acc_t* d = dist + i * m;
      acc_t s = 0;
      if (metric == kCosine) {
        const acc_t norm_x = std::sqrt(xsq[i]);
        const acc_t inv_x = acc_t(1) / std::max(norm_x, acc_t(kCosineEps));
        for (int64_t j = 0; j < m; ++j) {
          const acc_t inv_y = acc_t(1) / std::max(std::sqrt(ysq[j]), acc_t(kCosineEps));
          s += c[j] * (acc_t(1) - d[j]);
          c[j] = c[j] * inv_x * inv_y;
        }
        row_coef[i] = norm_x > acc_t(kCosineEps) ? s * inv_x * inv_x : acc_t(0);
        continue;
      }
      const acc_t factor = metric == kSqEuclidean ? acc_t(2) : acc_t(1);
      for (int64_t j = 0; j < m; ++j) {
        const acc_t cij = d[j] != acc_t(0) ? (metric == kEuclidean ? c[j] / d[j] : factor * c[j]) : acc_t(0);
        c[j] = cij;
        s += cij;
      }
      row_coef[i] = s;
    }
  });
}

// Column coefficients b_j of grad_y = b * y - B^T @ x, in column blocks so the inner loop is contiguous.
template <typename acc_t>
void column_coefficients(const acc_t* grad, const acc_t* coef, const acc_t* dist, const acc_t* ysq,
                         int64_t n, int64_t m, Metric metric, acc_t* col_coef) {
  at::parallel_for(0, m, kColBlock, [&](int64_t begin, int64_t end) {
    std::fill(col_coef + begin, col_coef + end, acc_t(0));
    for (int64_t i = 0; i < n; ++i) {
      if (metric == kCosine) {
        for (int64_t j = begin; j < end; ++j) col_coef[j] += grad[i * m + j] * (acc_t(1) - dist[i * m + j]);
      } else {
        for (int64_t j = begin; j < end; ++j) col_coef[j] += coef[i * m + j];
      }
    }
    if (metric == kCosine) {
      for (int64_t j = begin; j < end; ++j) {
        const acc_t norm_y = std::sqrt(ysq[j]);
        col_coef[j] = norm_y > acc_t(kCosineEps) ? col_coef[j] / (norm_y * norm_y) : acc_t(0);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_distance_fwd(
    const at::Tensor& x, const at::Tensor& y, std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_pair_inputs(x, y);
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor ya = y.to(acc).contiguous();
  const int64_t n = xa.size(0), m = ya.size(0), d = xa.size(1);
  at::Tensor xsq = at::empty({n}, xa.options());
  at::Tensor ysq = at::empty({m}, ya.options());
  at::Tensor prod = at::mm(xa, ya.t()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "pairwise_distance_fwd_cpu", [&] {
    row_sq_norms(xa.const_data_ptr<scalar_t>(), n, d, xsq.mutable_data_ptr<scalar_t>());
    row_sq_norms(ya.const_data_ptr<scalar_t>(), m, d, ysq.mutable_data_ptr<scalar_t>());
    distance_epilogue(prod.mutable_data_ptr<scalar_t>(), xsq.const_data_ptr<scalar_t>(),
                      ysq.const_data_ptr<scalar_t>(), n, m, metric,
                      static_cast<scalar_t>(zero_tolerance(d)));
  });
  return {prod.to(x.scalar_type()), xsq, ysq};
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_bwd(
    const at::Tensor& grad, const at::Tensor& dist, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& xsq, const at::Tensor& ysq, std::string_view metric_name) {
  const Metric metric = parse_metric(metric_name);
  check_pairwise_bwd_inputs(grad, dist, x, y, xsq, ysq);
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor ya = y.to(acc).contiguous();
  const at::Tensor ga = grad.to(acc).contiguous();
  const at::Tensor da = dist.to(acc).contiguous();
  const at::Tensor xs = xsq.to(acc).contiguous();
  const at::Tensor ys = ysq.to(acc).contiguous();
  const int64_t n = xa.size(0), m = ya.size(0);
  TORCH_CHECK_VALUE(ga.size(0) == n && ga.size(1) == m, "grad must have shape [", n, ", ", m, "]");
  at::Tensor coef = ga.clone();
  at::Tensor row_coef = at::empty({n}, xa.options());
  at::Tensor col_coef = at::empty({m}, xa.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "pairwise_distance_bwd_cpu", [&] {
    backward_coefficients(coef.mutable_data_ptr<scalar_t>(), da.const_data_ptr<scalar_t>(),
                          xs.const_data_ptr<scalar_t>(), ys.const_data_ptr<scalar_t>(), n, m, metric,
                          row_coef.mutable_data_ptr<scalar_t>());
    column_coefficients(ga.const_data_ptr<scalar_t>(), coef.const_data_ptr<scalar_t>(),
                        da.const_data_ptr<scalar_t>(), ys.const_data_ptr<scalar_t>(), n, m, metric,
                        col_coef.mutable_data_ptr<scalar_t>());
  });
  // a * x - B @ y in one BLAS call (beta = 1 on the scaled copy, alpha = -1).
  at::Tensor grad_x = at::addmm(xa * row_coef.unsqueeze(1), coef, ya, 1, -1);
  at::Tensor grad_y = at::addmm(ya * col_coef.unsqueeze(1), coef.t(), xa, 1, -1);
  return {grad_x.to(x.scalar_type()), grad_y.to(y.scalar_type())};
}

}  // namespace vtreid::cpu
