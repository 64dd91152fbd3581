"""expAT with CSBN (Ye et al.; METHODS.md section 5).

    L = alpha (1/N) sum exp([cos(a_rgb, n_ir)]_+ - cos(a_rgb, p_ir) + xi)
      + beta  (1/N) sum exp([cos(a_ir, n_rgb)]_+ - cos(a_ir, p_rgb) + xi)  + CE_rgb + CE_ir   (eq. 10, 18)
on the CSBN feature (eq. 1, 14), xi = 1, alpha = beta = 1, label smoothing 0.1. One shared ResNet-50
(last stride 1), tuple batches (N = 8), Adam 3e-4, x0.1 at 10k and 20k, 30k iterations, 384 x 128,
random erasing 0.5, no flip (the paper names none). The paper's warm-up length is not given: 500 steps
from 1/3, as LCCRF's authors; weight decay 5e-4 as their code.
Variants: exp_of_mean (the authors' code), at (no exp), cosine_triplet, unidirectional (Table II: each
triplet within one modality), csbn_full, csbn_none, sysu_296 (train on SYSU-MM01's 296 training
identities only, as the paper).
"""
from __future__ import annotations

from vtreid.losses import Tuples, expat_loss
from vtreid.losses.angular import FORMS

from .base import Method, check_option
from .lccrf import tuple_id_loss, tuple_sampler


class ExpAT(Method):
    name = network = "expat"
    variants = {
        "exp_of_mean": {"loss": {"form": "exp_of_mean"}},
        "at": {"loss": {"form": "linear"}},
        "cosine_triplet": {"loss": {"form": "hinge"}},
        "unidirectional": {"loss": {"bidirectional": False}},
        "csbn_full": {"model": {"csbn": "full"}},
        "csbn_none": {"model": {"csbn": "none"}},
        "sysu_296": {"dataset": {"train_ids": "train"}},
    }

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        check_option(self.loss_cfg["form"], "loss.form", FORMS)

    def sampler(self, records, *, seed, rank=0, world_size=1):
        return tuple_sampler(self.cfg, records, seed, rank, world_size)

    def objective(self, model, batch):
        out = model(batch.visible, batch.infrared)
        c = self.loss_cfg
        return {"id": tuple_id_loss(out["logits"], batch.labels, c["label_smoothing"]),
                "expat": expat_loss(Tuples.split(out["feature"]), alpha=c["alpha"], beta=c["beta"], xi=c["xi"],
                                    form=c["form"], bidirectional=c["bidirectional"])}
