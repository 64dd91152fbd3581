"""LCCRF: enumerate angular triplet (EAT) + cross-modality knowledge distillation (Gao et al.;
METHODS.md section 4).

    L = L_EAT + C + L_CMKD + L_ID                                                   (eq. 17-20)
    L_EAT: eq. 15-16 over the tuples, on the BN feature; C: eq. 18 over the R = 6 part descriptors of
    the visible and infrared anchors (METHODS.md's reading; off with loss.compactness=false);
    L_CMKD: eq. 5 on the layer1 maps, the per-element mean by default ("sum" as eq. 5 reads, variant);
    L_ID = CE_rgb + CE_ir on the anchors, label smoothing 0.1 (eq. 20), on the BN feature.
Tuple batches (N = 8: 6N images), Adam 3e-4 with 500 warm-up steps from 1/3, x0.1 at 10k and 20k, 30k
steps, 384 x 128 with flip, 10-pixel pad + crop and random erasing 0.5. Weight decay 5e-4: the
authors' code (the paper does not say). The paper names only label smoothing and random erasing (section
4.3) and claims "no other data augment skills"; the input size, flip, pad + crop (METHODS.md) and last
stride 1 are AGW's, as the non-local blocks and GeM are. Variant "paper_augmentation": no flip, no pad.
"""
from __future__ import annotations

from vtreid.data import TupleSampler
from vtreid.losses import Tuples, cmkd_loss, compactness, eat_loss, identity_loss

from .base import Method, check_option


def tuple_id_loss(logits, labels, label_smoothing: float):
    """CE_rgb + CE_ir on the visible and infrared anchors of a tuple batch (expAT eq. 18, LCCRF eq. 20)."""
    t_logits, t_labels = Tuples.split(logits), Tuples.split(labels)
    return (identity_loss(t_logits.a_v, t_labels.a_v, label_smoothing=label_smoothing)
            + identity_loss(t_logits.a_i, t_labels.a_i, label_smoothing=label_smoothing))


def tuple_sampler(cfg, records, seed, rank, world_size):
    tuples = Method.per_rank(cfg["sampler"]["tuples"], "tuples", world_size)
    return TupleSampler(records, tuples, seed=seed, rank=rank, world_size=world_size)


class LCCRF(Method):
    name = network = "lccrf"
    variants = {
        "cmkd_sum": {"loss": {"cmkd": "sum"}},
        "no_compactness": {"loss": {"compactness": False}},
        "linear": {"loss": {"form": "linear"}},         # EAT before the exponential (eq. 8-14)
        "paper_augmentation": {"input": {"flip": False, "padding": 0}},   # random erasing only (section 4.3)
    }

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        check_option(self.loss_cfg["cmkd"], "loss.cmkd", ("mean", "sum"))
        check_option(self.loss_cfg["form"], "loss.form", ("exp", "linear"))

    def sampler(self, records, *, seed, rank=0, world_size=1):
        return tuple_sampler(self.cfg, records, seed, rank, world_size)

    def objective(self, model, batch):
        out = model(batch.visible, batch.infrared)
        c = self.loss_cfg
        terms = {"id": tuple_id_loss(out["logits"], batch.labels, c["label_smoothing"]),
                 "eat": eat_loss(Tuples.split(out["feature"]), form=c["form"], xi=c["xi"])}
        if c["compactness"]:
            parts = Tuples.split(out["parts"].transpose(0, 1))        # rows first: [6N, R, C]
            terms["compact"] = compactness(parts.a_v.transpose(0, 1)) + compactness(parts.a_i.transpose(0, 1))
        maps = Tuples.split(out["specific"])
        terms["cmkd"] = cmkd_loss(maps.a_v, maps.p_i, maps.a_i, maps.p_v, reduction=c["cmkd"])
        return terms
