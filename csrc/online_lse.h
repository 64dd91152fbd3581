// The per-row state of the normalized cross-entropy's online log-sum-exp over class chunks, and the
// forward's results, as raw pointers for the epilogues (csrc/normalized_ce_driver.h; CPU and CUDA). The
// first chunk (c0 == 0) starts the state without reading it, so the driver allocates it uninitialised;
// the last chunk (c0 + cc == classes) writes the results instead of the state:
//   lse = max + log(sum),  mean_z = E_p[z] = ez / sum,  tz = (1 - smoothing) z_target + smoothing / C z_total,
//   loss = lse - tz.
// Plain C++: included by the CPU build, nvcc and the CUDA emulation alike.
#pragma once

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
};

}  // namespace vtreid
