"""What every method shares: the network, the batch layout, optimisers, the per-step schedule.

A method is a short composition (DESIGN.md, Training): which network (vtreid.models), which sampler and
transforms (vtreid.data), the objective as named terms written with vtreid.losses on vtreid.ops, the
optimisers and their parameter groups, the schedule, and the evaluation feature. The trainer
(vtreid.train) runs any method through this interface and nothing else:

    method = get_method(cfg["method"])(cfg, num_classes)
    model = method.build_model()
    sampler = method.sampler(records, seed=..., rank=..., world_size=...)
    terms = method.objective(model, batch)         # {"id": ..., "hc": ...}: their sum is the loss
    optimizers = method.optimizers(model); losses = method.losses(terms)   # one loss per optimiser
    method.begin_stage(stage, model)               # D-HSME's SVD between its stages
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from vtreid.data import Transform
from vtreid.models import build_model
from vtreid.training.config import ConfigError
from vtreid.training.distributed import gather, per_rank
from vtreid.training.distributed import world_size as num_ranks


class Batch:
    """A loader batch as the networks see it: visible rows first, then infrared rows."""

    def __init__(self, batch: dict, device: torch.device):
        self.visible = batch["visible"].to(device, non_blocking=True)
        self.infrared = batch["infrared"].to(device, non_blocking=True)
        vis, ir = batch["visible_labels"], batch["infrared_labels"]
        self.labels = torch.cat([vis, ir]).to(device, non_blocking=True)
        # int32, the fused ops' modality dtype: any other costs each op call a conversion launch
        self.modality = torch.cat([torch.zeros(len(vis), dtype=torch.int32),
                                   torch.ones(len(ir), dtype=torch.int32)]).to(device, non_blocking=True)
        self.num_visible = len(vis)

    def __len__(self) -> int:
        return len(self.labels)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (for its attributes, e.g. the classifier)."""
    return getattr(model, "module", model)


def check_option(value, name: str, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


class Method:
    """Base class; subclasses set ``name``, ``network`` and ``variants`` and write ``sampler`` and
    ``objective``."""

    name: ClassVar[str]
    network: ClassVar[str]
    #: named variants: each a dict of settings applied over the preset (METHODS.md lists them)
    variants: ClassVar[dict[str, dict]] = {}
    stages: ClassVar[int] = 1
    #: parameter-name prefixes of the backbone, for optim.backbone_lr_mult
    backbone_prefixes: ClassVar[tuple[str, ...]] = ("backbone.",)

    def __init__(self, cfg: dict, num_classes: int):
        self.cfg, self.num_classes = cfg, num_classes
        self.loss_cfg = cfg["loss"]

    # -- data ------------------------------------------------------------------------------------
    def sampler(self, records, *, seed: int, rank: int = 0, world_size: int = 1):
        """The method's batch sampler for one rank; sampler.* sizes are the global batch, split over the
        ranks (``self.per_rank``)."""
        raise NotImplementedError

    @staticmethod
    def per_rank(value: int, name: str, world_size: int) -> int:
        return per_rank(value, f"sampler.{name}", world_size)

    def global_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows of every rank (train.global_mining, on by default): mining and centres then see the
        global batch, with gradients back to each rank's rows. One process: the tensors themselves."""
        return gather(*tensors) if self.cfg["train"]["global_mining"] else tensors

    @staticmethod
    def rank_sum(term: torch.Tensor) -> torch.Tensor:
        """A sum over this rank's rows, scaled by the number of ranks: the gradients DDP averages over the
        ranks (and the logged terms, averaged likewise) are then those of the sum over the global batch."""
        return term * num_ranks()

    def global_rows_sum(self, term: torch.Tensor) -> torch.Tensor:
        """A sum over the rows ``global_rows`` returned: already the global batch's when those are every
        rank's; this rank's only under train.global_mining=false, then scaled as ``rank_sum``. Without it a
        summed batch-level term would weigh 1/N of the other terms on N ranks."""
        return term if self.cfg["train"]["global_mining"] else self.rank_sum(term)

    def steps_per_epoch(self, records, sampler) -> int:
        """Batches in one epoch; by default one pass of the sampler over the identities."""
        return len(sampler)

    def transforms(self) -> tuple[Transform, Transform]:
        c = self.cfg["input"]
        kw = dict(resize_to=tuple(c["resize"]) if c["resize"] else None,
                  test_size=tuple(c["test_size"]) if c["test_size"] else None)
        return (Transform(tuple(c["size"]), train=True, padding=c["padding"], flip=c["flip"], erasing=c["erasing"],
                          grayscale=c["grayscale"], **kw),
                Transform(tuple(c["size"]), train=False, **kw))

    # -- model and objective ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        options = {k: v for k, v in self.cfg["model"].items() if v is not None or k != "pretrained"}
        try:
            return build_model(self.network, self.num_classes, **options)
        except TypeError as exc:  # an option the network does not take
            raise ConfigError(f"model options {sorted(options)} do not fit the {self.network} network: {exc}") from exc

    def objective(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """The named terms of the loss on one batch; their sum is what is minimised."""
        raise NotImplementedError

    def losses(self, terms: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One loss per optimiser (most methods: one optimiser, the sum of the terms)."""
        return [sum(terms.values())]

    def begin_stage(self, stage: int, model: nn.Module) -> None:
        """Called before stage ``stage`` (1-based) starts or is resumed; one-stage methods do nothing."""

    # -- optimisation ----------------------------------------------------------------------------
    def parameter_groups(self, model: nn.Module, params=None) -> list[dict]:
        """Trainable parameters, the backbone's at lr x optim.backbone_lr_mult."""
        lr, mult = self.cfg["optim"]["lr"], self.cfg["optim"]["backbone_lr_mult"]
        wanted = None if params is None else set(map(id, params))
        backbone, head = [], []
        for name, p in model.named_parameters():
            if p.requires_grad and (wanted is None or id(p) in wanted):
                (backbone if name.startswith(self.backbone_prefixes) else head).append(p)
        groups = [{"params": head, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * mult})
        return [g for g in groups if g["params"]]

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        o = self.cfg["optim"]
        if o["name"] == "adam":
            return torch.optim.Adam(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                    weight_decay=o["weight_decay"])
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                               weight_decay=o["weight_decay"])

    def optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        return [self.make_optimizer(self.parameter_groups(model))]

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The learning-rate multiplier at ``step`` (0-based, within the stage): linear warm-up from
        schedule.warmup_from, then x gamma at each milestone; epochs are converted with steps_per_epoch."""
        s = self.cfg["schedule"]
        unit = steps_per_epoch if s["unit"] == "epoch" else 1
        warmup = s["warmup"] * unit
        factor = s["gamma"] ** sum(step >= m * unit for m in s["milestones"])
        if step < warmup:
            factor *= s["warmup_from"] + (1.0 - s["warmup_from"]) * step / warmup
        return factor

    def stage_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps in one stage: train.length in schedule.unit."""
        unit = steps_per_epoch if self.cfg["schedule"]["unit"] == "epoch" else 1
        return max(1, int(math.ceil(self.cfg["train"]["length"] * unit)))
