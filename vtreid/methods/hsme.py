"""HSME and D-HSME (Hao et al., AAAI 2019; METHODS.md section 2).

With p1 / p2 the class distributions of the paired visible / thermal images (Sphere softmax, s = 5):
    L_id1 = L_sphere(visible) + KL(p2 || p1),  L_id2 = L_sphere(thermal) + KL(p1 || p2)      (eq. 7-8)
    L_intra, L_cross: reciprocal ranking with the hardest cross-modality positive, rho = 0.5 (eq. 10, 12)
    default objective: L_id1 + L_id2 + L_intra + L_cross, one optimiser, each ranking term once
    (eq. 13-14 minimised by one optimiser; the KL targets are detached, so each stream's own parameters
    get the gradient its own optimiser would give them; the shared layers get the ranking terms once,
    where the paper's two optimisers step them on both, so twice). Variant "per_stream": the paper's two
    momentum optimisers, one minimising L_visible = L_id1 + L_intra + L_cross over the visible stream and
    the shared layers, one L_thermal over the thermal stream and the shared layers.
Reduction: the paper sums the ranking hinges (eq. 10, 12) and the KL (eq. 6) over the batch; the default
averages them (METHODS.md), variant "sum" sums. With the optimiser settings chosen here (the paper gives
none) the sums collapse the embedding: on the synthetic preset (32 pairs, lr 0.01) the hinges stay at rho
and the identity loss at chance for 180 steps, where the mean takes R1 from 4.3% to 10.4% in 300 steps.
D-HSME: stage 1 is HSME; then W (m x n) = U S V^T, W <- U S, frozen (eq. 15); stage 2 trains as many
steps again with a fresh optimiser that does not hold W, and the schedule restarts (lr 0.01, x0.1 at 70%
of the stage; the paper says only "train the network again till convergence"). m < n is an error.
Settings the paper does not give (METHODS.md): SGD momentum 0.9, lr 0.01, weight decay 5e-4, lr x0.1
at 70% of the steps; 288 x 144 input, random crop after 10-pixel padding.
"""
from __future__ import annotations

from vtreid import ops
from vtreid.data import PairSampler
from vtreid.losses import identity_loss, prediction_kl, reciprocal_ranking_loss
from vtreid.training.config import ConfigError

from .base import Method, check_option, unwrap


class HSME(Method):
    name = network = "hsme"
    variants = {
        "per_stream": {"optim": {"per_stream": True}},
        "sum": {"loss": {"reduction": "sum"}},   # the paper's sums over the batch: ranking (eq. 10, 12), KL (eq. 6)
        "kl_both_ways": {"loss": {"detach_kl_target": False}},
    }
    backbone_prefixes = ("streams.", "resnet.")

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        check_option(self.loss_cfg["reduction"], "loss.reduction", ("mean", "sum"))

    def sampler(self, records, *, seed, rank=0, world_size=1):
        pairs = self.per_rank(self.cfg["sampler"]["pairs"], "pairs", world_size)
        return PairSampler(records, pairs, seed=seed, rank=rank, world_size=world_size)

    def objective(self, model, batch):
        b = batch.num_visible
        if len(batch) != 2 * b:
            raise ValueError(f"HSME needs visible-thermal pairs: got {b} visible and {len(batch) - b} thermal rows")
        embedding = model(batch.visible, batch.infrared)["embedding"]
        classifier = unwrap(model).classifier
        logits = ops.normalized_logits(embedding, classifier.weight, scale=classifier.scale)
        detach, reduction = self.loss_cfg["detach_kl_target"], self.loss_cfg["reduction"]
        ranking = reciprocal_ranking_loss(*self.global_rows(embedding, batch.labels, batch.modality),
                                          margin=self.loss_cfg["margin"], reduction=reduction)
        # sums are scaled to the global batch's: the KL terms read this rank's pairs only (rank_sum), the
        # ranking terms every rank's unless train.global_mining=false (global_rows_sum)
        summed = reduction == "sum"
        global_sum = self.rank_sum if summed else (lambda term: term)
        ranking_sum = self.global_rows_sum if summed else (lambda term: term)
        return {
            "id_visible": identity_loss(logits[:b], batch.labels[:b]),
            "kl_visible": global_sum(prediction_kl(logits[b:], logits[:b], detach_target=detach,  # KL(p2 || p1)
                                                   reduction=reduction)),
            "id_thermal": identity_loss(logits[b:], batch.labels[b:]),
            "kl_thermal": global_sum(prediction_kl(logits[:b], logits[b:], detach_target=detach,  # KL(p1 || p2)
                                                   reduction=reduction)),
            "intra": ranking_sum(ranking.intra),
            "cross": ranking_sum(ranking.cross),
        }

    # -- the per-stream variant: two optimisers --------------------------------------------------
    def _stream_params(self, model, modality: int):
        streams = model.streams if model.streams is not None else model.resnet.specific_stages
        own = list(streams[modality].parameters())
        shared = [p for n, p in model.named_parameters() if n.startswith(("shared.", "classifier."))]
        return own + shared

    def optimizers(self, model):
        if not self.cfg["optim"]["per_stream"]:
            return super().optimizers(model)
        return [self.make_optimizer(self.parameter_groups(model, self._stream_params(model, m))) for m in (0, 1)]

    def losses(self, terms):
        if not self.cfg["optim"]["per_stream"]:
            return super().losses(terms)
        ranking = terms["intra"] + terms["cross"]
        return [terms["id_visible"] + terms["kl_visible"] + ranking,     # L_visible (eq. 13)
                terms["id_thermal"] + terms["kl_thermal"] + ranking]     # L_thermal (eq. 14)


class DHSME(HSME):
    name = "dhsme"
    stages = 2

    def __init__(self, cfg, num_classes):
        super().__init__(cfg, num_classes)
        m = cfg["model"]["embedding"]
        if m < num_classes:
            raise ConfigError(f"D-HSME decomposes the Sphere weight W (embedding m x classes n) assuming m >= n, but "
                              f"model.embedding = {m} < {num_classes} training identities; raise model.embedding "
                              f"to at least {num_classes}")

    def begin_stage(self, stage, model):
        if stage == 2 and unwrap(model).classifier.weight.requires_grad:
            unwrap(model).decorrelate_classifier()
