"""LCCRF's cross-modality knowledge distillation (Gao et al., eq. 5)."""
from __future__ import annotations

import torch

from vtreid.ops._checks import check_choice

from ._common import accumulate, check_rows

CMKD_REDUCTIONS = ("mean", "sum")


def cmkd_loss(anchor_visible: torch.Tensor, positive_infrared: torch.Tensor, anchor_infrared: torch.Tensor,
              positive_visible: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """L_CMKD = (1/N) sum_tuples ||V_a^rgb - V_p^ir||^2 + ||V_a^ir - V_p^rgb||^2       (eq. 5)

    on the outputs of the modality-specific stage (layer1 maps, [N, C, H, W], or any [N, ...]).
    reduction "sum": the squared distance summed over the elements of a map, averaged over the N tuples,
    as eq. 5 reads literally. "mean" (default, METHODS.md; the authors' code uses MSELoss): also averaged
    over the map's elements, i.e. the "sum" value divided by the elements per map; summed over the ~7e5
    elements of a 384 x 128 layer1 map, CMKD would swamp every other term.
    """
    check_choice(reduction, "reduction", CMKD_REDUCTIONS)
    check_rows({"anchor_visible": anchor_visible, "positive_infrared": positive_infrared,
                "anchor_infrared": anchor_infrared, "positive_visible": positive_visible})
    n = anchor_visible.shape[0]
    if n == 0:
        return anchor_visible.sum() * 0
    first = accumulate(anchor_visible - positive_infrared).reshape(n, -1).pow(2).sum(1)
    second = accumulate(anchor_infrared - positive_visible).reshape(n, -1).pow(2).sum(1)
    total = (first + second).mean()
    return total if reduction == "sum" else total / first.new_tensor(anchor_visible[0].numel())
