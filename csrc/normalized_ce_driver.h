// The native normalized cross-entropy (formulas in kernels/normalized_softmax.py), shared by the CPU
// and CUDA registrations. Classes are streamed in chunks of kClassChunk: each chunk's x.W^T comes
// from one GEMM (BLAS / cuBLAS) into a reused [N, chunk] buffer, and the device's epilogue folds it
// into per-row online log-sum-exp state (forward) or turns it into G q, the GEMM operand made from it and
// the column coefficients (backward). No normalised copy of W and never the N x C logits when C exceeds
// a chunk. When the classes fit in one chunk (C <= kClassChunk, every re-ID training set), the forward
// hands its x.W^T buffer to the backward as `dots` instead of freeing it, so the backward skips that
// GEMM; eager autograd keeps its N x C logits too, so this costs no memory over eager. Otherwise `dots`
// is empty ([0]).
//
// Epilogue must provide, for acc_t in {float, double} (raw contiguous pointers on the tensors' device):
//   merge(dots, n, cc, c0, classes, inv_x, inv_w, target, scale, smoothing, LseRows rows)
//     (the first chunk starts the state, the last writes loss, lse, E_p[z] and the target term)
// and, on tensors (acc: the accumulation dtype), the row passes around the GEMMs, one launch each:
//   row_norms(src [r, D] any float dtype and strides, sq [r] acc, inv [r] acc)
//     sq = sum_k src_k^2 in acc, inv = 1 / max(sqrt(sq), eps)
//   unit_rows(sq [r] acc, inv [r] acc, x [r, D] contiguous or undefined, unit [r, D] or undefined)
//     inv = 1 / max(sqrt(sq), eps); unit = x inv rounded to unit's dtype, when x is defined
//   grad_x(gx [n, D] acc, x [n, D] contiguous, sq, inv, g, ez, tz [n] acc, scale, out [n, D] in x's dtype)
//     out = scale inv gx - [sqrt(sq) > eps] inv^2 g (ez - tz) x
// and, on contiguous tensors of the chunk:
//   grad(dots [n, cc] acc, c0, classes, inv_x [n], inv_w [cc], wsq [cc], target, lse, grad_row, scale,
//        smoothing, gq, operand, coef)
//     gq [n, cc] acc = g (p - t) q, or undefined when no GEMM needs it; operand: undefined, G q in fp16
//     [n, cc], or G q as bf16 hi + lo [2n, cc] (hi rows, then lo rows; lo = 0 where hi is infinite);
//     coef [cc] acc = [|w_c| > eps] q_c^2 sum_i G_ic z_ic
//   weight_grad(dir [cc, D] acc, w [cc, D], coef [cc], scale, out [cc, D] in w's dtype)
//     out = scale dir - coef w
#pragma once
#include <torch/types.h>

#include <limits>
#include <tuple>

#include "online_lse.h"
#include "op_checks.h"

namespace vtreid {

constexpr int64_t kClassChunk = 8192;

// loss, lse, E_p[z], target term, |x|^2, |w|^2, dots (x.W^T in the accumulation dtype, or empty)
using NormalizedCeForward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The GEMMs read fp16/bf16 operands in their dtype on CUDA: cuBLAS runs them on tensor cores with
// float32 accumulation and output (aten::mm.dtype), so W is never copied to float32. Elsewhere (CPU
// BLAS has no such GEMM) an operand is widened once, gemm_operand, which multiplies the same half
// values exactly and sums them in float32: one numeric design on every device, so the CPU tests check
// the precision of the CUDA path.
inline bool half_gemm(const at::Tensor& t) {
  return t.is_cuda() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

inline at::Tensor gemm_operand(const at::Tensor& t, at::ScalarType acc) { return half_gemm(t) ? t : t.to(acc); }

inline bool half_pair(const at::Tensor& a, const at::Tensor& b) {
  return half_gemm(a) && a.scalar_type() == b.scalar_type();
}

// a @ b in the accumulation dtype `acc`, from operands made by gemm_operand (or in the input dtype).
inline at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) {
  return half_pair(a, b) ? at::mm(a, b, acc) : at::mm(a.to(acc), b.to(acc));
}

// (hi + lo) @ b for hilo = [hi; lo], two bf16 terms of G q stacked by rows ([2n, k]), and b from
// gemm_operand (bf16 on CUDA, else float32). On CUDA one bf16 GEMM with float32 output reads b once for
// both terms, and the two halves of its [2n, D] result are added; elsewhere hi + lo is formed in float32
// and multiplied once (the same values, summed in another order).
inline at::Tensor split_rows_mm(const at::Tensor& hilo, const at::Tensor& b, at::ScalarType acc) {
  const int64_t n = hilo.size(0) / 2;
  if (half_pair(hilo, b)) {
    at::Tensor both = at::mm(hilo, b, acc);
    return both.narrow(0, 0, n).add_(both.narrow(0, n, n));
  }
  const at::Tensor terms = hilo.to(acc);
  return mm_acc(terms.narrow(0, 0, n) + terms.narrow(0, n, n), b, acc);  // b may be another dtype
}

template <class Epilogue>
NormalizedCeForward normalized_ce_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target, double scale, double smoothing) {
  check_features(x, "x");
  check_features(weight, "weight");
  check_device(weight, "weight", x, "x");
  check_same_dtype(weight, "weight", x, "x");
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "x and weight must have the same feature dimension");
  check_real(scale, "scale", std::nullopt, std::nullopt, /*positive=*/true);
  check_real(smoothing, "label_smoothing", 0.0, 1.0);
  TORCH_CHECK_VALUE(weight.size(0) > 0, "weight must have at least one class row");
  check_index(target, "target", x, "x", {x.size(0)});
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor x_gemm = gemm_operand(x, acc).contiguous();
  const at::Tensor tg = target.to(at::kLong).contiguous();
  const int64_t n = x.size(0), classes = weight.size(0);
  const auto acc_options = x.options().dtype(acc);
  // One pass per matrix for |row|^2 and 1 / |row| (about 10 elementwise launches before), reading W in
  // its own dtype and strides: no upcast or contiguous copy of W (C x D at C = 100000).
  const at::Tensor xsq = at::empty({n}, acc_options), inv_x = at::empty({n}, acc_options);
  const at::Tensor wsq = at::empty({classes}, acc_options), inv_w = at::empty({classes}, acc_options);
  Epilogue::row_norms(x_gemm, xsq, inv_x);
  Epilogue::row_norms(weight, wsq, inv_w);
  // The chunks' state and the results: written by the merges, never filled (csrc/online_lse.h).
  const at::Tensor state = at::empty({5, n}, acc_options);
  const at::Tensor loss = at::empty({n}, acc_options), lse = at::empty({n}, acc_options);
  const at::Tensor mean_z = at::empty({n}, acc_options), tz = at::empty({n}, acc_options);
  const bool keep_dots = classes <= kClassChunk;  // one chunk: its x.W^T goes to the backward
  at::Tensor saved = keep_dots ? at::empty({n, classes}, acc_options) : at::empty({0}, acc_options);
  for (int64_t c0 = 0; c0 < classes && n > 0; c0 += kClassChunk) {
    const int64_t cc = std::min(kClassChunk, classes - c0);
    at::Tensor dots = mm_acc(x_gemm, weight.narrow(0, c0, cc).t(), acc).contiguous();
    if (keep_dots) saved = dots;
    AT_DISPATCH_FLOATING_TYPES(acc, "normalized_ce_merge", [&] {
      scalar_t* st = state.mutable_data_ptr<scalar_t>();
      const LseRows<scalar_t> rows{st, st + n, st + 2 * n, st + 3 * n, st + 4 * n, loss.mutable_data_ptr<scalar_t>(),
                                   lse.mutable_data_ptr<scalar_t>(), mean_z.mutable_data_ptr<scalar_t>(),
                                   tz.mutable_data_ptr<scalar_t>()};
      Epilogue::template merge<scalar_t>(
          dots.const_data_ptr<scalar_t>(), n, cc, c0, classes, inv_x.const_data_ptr<scalar_t>(),
          inv_w.const_data_ptr<scalar_t>() + c0, tg.const_data_ptr<int64_t>(), static_cast<scalar_t>(scale),
          static_cast<scalar_t>(smoothing), rows);
    });
  }
  return {loss, lse, mean_z, tz, xsq, wsq, saved};
}

template <class Epilogue>
std::tuple<at::Tensor, at::Tensor> normalized_ce_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& target,
    const at::Tensor& lse, const at::Tensor& ez, const at::Tensor& tz, const at::Tensor& xsq, const at::Tensor& wsq,
    const at::Tensor& saved_dots, double scale, double smoothing) {
  check_features(x, "x");
  check_features(weight, "weight");
  check_device(weight, "weight", x, "x");
  check_same_dtype(weight, "weight", x, "x");
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "x and weight must have the same feature dimension");
  check_real(scale, "scale", std::nullopt, std::nullopt, /*positive=*/true);
  check_real(smoothing, "label_smoothing", 0.0, 1.0);
  {
    const int64_t rows = x.size(0);
    check_aux(grad, "grad", x, "x", {rows});
    check_index(target, "target", x, "x", {rows});
    check_aux(lse, "lse", x, "x", {rows});
    check_aux(ez, "ez", x, "x", {rows});
    check_aux(tz, "tz", x, "x", {rows});
    check_aux(xsq, "xsq", x, "x", {rows});
    check_aux(wsq, "wsq", x, "x", {weight.size(0)});
    check_device(saved_dots, "dots", x, "x");
  }
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xc = x.contiguous();
  const at::Tensor tg = target.to(at::kLong).contiguous();
  const at::Tensor g = grad.to(acc).contiguous(), ls = lse.to(acc).contiguous();
  const at::Tensor xs = xsq.to(acc).contiguous(), ws = wsq.to(acc).contiguous();
  const int64_t n = x.size(0), classes = weight.size(0), dim = x.size(1);
  const auto acc_options = x.options().dtype(acc);
  TORCH_CHECK_VALUE(classes > 0, "weight must have at least one class row");
  const bool have_dots = saved_dots.dim() == 2;
  TORCH_CHECK_VALUE(!have_dots || (saved_dots.size(0) == n && saved_dots.size(1) == classes && classes <= kClassChunk),
                    "normalized_ce_bwd: dots must be [N, C] with C <= ", kClassChunk, " or empty");
  // The two gradient GEMMs take G q and x / |x| in fp16 for fp16 inputs, as eager autograd of a half
  // linear layer takes its logit gradient. bf16's 8-bit mantissa in G q moved the bias gradient below
  // the head by up to 7.6% of its largest entry under autocast (tests/methods/test_methods.py, Sphere);
  // fp16's 11 bits stay within tolerance. So for bf16, G q W takes G q as two bf16 terms, hi + lo (16
  // significant bits), stacked into one operand, and W is read in bf16 (on CUDA: one tensor-core GEMM,
  // no float32 copy of W); G q^T x_unit stays float32 (N x D, no W in it). The epilogue writes G q's
  // operand itself, so no conversion kernels run per chunk.
  const bool fp16 = x.scalar_type() == at::kHalf, bf16 = x.scalar_type() == at::kBFloat16;
  const at::Tensor inv_x = at::empty({n}, acc_options), inv_w = at::empty({classes}, acc_options);
  const at::Tensor unit = at::empty({n, dim}, x.options().dtype(fp16 ? at::kHalf : acc));
  Epilogue::unit_rows(xs, inv_x, xc, unit);
  Epilogue::unit_rows(ws, inv_w, at::Tensor(), at::Tensor());
  const at::Tensor x_unit = gemm_operand(unit, acc);
  const bool one_chunk = classes <= kClassChunk;
  // x as the x.W^T GEMM's operand, only when the forward's dots were not kept
  const at::Tensor x_gemm = have_dots ? at::Tensor() : gemm_operand(xc, acc).contiguous();
  at::Tensor grad_x = one_chunk ? at::Tensor() : at::zeros({n, dim}, acc_options);
  // Written chunk by chunk in W's dtype by weight_grad: no float32 C x D buffer and no final conversion.
  at::Tensor grad_w = at::empty({classes, dim}, weight.options());
  for (int64_t c0 = 0; c0 < classes; c0 += kClassChunk) {
    const int64_t cc = std::min(kClassChunk, classes - c0);
    const at::Tensor w_chunk = weight.narrow(0, c0, cc).contiguous();  // a copy only of a strided W's chunk
    const at::Tensor wc = gemm_operand(w_chunk, acc);  // a float32 chunk only off CUDA
    const at::Tensor dots = have_dots ? saved_dots.to(acc).contiguous() : mm_acc(x_gemm, wc.t(), acc).contiguous();
    const at::Tensor gq = fp16 ? at::Tensor() : at::empty({n, cc}, acc_options);
    const at::Tensor operand = fp16 ? at::empty({n, cc}, x.options().dtype(at::kHalf))
                               : bf16 ? at::empty({2 * n, cc}, x.options().dtype(at::kBFloat16))
                                      : at::Tensor();
    const at::Tensor coef = at::empty({cc}, acc_options);
    Epilogue::grad(dots, c0, classes, inv_x, inv_w.narrow(0, c0, cc), ws.narrow(0, c0, cc), tg, ls, g, scale,
                   smoothing, gq, operand, coef);
    // grad_w_c = s sum_i Gq_ic x_unit_i - [|w_c| > eps] q_c^2 (sum_i G_ic z_ic) w_c
    const at::Tensor gq_gemm = gemm_operand(fp16 ? operand : gq, acc);
    Epilogue::weight_grad(mm_acc(gq_gemm.t(), x_unit, acc), w_chunk, coef, scale, grad_w.narrow(0, c0, cc));
    const at::Tensor gx = bf16 ? split_rows_mm(gemm_operand(operand, acc), wc, acc) : mm_acc(gq_gemm, wc, acc);
    if (one_chunk) {
      grad_x = gx;  // no zero-filled accumulator when there is one chunk
    } else {
      grad_x.add_(gx);
    }
  }
  // grad_x_i = s r_i sum_c Gq_ic w_c - [|x_i| > eps] r_i^2 g_i (E_p[z]_i - T_i) x_i, in x's dtype: one
  // launch (eight elementwise ones and a conversion before)
  const at::Tensor out = at::empty({n, dim}, x.options());
  Epilogue::grad_x(grad_x.contiguous(), xc, xs, inv_x, g, ez.to(acc).contiguous(), tz.to(acc).contiguous(), scale,
                   out);
  return {out, grad_w};
}

}  // namespace vtreid
