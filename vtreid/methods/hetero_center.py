"""Hetero-Center loss with TSLFN (Zhu et al.; METHODS.md section 3).

Per stripe p of P = 6, on the L2-normalised stripe features (section III-C; the op does not normalise):
    L_p = CE_p + lambda L_HC,p,   L_HC = sum_{classes i in batch} || c_{i,vis} - c_{i,ir} ||^2   (eq. 2, 8)
the stripes summed; lambda = 0.5 (1.0 for the p = 1 baseline, ``hc_baseline``). CE is the batch mean (the
authors' code, whose lambda is kept). Batches: 4 identities x (8 visible + 8 infrared). SGD momentum
0.9, lr 1e-2 for 30 epochs then 1e-4, 60 epochs; an epoch shows about as many images as the visible
training set holds (the authors' sampler), not one pass over the identities. The paper does not give the
10-pixel padding before its random crop, the 60 epochs in all, weight decay 5e-4 or the LeakyReLU slope 0.1:
chosen here (the preset says so).
Variants: margin, cosine centre distance, the strong constraint (section V-E), the authors' head and
optimiser.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vtreid import ops
from vtreid.data import VISIBLE, IdentityBalancedSampler
from vtreid.losses import identity_loss

from .base import Method, check_option


class HeteroCenter(Method):
    name, network = "hc", "hc"
    variants = {
        "margin": {"loss": {"margin": 0.1}},
        "cosine": {"loss": {"metric": "cosine"}},
        "strong": {"loss": {"strong": True}},
        "authors_head": {"model": {"authors_head": True}},
        # the authors' train.py: 0.01 head / 0.001 backbone, x0.1 at epochs 30 and 60, Nesterov; its loop
        # runs epochs 0..60, so 61 epochs, the last at 1e-4. (It decays only its first three parameter
        # groups, the backbone and stripes 1-2; stripes 3-6 and the classifiers stay at 0.01. Not copied.)
        "authors_optim": {"optim": {"backbone_lr_mult": 0.1, "nesterov": True},
                          "schedule": {"unit": "epoch", "milestones": [30, 60], "gamma": 0.1},
                          "train": {"length": 61}},
    }

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        check_option(self.loss_cfg["metric"], "loss.metric", ("sqeuclidean", "cosine"))

    def sampler(self, records, *, seed, rank=0, world_size=1):
        s = self.cfg["sampler"]
        return IdentityBalancedSampler(records, self.per_rank(s["identities"], "identities", world_size),
                                       s["per_modality"], seed=seed, rank=rank, world_size=world_size)

    def steps_per_epoch(self, records, sampler):
        visible = sum(r.modality == VISIBLE for r in records)
        per_batch = sampler.group * sampler.per_modality * sampler.world_size
        return max(1, math.ceil(visible / per_batch))

    def objective(self, model, batch):
        out = model(batch.visible, batch.infrared)
        stripes, labels, modality = self.global_rows(F.normalize(out["stripes"], dim=-1).transpose(0, 1),
                                                     batch.labels, batch.modality)
        stripes = stripes.transpose(0, 1)                               # [P, B, E], every rank's rows
        parts = stripes.shape[0]
        # one fused call for all stripes: stripe p's classes are labels + p * C
        labels = (labels[None] + self.num_classes * torch.arange(parts, device=stripes.device)[:, None]).flatten()
        hc = ops.hetero_center_loss(stripes.flatten(0, 1), labels, modality.repeat(parts),
                                    margin=self.loss_cfg["margin"], metric=self.loss_cfg["metric"],
                                    strong=self.loss_cfg["strong"], reduction="sum")
        return {"id": identity_loss(out["logits"], batch.labels),
                "hc": self.loss_cfg["weight"] * self.global_rows_sum(hc)}


class HeteroCenterBaseline(HeteroCenter):
    """The p = 1 baseline: one stripe (global pooling), lambda = 1."""
    name = "hc_baseline"
