"""Training on several processes with torchrun and torch.distributed (DistributedDataParallel).

    torchrun --nproc_per_node=4 -m vtreid.train --method hc --dataset sysu --data-root /data/SYSU-MM01

``setup()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR / MASTER_PORT) and
starts the process group: NCCL when the run's device is CUDA (one GPU per rank: cuda:LOCAL_RANK),
gloo on CPU. Without torchrun it returns the single-process context and nothing is initialised.

The samplers' group sizes in a preset are the paper's global batch: each rank draws 1/world of the
identity groups (whole groups, never the same identity on two ranks in one step). Global mining:
``gather`` concatenates every rank's rows (features with gradients, labels, modalities) with
torch.distributed.nn.functional.all_gather, whose backward returns each rank its rows' gradient, so
hard mining and modality centres see the global batch as one process with that batch would.

A step with several losses, each stepping its own optimiser (HSME's per_stream variant), takes each
loss's gradient with torch.autograd.grad, which DDP does not support. Such runs do DDP's part with
torch.distributed directly: rank 0's parameters and buffers at the start (``broadcast_module``), its
buffers before each forward (``broadcast_buffers``, as DDP's broadcast_buffers=True), and each
gradient averaged over the ranks (``average_gradients``), as DDP's all-reduce does.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str) -> tuple[Context, str]:
    """(context, device name for this rank). Under torchrun with CUDA, each rank takes cuda:LOCAL_RANK."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Context(), device_name
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA device(s): "
                              f"--nproc_per_node must not exceed the GPUs per node")
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Context(rank, world, local_rank), device_name


def teardown(ctx: Context, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first meets the others at a barrier: rank 0
    still writes results after the last collective, and a gloo rank that destroyed its group (closing its
    connections) while another was still tearing down could be aborted from a gloo thread ("terminate
    called without an active exception", exit -6, seen once in CI). After an error the barrier is skipped:
    the other ranks may be inside a collective that will never match it."""
    if ctx.enabled and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def per_rank(value: int, name: str, ctx_world: int) -> int:
    """A global batch setting split over the ranks; it must divide by the world size."""
    if value % ctx_world:
        raise ConfigError(f"{name} = {value} (the global batch) does not divide by the world size {ctx_world}; "
                          f"choose a multiple of {ctx_world}")
    return value // ctx_world


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: all_gather's backward exchanges the
    gradient slices with all_to_all, which reads a strided slice (e.g. from a transpose) wrongly."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def gather(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of each tensor, concatenated in rank order (all ranks must call it with the same
    number of rows). Float tensors keep their gradient path back to their own rank; integer tensors are
    gathered plainly. A single process gets its tensors back."""
    if world_size() == 1:
        return tensors
    from torch.distributed.nn.functional import all_gather
    out = []
    for t in tensors:
        if t.is_floating_point():
            with warnings.catch_warnings():  # deprecated for a private API; still the public autograd gather
                warnings.simplefilter("ignore", FutureWarning)
                parts = all_gather(t.contiguous())
            out.append(torch.cat([_ContiguousGrad.apply(p) for p in parts]))
        else:
            parts = [torch.empty_like(t) for _ in range(world_size())]
            dist.all_gather(parts, t.contiguous())
            out.append(torch.cat(parts))
    return tuple(out)


def _coalesced(tensors: list[torch.Tensor], collective) -> list[torch.Tensor]:
    """``collective`` (in place) on one flat buffer per dtype of ``tensors``, as DDP coalesces its
    communication; returns each tensor's slice of the result, shaped like it."""
    out: list[torch.Tensor] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for k, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(k)
    for index in by_dtype.values():
        flat = torch.cat([tensors[k].reshape(-1) for k in index])
        collective(flat)
        offset = 0
        for k in index:
            out[k] = flat[offset:offset + tensors[k].numel()].view_as(tensors[k])
            offset += tensors[k].numel()
    return out


def _broadcast(tensors: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for t, value in zip(tensors, _coalesced(tensors, lambda flat: dist.broadcast(flat, src=0))):
            t.copy_(value)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if world_size() > 1:
        _broadcast(list(module.buffers()))


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a module)."""
    if world_size() > 1:
        _broadcast([p.detach() for p in module.parameters()] + list(module.buffers()))


def average_gradients(grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each gradient's mean over the ranks, one all_reduce per dtype. None stays None: the same
    parameters are unused on every rank (one model, one loss)."""
    world = world_size()
    present = [k for k, g in enumerate(grads) if g is not None]
    if world == 1 or not present:
        return list(grads)

    def mean(flat):
        dist.all_reduce(flat)
        flat /= world
    out = list(grads)
    for k, g in zip(present, _coalesced([grads[k] for k in present], mean)):
        out[k] = g
    return out


def all_agree(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (a stop request, a non-finite loss)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` averaged over the ranks (a NaN on one rank is NaN on every rank); one process: ``t``. The loss
    terms a step logs: a rank's mean over its rows, averaged, is the mean over the global batch. Sums into
    ``t`` itself (no copy): pass a tensor of your own."""
    if world_size() == 1:
        return t
    dist.all_reduce(t)
    return t / world_size()


def gather_objects(obj) -> list:
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
