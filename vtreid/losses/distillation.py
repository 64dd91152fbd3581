"""LCCRF's cross-modality knowledge distillation (Zhang et al., eq. 5)."""
from __future__ import annotations

import torch

from ._common import accumulate, check_rows


def cmkd_loss(anchor_visible: torch.Tensor, positive_infrared: torch.Tensor, anchor_infrared: torch.Tensor,
              positive_visible: torch.Tensor) -> torch.Tensor:
    """L_CMKD = (1/N) sum_tuples ||V_a^rgb - V_p^ir||^2 + ||V_a^ir - V_p^rgb||^2       (eq. 5)

    on the outputs of the modality-specific stage (layer1 maps, [N, C, H, W], or any [N, ...]): squared
    Euclidean distance over all elements of a map, averaged over the N tuples, as the paper writes it.
    """
    check_rows({"anchor_visible": anchor_visible, "positive_infrared": positive_infrared,
                "anchor_infrared": anchor_infrared, "positive_visible": positive_visible})
    n = anchor_visible.shape[0]
    if n == 0:
        return anchor_visible.sum() * 0
    first = accumulate(anchor_visible - positive_infrared).reshape(n, -1).pow(2).sum(1)
    second = accumulate(anchor_infrared - positive_visible).reshape(n, -1).pow(2).sum(1)
    return (first + second).mean()
