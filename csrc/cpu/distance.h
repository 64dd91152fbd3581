// Row-norm helpers of the CPU kernels; the per-pair formulas are in ../pair_math.h.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../metric.h"
#include "../pair_math.h"

namespace vtreid::cpu {

// Sum of squares with kLanes independent partial sums: one running sum is a serial chain of
// dependent adds that the compiler may not reassociate (and so cannot vectorise).
template <typename acc_t>
acc_t sum_of_squares(const acc_t* row, int64_t dim) {
  constexpr int kLanes = 16;
  acc_t part[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= dim; k += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) part[l] += row[k + l] * row[k + l];
  }
  acc_t s = 0;
  for (; k < dim; ++k) s += row[k] * row[k];
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

template <typename acc_t>
void row_sq_norms(const acc_t* data, int64_t rows, int64_t dim, acc_t* out) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = sum_of_squares(data + i * dim, dim);
  });
}

}  // namespace vtreid::cpu
