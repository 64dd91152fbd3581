// The vtreid operator library: schemas (torch.ops.vtreid.*) and their CPU kernels.
// CUDA kernels are registered in cuda_ops.cpp; fake kernels and autograd formulas in vtreid/ops/*.py.
#include <torch/extension.h>

#include "cpu/cpu_ops.h"

TORCH_LIBRARY(vtreid, m) {
  // dist [N, M] in x's dtype; xsq [N], ysq [M]: squared row norms in the accumulation dtype
  // (float64 for float64 inputs, else float32), saved for the backward.
  m.def("pairwise_distance_fwd(Tensor x, Tensor y, str metric) -> (Tensor dist, Tensor xsq, Tensor ysq)");
  m.def(
      "pairwise_distance_bwd(Tensor grad, Tensor dist, Tensor x, Tensor y, Tensor xsq, Tensor ysq, "
      "str metric) -> (Tensor grad_x, Tensor grad_y)");
}

TORCH_LIBRARY_IMPL(vtreid, CPU, m) {
  m.impl("pairwise_distance_fwd", &vtreid::cpu::pairwise_distance_fwd);
  m.impl("pairwise_distance_bwd", &vtreid::cpu::pairwise_distance_bwd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "vtreid native kernels; the ops are torch.ops.vtreid.*";
  module.def("with_cuda", [] {
#ifdef VTREID_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
