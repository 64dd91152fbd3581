"""Identity losses: cross entropy (with label smoothing) and HSME's KL between paired predictions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vtreid.ops._checks import check_choice, check_flag, check_fraction, check_tensor, values_checked

from ._common import accumulate


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross entropy of [B, C] logits; [S, B, C] (TSLFN's per-stripe classifiers) gives the sum over
    the S stripes of each stripe's mean CE (Zhu et al.: stripe losses are summed).
    label_smoothing as F.cross_entropy (expAT / LCCRF: 0.1)."""
    check_tensor(logits, "logits")
    check_tensor(labels, "labels")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [B, C] or [S, B, C], got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[-2]:
        raise ValueError(f"labels must be a 1-D tensor of length {logits.shape[-2]}, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"labels is on {labels.device} but logits is on {logits.device}")
    classes = logits.shape[-1]
    if values_checked(labels) and labels.numel() and ((labels < 0) | (labels >= classes)).any():
        raise ValueError(f"labels must hold class indices in [0, {classes}) (logits have {classes} classes)")
    label_smoothing = check_fraction(label_smoothing, "label_smoothing")
    stripes = logits if logits.dim() == 3 else logits[None]
    s, b, c = stripes.shape
    per_sample = F.cross_entropy(stripes.reshape(s * b, c), labels.long().repeat(s), label_smoothing=label_smoothing,
                                 reduction="none")
    return per_sample.view(s, b).mean(1).sum()


def prediction_kl(target_logits: torch.Tensor, logits: torch.Tensor, *, detach_target: bool = True,
                  reduction: str = "mean") -> torch.Tensor:
    """KL(p_target || p) of paired rows, averaged over the pairs (HSME eq. 6; the paper sums over the
    batch, ``reduction="sum"``; the mean keeps the weight independent of batch size, as for the other HSME
    terms).

    HSME eq. 7-8: L_identity1 = L_sphere(visible) + KL(p2 || p1), L_identity2 = L_sphere(thermal) +
    KL(p1 || p2), p1 / p2 the class distributions of the paired visible / thermal images; call
    prediction_kl(thermal_logits, visible_logits) for the first. The paper trains each stream with its
    own optimiser, so the other stream's distribution is a fixed target there: detach_target=True gives
    that with a single optimiser (False lets the gradient reach both streams).
    """
    check_tensor(target_logits, "target_logits")
    check_tensor(logits, "logits")
    if target_logits.shape != logits.shape or logits.dim() != 2:
        raise ValueError(f"target_logits and logits must both be [B, C]; got {tuple(target_logits.shape)} and "
                         f"{tuple(logits.shape)}")
    target = target_logits.detach() if check_flag(detach_target, "detach_target") else target_logits
    log_p_target = F.log_softmax(accumulate(target), dim=1)
    log_p = F.log_softmax(accumulate(logits), dim=1)
    check_choice(reduction, "reduction", ("mean", "sum"))
    return F.kl_div(log_p, log_p_target, reduction="batchmean" if reduction == "mean" else "sum", log_target=True)
