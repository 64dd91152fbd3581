// The per-row state of the normalized cross-entropy's online log-sum-exp over class chunks, and the
// forward's results, as raw pointers for the epilogues (csrc/normalized_ce_driver.h; CPU and CUDA). The
// first chunk (c0 == 0) starts the state without reading it, so the driver allocates it uninitialised;
// the last chunk (c0 + cc == classes) writes the results instead of the state:
//   lse = max + log(sum),  mean_z = E_p[z] = ez / sum,  tz = (1 - smoothing) z_target + smoothing / C z_total,
//   loss = lse - tz.
// Plain C++: included by the CPU build, nvcc and the CUDA emulation alike.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define VTREID_HOST_DEVICE __host__ __device__
#else
#define VTREID_HOST_DEVICE
#endif

namespace vtreid {

template <typename acc_t>
struct LseRows {
  acc_t* run_max;   // state: the running maximum of z,
  acc_t* run_sum;   //   sum exp(z - run_max),
  acc_t* run_ez;    //   sum exp(z - run_max) z,
  acc_t* z_target;  //   the target's z,
  acc_t* z_total;   //   sum z
  acc_t* loss;      // results [n]
  acc_t* lse;
  acc_t* mean_z;
  acc_t* tz;

  // The running maximum of row i before chunk c0 (-inf before the first: the state is not read).
  VTREID_HOST_DEVICE acc_t max_before(int64_t i, bool first) const { return first ? acc_t(-INFINITY) : run_max[i]; }

  // Row i after one more chunk, given the chunk's maximum-shifted sums: sum = sum_j exp(z_j - new_max),
  // ez = sum_j exp(z_j - new_max) z_j, total = sum_j z_j, target_z = the target's z if in the chunk, else 0.
  VTREID_HOST_DEVICE void fold(int64_t i, bool first, bool last, acc_t old_max, acc_t new_max, acc_t sum, acc_t ez,
                               acc_t total, acc_t target_z, acc_t smoothing, int64_t classes) const {
    using std::exp;
    using std::log;
    const acc_t rescale = exp(old_max - new_max);
    const acc_t s = (first ? acc_t(0) : run_sum[i] * rescale) + sum;
    const acc_t e = (first ? acc_t(0) : run_ez[i] * rescale) + ez;
    const acc_t zt = (first ? acc_t(0) : z_target[i]) + target_z;
    const acc_t za = (first ? acc_t(0) : z_total[i]) + total;
    if (last) {
      const acc_t l = new_max + log(s);
      const acc_t t = zt * (acc_t(1) - smoothing) + za * (smoothing / static_cast<acc_t>(classes));
      lse[i] = l;
      tz[i] = t;
      loss[i] = l - t;
      mean_z[i] = e / s;
    } else {
      run_max[i] = new_max;
      run_sum[i] = s;
      run_ez[i] = e;
      z_target[i] = zt;
      z_total[i] = za;
    }
  }
};

}  // namespace vtreid
