"""python -m vtreid.train: train a visible-infrared re-ID method and evaluate it.

    python -m vtreid.train                                   # the default method on built-in synthetic data
    python -m vtreid.train --method expat --dataset sysu --data-root /data/SYSU-MM01
    python -m vtreid.train --method dhsme --dataset regdb --data-root /data/RegDB dataset.trial=3
    python -m vtreid.train --resume --out runs/expat-sysu-...   # continue a run from its last checkpoint

Configuration: the method's preset for the dataset (vtreid/presets/<method>/<dataset>.yaml), then
--config FILE, then KEY=VALUE overrides with dotted keys (optim.lr=3e-4 sampler.tuples=4); the resolved
configuration is printed and saved as config.yaml in the run directory, with log.txt, metrics.jsonl,
checkpoints/{last,best}.pt and results.json. SIGINT / SIGTERM finish the step, checkpoint and exit.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from vtreid import _cli as cli
from vtreid import ops
from vtreid.data.verify import PrintedProgress, WorkShare
from vtreid.methods import METHODS, VARIANTS, Batch, get_method
from vtreid.training import checkpoint as ckpt_io
from vtreid.training import distributed
from vtreid.training.config import (DATASETS, DEFAULT_METHOD, ConfigError, check_against, check_values, complete,
                                    dump, get, leaves, load_yaml, merge, parse_override, resolve, run_identity)
from vtreid.training.data import EpochBatches, load_split, train_loader
from vtreid.training.evaluation import check_galleries, evaluate_model, format_results, galleries_for
from vtreid.training.progress import Progress, Writers
from vtreid.training.signals import StopRequest, Stopped

OP_FAMILIES = ("pairwise_distance", "hard_mining", "hetero_center_loss", "normalized_cross_entropy")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bfloat16 (Linux's /proc/cpuinfo; False where it cannot be read).
    There oneDNN runs bfloat16 convolutions and matmuls on AMX kernels, which gave NaN and wrong values:
    a tiny ResNet under CPU bf16 autocast returned NaN in 11 forwards of 40 and elsewhere values up to 3.5
    from the float32 result (0.18 with oneDNN off), with torch 2.11 and 2.13, depending on what ran
    before in the process (oneDNN's AMX tail handling: uxlfoundation/oneDNN#5717 is one such bug)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


#: settings a resumed run may change: where it runs and reads the data, how it logs, evaluates and checkpoints,
#: and where it stops within the schedule. Anything else (the schedule's length, the epoch's size, the precision,
#: the loss's scope) would make the continued run differ from the one the checkpoint began.
RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.eval_every", "train.eval_at_start",
                     "train.checkpoint_every", "train.workers", "train.device", "train.backend", "train.compile",
                     "train.deterministic", "dataset.root", "eval")


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss); the message says what happened and what was kept."""


# -- command line and configuration -------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    epilog = "methods and their variants (variant=[name,...]):\n" + "\n".join(
        f"  {name:<12} {', '.join(m.variants) or '-'}" for name, m in METHODS.items())
    p = argparse.ArgumentParser(prog="python -m vtreid.train", description=__doc__.split("\n\n")[0],
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a YAML file of settings over the preset")
    p.add_argument("--method", choices=tuple(METHODS), help=f"default {DEFAULT_METHOD}")
    p.add_argument("--dataset", choices=DATASETS, help="default synthetic (generated on first use)")
    p.add_argument("--data-root", help="the dataset folder (sysu, regdb)")
    p.add_argument("--out", help="run directory (default runs/<method>-<dataset>-<time>)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue from CKPT, or from --out's checkpoints/last.pt when no path is given")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the GPU when there is one)")
    p.add_argument("--backend", choices=("auto",) + ops.BACKENDS, help="op backend for the whole run")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), help="mixed precision (fp16 adds a grad scaler)")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume on CPU)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (0: at the end only)")
    p.add_argument("--pretrained", help="local ImageNet checkpoint with torchvision keys")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings with dotted keys, e.g. optim.lr=3e-4")
    args = p.parse_intermixed_args(argv)   # KEY=VALUE may come before and after the flags
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume KEY=VALUE`: an override after a bare --resume
        args.resume = "last"
    return args


def flag_settings(args) -> dict:
    """The command line's flags as settings (they sit with the KEY=VALUE overrides)."""
    flags = {
        "dataset": {"root": args.data_root}, "train": {"device": args.device, "backend": args.backend,
                                                       "amp": args.amp, "max_steps": args.max_steps,
                                                       "eval_every": args.eval_every},
        "model": {"pretrained": args.pretrained}, "seed": args.seed,
    }
    if args.deterministic:
        flags["train"]["deterministic"] = True
    if args.compile:
        flags["train"]["compile"] = True

    def prune(d):
        return {k: (prune(v) if isinstance(v, dict) else v) for k, v in d.items()
                if v is not None and not (isinstance(v, dict) and not prune(v))}
    return prune(flags)


def resolve_config(args) -> tuple[dict, dict | None, Path]:
    """(configuration, checkpoint to resume or None, run directory)."""
    flags = flag_settings(args)
    if args.resume:
        path = Path(args.resume) if args.resume != "last" else None
        if path is None:
            if not args.out:
                raise ConfigError("--resume without a checkpoint path needs --out DIR, the run to continue")
            path = Path(args.out) / "checkpoints" / "last.pt"
        try:
            state = ckpt_io.load(path)
        except ValueError as exc:   # not a vtreid checkpoint: one line, as a missing file is
            raise ConfigError(str(exc)) from None
        cfg = complete(state["config"], VARIANTS)   # settings added since it was written
        for name, given in (("method", args.method), ("dataset", args.dataset)):
            have = cfg["method"] if name == "method" else cfg["dataset"]["name"]
            if given and given != have:
                raise ConfigError(f"cannot resume {path} with --{name} {given}: it was trained with {name} {have!r}")
        changes = load_yaml(args.config) if args.config else {}
        for text in args.overrides:
            changes = merge(changes, parse_override(text))
        changes = merge(changes, flags)
        check_against(cfg, changes, "resume")
        for key, value in leaves(changes):
            if value != get(cfg, key) and not any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
                raise ConfigError(f"cannot change {key!r} when resuming (only {', '.join(RESUMABLE_CHANGES)} may "
                                  f"change); start a new run instead")
        cfg = merge(cfg, changes)
        check_values(cfg)   # a changed setting's value, as a new run's
        out = Path(args.out) if args.out else path.resolve().parent.parent
        return cfg, state, out
    cfg = resolve(args.method, args.dataset, args.config, args.overrides, VARIANTS, extra=flags)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg['method']}-{cfg['dataset']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, None, out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return cli.check_device(name)
    except ValueError as exc:
        raise ConfigError(f"train.device is {name!r} but {exc}") from None


def seed_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_everything(seed: int, deterministic: bool) -> None:
    seed_rngs(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def backends_used(device: torch.device, dtype: torch.dtype) -> dict:
    """The backend each op family runs on for this run's device and feature dtype."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {op: ops._backend.resolve(None, device, dtype, op) for op in OP_FAMILIES}


# -- the run ------------------------------------------------------------------------------------
class Run:
    """Everything one training run holds; ``train()`` is the loop over it. Under torchrun each rank
    holds one (``ctx``); rank 0 alone writes."""

    def __init__(self, cfg: dict, out: Path, resume_state: dict | None, ctx: distributed.Context, device: str):
        self.cfg, self.out, self.ctx = cfg, out, ctx
        t = cfg["train"]
        self.device = pick_device(device)
        if t["sync_bn"] and self.device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU)")
        if t["amp"] == "bf16" and self.device.type == "cpu" and cpu_has_amx():
            # a resume keeps its precision (RESUMABLE_CHANGES): only the device can change
            remedy = ("this run trains in bf16: resume it on a GPU (--device cuda)" if resume_state is not None else
                      "train with --amp off on a CPU (oneDNN's float32 path), or with bf16 on a GPU")
            raise ConfigError(f"train.amp=bf16 on this CPU: its AMX units run oneDNN's bfloat16 convolutions, which "
                              f"return NaN and wrong values on such CPUs (see vtreid.train.cpu_has_amx); {remedy}")
        seed_everything(cfg["seed"], t["deterministic"])
        # the first start on a dataset decodes its images (a minute or two for SYSU-MM01): say so; the
        # ranks of a torchrun job decode a part each
        share = WorkShare(ctx.rank, ctx.world_size, distributed.gather_objects) if ctx.enabled else None
        self.split = load_split(cfg, progress=PrintedProgress() if ctx.is_main else None, share=share)
        # every rank resolves them (a damaged file stops all alike); rank 0 alone says it fell back
        with warnings.catch_warnings():
            if not ctx.is_main:
                warnings.simplefilter("ignore")
            self.galleries = galleries_for(cfg)
        check_galleries(self.galleries, self.split, cfg)
        self.num_classes = len({r.label for r in self.split.train})
        self.method = get_method(cfg["method"])(cfg, self.num_classes)
        self.train_transform, self.test_transform = self.method.transforms()
        try:
            sampler = self.method.sampler(self.split.train, seed=cfg["seed"], rank=ctx.rank, world_size=ctx.world_size)
        except ValueError as exc:
            raise ConfigError(f"the {cfg['method']} sampler cannot form batches from this data: {exc}") from exc
        self.steps_per_epoch = t["epoch_steps"] or self.method.steps_per_epoch(self.split.train, sampler)
        try:
            self.batches = EpochBatches(sampler, self.steps_per_epoch)
        except ValueError as exc:
            raise ConfigError(f"{exc} (train.epoch_steps sets an epoch's length)") from None
        self.loader = train_loader(self.split.train, self.train_transform, self.batches, cfg, self.device)
        self.stage_steps = self.method.stage_steps(self.steps_per_epoch)
        self.total_steps = self.stage_steps * self.method.stages
        if t["max_steps"] is not None:
            self.total_steps = min(self.total_steps, t["max_steps"])
        self.model = self.method.build_model().to(self.device)
        if t["sync_bn"] and ctx.enabled:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        amp = t["amp"]
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.backends = backends_used(self.device, self.amp_dtype or torch.float32)
        self.step, self.best_score, self.stage = 0, float("-inf"), 1
        self.ranks_together = True   # False once the ranks may have left at different points (see main)
        self.saved_step = None       # the step last.pt was last written at, by this run
        self.method.begin_stage(1, self.model)
        self.optimizers, self.schedulers = self.make_optimizers()
        self.wrap()
        if ctx.rank:   # the weights are rank 0's now; each other rank draws its own dropout masks (augmentations
            # are drawn per sample from the seed already: vtreid.data.loader)
            seed_rngs((cfg["seed"] + 1_000_003 * ctx.rank) % 2**32)   # NumPy takes seeds below 2^32
        if resume_state is not None:
            self.restore(resume_state)

    def wrap(self) -> None:
        """The module the steps call: DDP over the model on several ranks (rebuilt when a stage freezes
        parameters; not with several optimisers: see below), torch.compile on top with --compile."""
        model = self.model
        # Several optimisers, each on its own loss: torch.autograd.grad per loss, which DDP does not support,
        # so those runs do DDP's part with torch.distributed (vtreid.training.distributed).
        self.sync_by_hand = self.ctx.enabled and len(self.optimizers) > 1
        if self.sync_by_hand:
            distributed.broadcast_module(model)
        elif self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.forward_model = torch.compile(model) if self.cfg["train"]["compile"] else model
        self.buffers = list(self.model.buffers())
        self.good_buffers, self.good_rng = [b.clone() for b in self.buffers], None

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def make_optimizers(self):
        optimizers = self.method.optimizers(self.model)
        factor = lambda s: self.method.lr_factor(s, self.steps_per_epoch)  # noqa: E731 - step within the stage
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]

    def enter_stage(self, stage: int) -> None:
        """A new stage (D-HSME's stage 2): the method's change to the model, fresh optimisers, schedule."""
        self.stage = stage
        self.method.begin_stage(stage, self.model)
        self.optimizers, self.schedulers = self.make_optimizers()
        self.wrap()

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers], "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.step // self.steps_per_epoch,
                "position": self.step % self.steps_per_epoch, "stage": self.stage, "best_score": self.best_score,
                "rng": distributed.gather_objects(ckpt_io.rng_state()), "config": self.cfg, "num_classes": self.num_classes,
                "backends": self.backends, "versions": ckpt_io.versions()}

    def checkpoint_path(self, name: str = "last.pt") -> Path:
        return self.out / "checkpoints" / name

    def save(self, *names: str) -> Path:
        """Every rank calls it (their RNG states are gathered); rank 0 writes the one state to each file named
        (default last.pt). Returns the last path."""
        state = self.state()
        paths = [self.checkpoint_path(name) for name in names or ("last.pt",)]
        if self.ctx.is_main:
            for path in paths:
                ckpt_io.save_atomic(state, path)
        self.saved_step = self.step
        return paths[-1]

    def state_is_finite(self) -> bool:
        """Whether every weight and buffer is finite on every rank (one host sync: at checkpoints, evaluations
        and a failed step)."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        bad = bool(tensors) and not bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())
        return not distributed.all_agree(bad, self.device)

    def check_state(self) -> None:
        """A step whose loss was finite but whose gradient was not leaves non-finite weights: stop before they
        are evaluated or saved."""
        if not self.state_is_finite():
            raise TrainingError(f"the weights are not finite after step {self.step} (a step's gradient was not, "
                                f"though its loss was)")

    def restore(self, state: dict) -> None:
        if state["num_classes"] != self.num_classes:
            raise ConfigError(f"cannot resume: the checkpoint was trained on {state['num_classes']} identities, this "
                              f"dataset has {self.num_classes}")
        if state["stage"] > 1:
            self.enter_stage(state["stage"])
        mismatch = ckpt_io.state_mismatch(self.model, state["model"])
        if mismatch:
            raise ConfigError(f"cannot resume: the checkpoint's model does not fit this configuration (written by "
                              f"vtreid {state.get('versions', {}).get('vtreid', '?')}): keys {mismatch}")
        self.model.load_state_dict(state["model"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise ConfigError("cannot resume: the checkpoint has a different number of optimisers (variant changed?)")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_score = state["step"], state["best_score"]
        if len(state["rng"]) != self.ctx.world_size:
            raise ConfigError(f"cannot resume: the checkpoint was written by {len(state['rng'])} process(es), this run "
                              f"has {self.ctx.world_size}; resume with the same number")
        ckpt_io.set_rng_state(state["rng"][self.ctx.rank])

    # -- one step --------------------------------------------------------------------------------
    def keep_good_state(self) -> None:
        """What a forward changes besides the weights (BatchNorm statistics, every RNG), before the step:
        a step whose loss is non-finite is undone to it (``undo_failed_step``) before the checkpoint."""
        if self.buffers:
            torch._foreach_copy_(self.good_buffers, self.buffers)  # one launch per dtype, not one per buffer
        self.good_rng = ckpt_io.rng_state()

    def undo_failed_step(self) -> None:
        """Back to the state after the last good step: a failed step's forward has run, its optimiser steps not."""
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.good_buffers)
        if self.good_rng is not None:
            ckpt_io.set_rng_state(self.good_rng)

    def train_step(self, raw: dict) -> dict[str, float] | None:
        """Forward, loss terms, backward and optimiser step(s); returns the terms as floats (averaged over
        the ranks), or None when the fp16 scaler skipped a step whose loss overflowed."""
        self.keep_good_state()
        batch = Batch(raw, self.device)
        if self.sync_by_hand:
            distributed.broadcast_buffers(self.model)  # as DDP does before each forward
        with self.autocast():
            terms = self.method.objective(self.forward_model, batch)
        losses = self.method.losses(terms)
        # The global batch's terms, as one process would log them (a rank's terms read its own rows); a
        # non-finite term on any rank is non-finite here on every rank, so all stop or skip together.
        names = list(terms)
        values = distributed.mean_over_ranks(torch.stack([terms[k].detach().float() for k in names]))
        logged = dict(zip(names, values.tolist()))  # the one host sync per step (the log reads these floats)
        self.step_lr = self.optimizers[0].param_groups[0]["lr"]   # the rate this step trains at
        if not all(math.isfinite(v) for v in logged.values()):
            if self.scaler.is_enabled():
                # fp16 overflow: skip the step as the scaler skips one whose gradients overflow, the schedule
                # going on (scale() first: the scaler has no scale before its first call)
                self.undo_failed_step()   # its forward's BatchNorm statistics may hold the overflow
                self.scaler.scale(losses[0].detach())
                self.scaler.update(self.scaler.get_scale() / 2)
                with warnings.catch_warnings():   # "scheduler before optimizer": the skipped step's rate is spent
                    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                    for s in self.schedulers:
                        s.step()
                return None
            bad = next(k for k, v in logged.items() if not math.isfinite(v))
            raise TrainingError(f"the loss term {bad!r} is {logged[bad]} at step {self.step + 1}")
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        if len(losses) not in (1, len(self.optimizers)):
            raise TrainingError(f"{self.method.name} gave {len(losses)} losses for {len(self.optimizers)} optimisers: "
                                f"one loss for all, or one per optimiser")
        if len(losses) == 1:
            self.scaler.scale(losses[0]).backward()
            grads = None
            if self.sync_by_hand:  # several optimisers on one loss: no DDP, so average as it would
                params = [p for p in self.model.parameters() if p.grad is not None]
                for p, g in zip(params, distributed.average_gradients([p.grad for p in params])):
                    p.grad = g
        else:  # one loss per optimiser (HSME per_stream): each optimiser steps on its own loss's gradient
            grads = optimizer_gradients(losses, self.optimizers, self.scaler.scale)
        for k, o in enumerate(self.optimizers):
            if grads is not None:  # set just before its step: the optimisers share parameters (shared layers)
                for p, g in zip(optimizer_params(o), grads[k]):
                    p.grad = g
            self.scaler.step(o)
        self.scaler.update()
        for s in self.schedulers:
            s.step()
        return logged


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def optimizer_gradients(losses, optimizers, scale=lambda loss: loss) -> list[list[torch.Tensor | None]]:
    """Loss k's gradient for optimiser k's parameters (None where unused), averaged over the ranks under
    torchrun, as DDP would average one loss's. ``scale``: the fp16 grad scaler's."""
    out = []
    for k, (loss, optimizer) in enumerate(zip(losses, optimizers)):
        grads = torch.autograd.grad(scale(loss), optimizer_params(optimizer), retain_graph=k < len(losses) - 1,
                                    allow_unused=True)
        out.append(distributed.average_gradients(list(grads)))
    return out


def metrics_record(run: Run, terms: dict, images: int, data_time: float, step_time: float) -> dict:
    """The step just taken (run.step counts it): its epoch, the rate it trained at, and the global batch's
    images per second (``images``: this rank's; the ranks' batches are equal)."""
    peak = torch.cuda.max_memory_allocated(run.device) / 2**20 if run.device.type == "cuda" else None
    return {"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch, "stage": run.stage,
            "lr": run.step_lr, "loss": sum(terms.values()),
            "terms": dict(terms), "images_per_s": images * run.ctx.world_size / max(step_time, 1e-9),
            "data_time": data_time, "step_time": step_time, "peak_mem_mib": peak}


def evaluate(run: Run, writers: Writers, progress: Progress | None, final: bool) -> dict:
    # DDP hands rank 0's BatchNorm statistics to the others at each forward, and each rank's batch moves its
    # own after: every rank extracts part of the test set, so all take rank 0's, those the checkpoint holds.
    distributed.broadcast_buffers(run.model)
    start = time.perf_counter()
    result = evaluate_model(run.model, run.split, run.test_transform, run.cfg, device=run.device, final=final,
                            autocast=run.autocast, galleries=run.galleries)
    if not run.ctx.is_main:
        return result
    text = f"evaluation at step {run.step} ({time.perf_counter() - start:.1f}s, {result['protocol']}):\n" \
           + format_results(result)
    (progress.write if progress else print)(text)
    writers.log(text, echo=False)
    return result


def evaluation_path(run: Run) -> Path:
    """The file that keeps the evaluation of run.step in full (every trial: python -m vtreid.visualize cmc).
    Written last, once best.pt holds the step: it marks the evaluation done (a resume without it redoes it)."""
    return run.out / "evaluations" / f"step{run.step:07d}.json"


def results_json(run: Run, result: dict) -> str:
    return json.dumps({**run_identity(run.cfg), "step": run.step, "backends": run.backends,
                       "world_size": run.ctx.world_size, "protocol": result["protocol"],
                       "results": result["results"]}, indent=2)


def evaluation_outside_loop(run: Run, writers: Writers, final: bool = True) -> dict | Stopped:
    """An evaluation outside the training loop (at start and at the end with the final protocol; on resume,
    one a stop left undone): a SIGINT / SIGTERM stops it where it is, there being nothing in it worth
    finishing, and is returned. The ranks then leave from wherever each was (run.ranks_together)."""
    try:
        with StopRequest(immediate=True):
            return evaluate(run, writers, None, final=final)
    except Stopped as stop:
        run.ranks_together = False
        return stop


def evaluation_due(run: Run) -> bool:
    """Whether the loop evaluates after the step it has just reached."""
    every = run.cfg["train"]["eval_every"]
    return bool(every) and run.step % every == 0 and run.step < run.total_steps


def record_evaluation(run: Run, writers: Writers, result: dict, *, best: bool = True) -> None:
    """A better score (``best``: not the untrained baseline's): best.pt, and last.pt with the new best (a resume
    keeps best.pt); then the metrics line and evaluation_path, in that order, so that an evaluation a kill
    cut short is redone on resume."""
    if best and result["score"] > run.best_score:
        run.best_score = result["score"]
        run.save("best.pt", "last.pt")
    if not run.ctx.is_main:
        return
    first = next(iter(result["results"].values()))
    writers.metrics({"step": run.step, "stage": run.stage,
                     "eval": {k: first[k]["mean"] for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")}})
    evaluation_path(run).parent.mkdir(exist_ok=True)
    ckpt_io.write_text_atomic(evaluation_path(run), results_json(run, result))


def last_checkpoint_note(run: Run) -> str:
    """What the run directory's last.pt holds (read from the file: a resume may have started elsewhere)."""
    path = run.checkpoint_path()
    if not run.ctx.is_main:
        return ""
    if not path.is_file():
        return f"no checkpoint was written to {path}"
    return f"{path} holds step {ckpt_io.load(path)['step']}"


def resume_command(run: Run, path: Path) -> str:
    if run.ctx.enabled:   # the same number of processes (launch options beyond that are the user's)
        return f"torchrun --nproc_per_node={run.ctx.world_size} -m vtreid.train --resume {path} --out {run.out}"
    return f"python -m vtreid.train --resume {path}"


def train(run: Run, writers: Writers) -> int:
    """The loop: steps until the schedule ends, evaluations and checkpoints on their hooks, a clean
    stop on SIGINT / SIGTERM. Returns the exit code."""
    t = run.cfg["train"]
    if t["eval_at_start"] and run.step == 0:   # the untrained baseline, as many trials as the final result
        result = evaluation_outside_loop(run, writers)
        if isinstance(result, Stopped):
            writers.log(f"{result} during the evaluation at start, before any training; nothing to resume")
            return result.exit_code
        record_evaluation(run, writers, result, best=False)
    # A stop at a step due an evaluation checkpoints without it (or a kill came during it): it runs first.
    pending = run.ctx.is_main and not evaluation_path(run).exists()
    if run.step > 0 and evaluation_due(run) and distributed.all_agree(pending, run.device):
        result = evaluation_outside_loop(run, writers, final=False)
        if isinstance(result, Stopped):
            writers.log(f"{result} during the evaluation of step {run.step}, a resumed run's first; resume with: "
                        f"{resume_command(run, run.checkpoint_path())}   (runs it again)")
            return result.exit_code
        record_evaluation(run, writers, result)
    progress = Progress(run.total_steps, run.step, t["log_every"], enabled=run.ctx.is_main)
    stopping = False
    try:
        with StopRequest() as stop:
            while run.step < run.total_steps:
                epoch, position = divmod(run.step, run.steps_per_epoch)
                run.batches.set_position(epoch, position)
                tick = time.perf_counter()
                for raw in run.loader:
                    stage = run.step // run.stage_steps + 1
                    if stage != run.stage:
                        run.enter_stage(stage)
                        progress.write(f"stage {stage} begins at step {run.step}")
                    data_time = time.perf_counter() - tick
                    terms = run.train_step(raw)
                    run.step += 1
                    step_time = time.perf_counter() - tick
                    if terms is not None:
                        record = metrics_record(run, terms, len(raw["visible_labels"]) + len(raw["infrared_labels"]),
                                                data_time, step_time)
                        if run.step % t["log_every"] == 0 or run.step == run.total_steps:
                            writers.metrics(record)
                        progress.update(run.step, record)
                    stopping = distributed.all_agree(stop.requested, run.device)  # every rank stops at one step
                    evaluating = evaluation_due(run)
                    if not stopping and (evaluating or (t["checkpoint_every"]
                                                        and run.step % t["checkpoint_every"] == 0)):
                        run.check_state()   # one sync per checkpoint: broken weights are never evaluated or saved
                        # before the evaluation, which may outlast the grace a launcher gives after SIGTERM
                        # (torchrun: 30 s): a kill during it loses no step, and the resume evaluates first
                        run.save()
                        if evaluating:
                            record_evaluation(run, writers, evaluate(run, writers, progress, final=False))
                            stopping = distributed.all_agree(stop.requested, run.device)
                    if stopping or run.step >= run.total_steps:
                        break
                    tick = time.perf_counter()
                if stopping:
                    if run.saved_step == run.step:   # a signal during this step's evaluation: already saved
                        path = run.checkpoint_path()
                    else:
                        run.check_state()
                        path = run.save()
                    progress.close()
                    by = f"signal {stop.signal}" if stop.signal is not None else "a signal to another process"
                    message = (f"stopped by {by} after step {run.step}/{run.total_steps}; checkpoint {path}\n"
                               f"resume with: {resume_command(run, path)}")
                    writers.log(message)
                    return stop.exit_code if stop.requested else 128 + 15
    except TrainingError as exc:
        progress.close()
        run.undo_failed_step()
        if run.state_is_finite():
            path = run.save()
            writers.log(f"error: {exc}; the last good step's checkpoint is {path}")
        else:   # a step's gradient was not finite though its loss was: its update broke the weights
            writers.log(f"error: {exc}; the weights are not finite, so they are not saved: {last_checkpoint_note(run)}")
        return 1
    progress.close()
    try:
        run.check_state()
    except TrainingError as exc:
        writers.log(f"error: {exc}; {last_checkpoint_note(run)}")
        return 1
    path = run.save()  # the training is safe before the (long) final evaluation
    result = evaluation_outside_loop(run, writers)
    if isinstance(result, Stopped):
        writers.log(f"{result} during the final evaluation; the trained model is in {path}\n"
                    f"resume with: {resume_command(run, path)}   (runs the final evaluation again)")
        return result.exit_code
    record_evaluation(run, writers, result)
    if run.ctx.is_main:
        ckpt_io.write_text_atomic(run.out / "results.json", results_json(run, result))
    writers.log(f"done: {run.step} steps; results in {run.out / 'results.json'}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = distributed.Context()
    clean = False
    run = None
    # --deterministic switches process-wide settings; a caller of main() (a test, a notebook) gets its own back
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:
        missing = None
        try:
            cfg, resume_state, out = resolve_config(args)
        except FileNotFoundError as exc:
            # a rank of a resume under torchrun whose node lacks the checkpoint (node-local --out) joins the
            # others below, so that they stop with it instead of waiting in a collective until the timeout
            if not (args.resume and distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1):
                raise
            cfg, resume_state, out, missing = None, {}, Path(args.out or "."), str(exc)
        ctx, device = distributed.setup(cfg["train"]["device"] if cfg else args.device or "auto")
        if ctx.enabled and not args.out and resume_state is None:
            # every rank must write to (and rank 0 alone writes) one directory: the time stamp could differ
            raise ConfigError("under torchrun give the run directory: --out DIR")
        # a new run in a run's directory would append to its logs and metrics and overwrite its checkpoints;
        # rank 0's view decides for every rank (a node-local directory may exist on one node only)
        held = [name for name in ("checkpoints/last.pt", "metrics.jsonl", "log.txt") if (out / name).exists()]
        if resume_state is None and distributed.all_agree(bool(held) and ctx.is_main, pick_device(device)):
            raise ConfigError(f"{out} already holds a run ({', '.join(held) or 'on rank 0'}): continue it with "
                              f"--resume --out {out} (when it has checkpoints/last.pt), or give another --out")
        if resume_state is not None and ctx.enabled:
            # each rank read the checkpoint from its own node's view of --out: on node-local storage another
            # node has none or another run's, and the ranks would train apart
            view = ("missing", missing) if missing else (resume_state["step"], dump(resume_state["config"]))
            views = distributed.gather_objects(view)
            if all(v[0] == "missing" for v in views):   # no rank has it: a mistyped --out, most likely
                raise ConfigError(missing)
            if missing or any(v != views[0] for v in views):
                seen = ", ".join(f"rank {r}: {'no checkpoint' if v[0] == 'missing' else f'step {v[0]}'}"
                                 for r, v in enumerate(views))
                raise ConfigError(f"the ranks read different checkpoints from {out} ({seen}): under torchrun --out "
                                  f"must be one directory that every node sees (shared storage)"
                                  + (f"; here: {missing}" if missing else ""))
        backend = cfg["train"]["backend"]
        with ops.use_backend(backend) if backend != "auto" else contextlib.nullcontext():
            run = Run(cfg, out, resume_state, ctx, device)
            out.mkdir(parents=True, exist_ok=True)
            writers = Writers(out, enabled=ctx.is_main, resume_step=None if resume_state is None else run.step)
            if resume_state is None and ctx.is_main:
                ckpt_io.write_text_atomic(out / "config.yaml", dump(cfg))
                writers.log(f"vtreid.train: {cfg['method']} on {cfg['dataset']['name']}, configuration:\n{dump(cfg)}")
            else:
                writers.drop_metrics_after(run.step)
                writers.log(f"vtreid.train: resuming {out} at step {run.step} (stage {run.stage})")
            writers.log(f"device {run.device} ({ctx.world_size} process(es)), op backends {run.backends}, "
                        f"{run.num_classes} training identities, "
                        f"{len(run.split.train)} images, {run.steps_per_epoch} steps/epoch, {run.total_steps} steps, "
                        f"run directory {out}")
            try:
                code = train(run, writers)
                # 1: a failed step, which another rank may not have seen at the same step; a stop inside an
                # evaluation outside the loop leaves each rank where it was, maybe inside a collective
                clean = code != 1 and run.ranks_together
                return code
            finally:
                writers.close()
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        # The run (its DDP wrapper holds the process group) goes before the group does: freed after
        # destroy_process_group, its gloo group's destructor could wait on a rank that had already left.
        run = None
        gc.collect()
        distributed.teardown(ctx, clean)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = deterministic[2]


if __name__ == "__main__":
    sys.exit(main())
