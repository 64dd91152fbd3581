"""The public functional API of vtreid: fused loss-side ops with interchangeable backends.

    pairwise_distance(x, y=None, *, metric="euclidean", backend=None)
    hard_mining(anchors, anchor_labels, candidates=None, candidate_labels=None, *, metric="euclidean",
                anchor_modality=None, candidate_modality=None, positive="any", negative="any", backend=None)
    modality_centers(x, labels, modality, *, backend=None)
    hetero_center_loss(x, labels, modality, *, margin=0.0, metric="sqeuclidean", strong=False,
                       reduction="sum", backend=None)
    normalized_logits(x, weight, *, scale=1.0, backend=None)
    normalized_cross_entropy(x, weight, target, *, scale, label_smoothing=0.0, reduction="mean", backend=None)
    warmup(*, batch, dim, classes=None, galleries=(), device="cuda", dtype=torch.float32, backend=None)

``backend`` is "reference" (eager PyTorch), "triton" (kernels/) or "native" (the C++/CUDA extension);
None picks the fastest available for the input's device. ``use_backend(name)`` and the
``VTREID_BACKEND`` environment variable override the automatic choice. See DESIGN.md for the contract.
"""
from . import reference
from ._backend import BACKENDS, availability, use_backend
from .hard_mining import Mined, hard_mining
from .hetero_center import Centers, hetero_center_loss, modality_centers
from .normalized_softmax import normalized_cross_entropy, normalized_logits
from .pairwise_distance import pairwise_distance
from ._warmup import warmup

__all__ = ["BACKENDS", "Centers", "Mined", "hetero_center_loss", "modality_centers", "normalized_cross_entropy", "normalized_logits", "availability", "hard_mining", "pairwise_distance", "reference", "use_backend", "warmup"]
