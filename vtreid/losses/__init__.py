"""Loss building blocks of the five methods (METHODS.md), written on vtreid.ops.

    identity_loss(logits, labels, *, label_smoothing=0.0)            CE; [S, B, C] sums over stripes
    prediction_kl(target_logits, logits, *, detach_target=True)      HSME eq. 6-8
    reciprocal_ranking_loss(features, labels, modality, *, margin)   HSME eq. 10, 12 -> Ranking(intra, cross)
    Tuples.split(features)                                           the tuple sampler's 6N-row layout
    angular_triplet_loss(anchor, positive, negative, *, form, ...)   expAT / LCCRF eq. 6-7, 15-16
    expat_loss(tuples, *, alpha, beta, xi, form)                     expAT (bi-directional)
    eat_loss(tuples, *, form)                                        LCCRF eq. 15-17 (without C)
    compactness(parts)                                               LCCRF eq. 18
    cmkd_loss(a_v, p_i, a_i, p_v, *, reduction)                     LCCRF eq. 5

The Sphere loss and the Hetero-Center loss are ops themselves: vtreid.ops.normalized_cross_entropy and
vtreid.ops.hetero_center_loss. A method file composes these; none of them decides a method's weights.
"""
from .angular import Tuples, angular_triplet_loss, compactness, eat_loss, expat_loss
from .distillation import cmkd_loss
from .identity import identity_loss, prediction_kl
from .ranking import Ranking, reciprocal_ranking_loss

__all__ = ["Ranking", "Tuples", "angular_triplet_loss", "cmkd_loss", "compactness", "eat_loss", "expat_loss",
           "identity_loss", "prediction_kl", "reciprocal_ranking_loss"]
