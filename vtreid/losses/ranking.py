"""HSME's reciprocal ranking loss (Hao et al., AAAI 2019, eq. 10 and 12) on vtreid.ops.hard_mining."""
from __future__ import annotations

from typing import NamedTuple

import torch

from vtreid import ops
from vtreid.ops._checks import check_choice, check_real
from vtreid.ops.reference import REDUCTIONS


class Ranking(NamedTuple):
    intra: torch.Tensor   # eq. 10: cross-modality hard positive vs intra-modality hard negative
    cross: torch.Tensor   # eq. 12: cross-modality hard positive vs cross-modality hard negative

    @property
    def total(self) -> torch.Tensor:
        return self.intra + self.cross


def reciprocal_ranking_loss(features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, *,
                            margin: float = 0.5, metric: str = "euclidean", reduction: str = "mean",
                            backend: str | None = None) -> Ranking:
    """For every anchor (visible and thermal alike), with P = its farthest cross-modality positive:

        intra = [rho + d(a, P) - min_{y_k != y_a, same modality} d(a, k)]_+       (eq. 10)
        cross = [rho + d(a, P) - min_{y_k != y_a, other modality} d(a, k)]_+      (eq. 12)

    Eq. 9 and 11 are the constraints these hinges enforce. rho = margin = 0.5, d Euclidean on the (L2-normalised) features. The paper sums over anchors; the
    default here is the mean over the anchors that have a positive and a negative ("sum" as in the
    paper). One batch holds both modalities (modality 0 = visible, 1 = thermal).
    """
    margin = check_real(margin, "margin", at_least=0.0)
    check_choice(reduction, "reduction", REDUCTIONS)
    kw = dict(metric=metric, anchor_modality=modality, positive="cross",
              backend=backend)
    same = ops.hard_mining(features, labels, negative="same", **kw)
    other = ops.hard_mining(features, labels, negative="cross", **kw)
    terms = []
    for mined in (same, other):
        hinge = (margin + mined.pos_dist - mined.neg_dist).clamp_min(0)
        valid = mined.valid.to(hinge.dtype)
        total = (hinge * valid).sum()
        # the count stays on the device (no host sync); no valid anchor gives 0
        terms.append(total if reduction == "sum" else total / valid.sum().clamp_min(1))
    return Ranking(*terms)
