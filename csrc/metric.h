// Metric codes and constants shared by the CPU and CUDA kernels (no torch headers: nvcc includes it).
#pragma once
#include <cmath>
#include <cstdint>

namespace vtreid {

enum Metric : int { kEuclidean = 0, kSqEuclidean = 1, kCosine = 2 };

// Row norms are clamped to at least this before dividing, as F.normalize does.
constexpr double kCosineEps = 1e-12;

// Squared distances at or below zero_tolerance(D) * (|x|^2 + |y|^2) are flushed to 0 so that identical
// rows are exactly 0 apart; see vtreid/ops/reference.py:zero_tolerance for the derivation.
inline double zero_tolerance(int64_t dim) { return std::ldexp(std::sqrt(static_cast<double>(dim)), -20); }

}  // namespace vtreid
