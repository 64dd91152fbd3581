"""Angular triplet losses over sampled tuples: expAT (Ye et al.) and LCCRF's EAT (Gao et al.).

Both train on the tuple sampler's batches (vtreid.data.samplers.TupleSampler): per identity a visible
anchor a_v with an infrared positive p_i and negative n_i, and an infrared anchor a_i with a visible
positive p_v and negative n_v. Distances are angular (cosine of the raw features, norms clamped at 1e-12
as F.normalize does); a tuple loss needs only row-aligned pairs, O(N D), so no fused op is involved.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vtreid.ops._checks import check_choice, check_flag, check_real

from ._common import accumulate, check_rows

FORMS = ("exp", "exp_of_mean", "linear", "hinge")


class Tuples(NamedTuple):
    """Features of N tuples, [N, ...] each: visible anchor, its infrared positive / negative, and
    infrared anchor, its visible positive / negative."""
    a_v: torch.Tensor
    p_v: torch.Tensor   # the infrared anchor's (visible) positive
    n_v: torch.Tensor
    a_i: torch.Tensor
    p_i: torch.Tensor   # the visible anchor's (infrared) positive
    n_i: torch.Tensor

    @classmethod
    def split(cls, x: torch.Tensor) -> "Tuples":
        """Rows of x in TupleSampler order: a_v, p_v, n_v, a_i, p_i, n_i, N rows each."""
        if x.dim() < 1 or x.shape[0] % 6:
            raise ValueError(f"x must have 6N rows (TupleSampler order a_v, p_v, n_v, a_i, p_i, n_i), got shape "
                             f"{tuple(x.shape)}")
        return cls(*x.chunk(6) if x.shape[0] else (x,) * 6)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(accumulate(a).flatten(1), dim=1) * F.normalize(accumulate(b).flatten(1), dim=1)).sum(1)


def angular_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *,
                         form: str = "exp", xi: float = 1.0, clamp_positive: bool = False) -> torch.Tensor:
    """One direction of an angular triplet loss over N row-aligned triplets, with
    t = [cos(a, n)]_+ - P + xi and P = [cos(a, p)]_+ if clamp_positive else cos(a, p):

        "exp"          (1/N) sum exp(t)          expAT eq. 10; LCCRF eq. 15-16 (clamp_positive)
        "exp_of_mean"  exp((1/N) sum t)          the expAT authors' code
        "linear"       (1/N) sum t               AT: expAT eq. 8-9; LCCRF eq. 7-11 (clamp_positive)
        "hinge"        (1/N) sum [cos(a, n) - cos(a, p) + xi]_+   cosine triplet: expAT eq. 7, LCCRF eq. 6
    xi = 1 in both papers. An empty batch gives 0.
    """
    check_choice(form, "form", FORMS)
    xi = check_real(xi, "xi")
    clamp_positive = check_flag(clamp_positive, "clamp_positive")
    check_rows({"anchor": anchor, "positive": positive, "negative": negative})
    if anchor.dim() < 2:
        raise ValueError(f"anchor must hold rows ([N, D]), got shape {tuple(anchor.shape)}")
    if anchor.shape[0] == 0:
        return accumulate(anchor).sum() * 0
    cos_p, cos_n = _cos(anchor, positive), _cos(anchor, negative)
    if form == "hinge":
        return (cos_n - cos_p + xi).clamp_min(0).mean()
    t = cos_n.clamp_min(0) - (cos_p.clamp_min(0) if clamp_positive else cos_p) + xi
    if form == "exp":
        return t.exp().mean()
    if form == "exp_of_mean":
        return t.mean().exp()
    return t.mean()


def expat_loss(t: Tuples, *, alpha: float = 1.0, beta: float = 1.0, xi: float = 1.0, form: str = "exp",
               bidirectional: bool = True) -> torch.Tensor:
    """expAT (Ye et al., eq. 10):  alpha (1/N) sum exp([cos(a_v, n_i)]_+ - cos(a_v, p_i) + xi)
                         + beta  (1/N) sum exp([cos(a_i, n_v)]_+ - cos(a_i, p_v) + xi),
    alpha = beta = xi = 1. Variants: form "exp_of_mean" (authors' code), "linear" (AT), "hinge" (cosine
    triplet); bidirectional=False is the paper's uni-directional ablation (section IV-C-4, Table II: "the
    anchor, positive and negative terms in a triplet are all from the same modality"): the same two terms
    on (a_v, p_v, n_v) and (a_i, p_i, n_i), each tuple's same-modality positive and negative.
    """
    alpha, beta = check_real(alpha, "alpha"), check_real(beta, "beta")
    bidirectional = check_flag(bidirectional, "bidirectional")
    if bidirectional:
        first, second = (t.a_v, t.p_i, t.n_i), (t.a_i, t.p_v, t.n_v)
    else:
        first, second = (t.a_v, t.p_v, t.n_v), (t.a_i, t.p_i, t.n_i)
    return (alpha * angular_triplet_loss(*first, form=form, xi=xi)
            + beta * angular_triplet_loss(*second, form=form, xi=xi))


def eat_loss(t: Tuples, *, form: str = "exp", xi: float = 1.0) -> torch.Tensor:
    """LCCRF's enumerate angular triplet loss without the compactness term (eq. 15-17):

        L_EATrgb = (1/N) sum e^([cos(a_v, n_i)]_+ - [cos(a_v, p_i)]_+ + 1)
                 + (1/N) sum e^([cos(a_v, n_v)]_+ - [cos(a_v, p_i)]_+ + 1)         (eq. 15)
        L_EATir  = (1/N) sum e^([cos(a_i, n_v)]_+ - [cos(a_i, p_v)]_+ + 1)
                 + (1/N) sum e^([cos(a_i, n_i)]_+ - [cos(a_i, p_v)]_+ + 1)         (eq. 16)
        L_EAT = L_EATrgb + L_EATir (eq. 17); eq. 19 adds compactness(...) of both modalities.
    form="linear" is the version before the exponential (eq. 8-14). xi: the "+ 1" of eq. 15-16, a
    parameter (METHODS.md: section 4.3 mentions a triplet margin 0.3 for the baseline).
    """
    check_choice(form, "form", ("exp", "linear"))
    kw = dict(form=form, xi=xi, clamp_positive=True)
    return (angular_triplet_loss(t.a_v, t.p_i, t.n_i, **kw) + angular_triplet_loss(t.a_v, t.p_i, t.n_v, **kw)
            + angular_triplet_loss(t.a_i, t.p_v, t.n_v, **kw) + angular_triplet_loss(t.a_i, t.p_v, t.n_i, **kw))


def compactness(parts: torch.Tensor) -> torch.Tensor:
    """LCCRF eq. 18 for one modality: sum_r exp(cos(f_r(a), fbar(a))), averaged over the anchors.

    parts [R, N, D]: the R part descriptors of N anchors (LCCRFNet's "parts"); fbar = their mean over r.
    The paper leaves f_r underdetermined and sums over anchors; METHODS.md's choice (horizontal part
    descriptors, mean over anchors) is taken here. Add the two modalities' terms to eat_loss for eq. 19.
    """
    if not isinstance(parts, torch.Tensor) or parts.dim() != 3 or not parts.is_floating_point():
        raise ValueError(f"parts must be a float [R, N, D] tensor, got "
                         f"{tuple(parts.shape) if isinstance(parts, torch.Tensor) else type(parts).__name__}")
    if parts.shape[1] == 0:
        return accumulate(parts).sum() * 0
    p = accumulate(parts)
    mean = p.mean(0, keepdim=True).expand_as(p)
    cos = (F.normalize(p, dim=2) * F.normalize(mean, dim=2)).sum(2)  # [R, N]
    return cos.exp().sum(0).mean()
