// Per-pair arithmetic shared by the CPU (g++) and CUDA (nvcc) kernels, written once: the distance of a
// pair from its dot product (vtreid/ops/reference.py), the gradient coefficients of a mined pair
// (kernels/hard_mining.py) and a class's Hetero-Center hinge.
#pragma once
#include <cmath>

#include "metric.h"

#ifdef __CUDACC__
#define VTREID_HD __host__ __device__ __forceinline__
#else
#define VTREID_HD inline
#endif

namespace vtreid {

// max(a, b) for a floor b (an eps, 0): a NaN a stays NaN, as torch's clamp_min (CUDA's fmax would drop it).
template <typename T>
VTREID_HD T hd_max(T a, T b) { return a < b ? b : a; }

template <typename T>
VTREID_HD T hd_sqrt(T v) {
#ifdef __CUDA_ARCH__
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}

template <typename T>
VTREID_HD bool hd_isfinite(T v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// 1 / max(|v|, eps) from |v|^2, as F.normalize divides; NaN stays NaN (clamp_min's rule).
template <typename acc_t>
VTREID_HD acc_t inverse_norm(acc_t sq) {
  const acc_t norm = hd_sqrt(sq);
  return acc_t(1) / (norm < acc_t(kCosineEps) ? acc_t(kCosineEps) : norm);
}

// Whether |v| > eps, i.e. the normalisation's own gradient term applies (it is 0 below eps).
template <typename acc_t>
VTREID_HD bool norm_above_eps(acc_t sq) { return hd_sqrt(sq) > acc_t(kCosineEps); }

// Only finite rounding noise is flushed to 0: NaN and inf distances (a diverged model) propagate.
template <typename acc_t>
VTREID_HD acc_t distance_from_dot(acc_t dot, acc_t xsq, acc_t ysq, int metric, acc_t tau) {
  if (metric == kCosine) {
    return acc_t(1) - dot / (hd_max(hd_sqrt(xsq), acc_t(kCosineEps)) * hd_max(hd_sqrt(ysq), acc_t(kCosineEps)));
  }
  const acc_t norms = xsq + ysq;
  acc_t d2 = norms - acc_t(2) * dot;
  d2 = (d2 <= tau * norms && hd_isfinite(norms)) ? acc_t(0) : d2;
  return metric == kEuclidean ? hd_sqrt(d2) : d2;
}

// The Hetero-Center hinge [D + V - margin]_+ of a class from its five scalars (||c_vis - c_ir||^2,
// c_vis.c_ir, |c_vis|^2, |c_ir|^2, ||v_vis - v_ir||^2; kernels/hetero_center.py). A class seen in one
// modality only is left out by a factor 0, as the reference's mask leaves it: a NaN stays NaN.
template <typename acc_t>
VTREID_HD acc_t class_hinge(const acc_t* stats, int64_t n_vis, int64_t n_ir, int metric, acc_t margin) {
  const acc_t dist = metric == kCosine ? distance_from_dot(stats[1], stats[2], stats[3], kCosine, acc_t(0)) : stats[0];
  const acc_t h = hd_max(dist + stats[4] - margin, acc_t(0));
  return (n_vis > 0 && n_ir > 0) ? h : h * acc_t(0);
}

// Whether candidate (v, i) beats the running best (best, best_i) of a hard-mining row; index -1 = none.
// Larger wins when `farthest`, else smaller; equal values keep the lower index. A NaN distance beats every
// number and the lower-index NaN wins (torch.argmax / argmin in the reference do the same), so a NaN
// feature shows in the mined distances instead of hiding behind a finite one.
template <typename acc_t>
VTREID_HD bool mining_beats(acc_t v, int64_t i, acc_t best, int64_t best_i, bool farthest) {
  if (i < 0) return false;
  if (best_i < 0) return true;
  const bool v_nan = v != v, best_nan = best != best;
  if (v_nan || best_nan) return v_nan && (!best_nan || i < best_i);
  return (farthest ? v > best : v < best) || (v == best && i < best_i);
}

// grad_a = alpha a + beta c, contribution to grad_c = gamma c + beta a, for upstream g on d(a, c).
template <typename acc_t>
struct PairCoefficients {
  acc_t alpha, beta, gamma;
};

template <typename acc_t>
VTREID_HD PairCoefficients<acc_t> pair_coefficients(acc_t g, acc_t d, int64_t idx, acc_t asq, acc_t csq,
                                                    int metric) {
  if (idx < 0) return {0, 0, 0};
  if (metric == kCosine) {
    const acc_t na = hd_sqrt(asq), nc = hd_sqrt(csq);
    const acc_t inv_a = acc_t(1) / hd_max(na, acc_t(kCosineEps));
    const acc_t inv_c = acc_t(1) / hd_max(nc, acc_t(kCosineEps));
    const acc_t cos = acc_t(1) - d;
    return {na > acc_t(kCosineEps) ? g * cos * inv_a * inv_a : acc_t(0), -g * inv_a * inv_c,
            nc > acc_t(kCosineEps) ? g * cos * inv_c * inv_c : acc_t(0)};
  }
  if (d == acc_t(0)) return {0, 0, 0};  // a flushed pair; a NaN d passes its NaN on, as the reference
  const acc_t k = metric == kEuclidean ? g / d : acc_t(2) * g;
  return {k, -k, k};
}

}  // namespace vtreid
