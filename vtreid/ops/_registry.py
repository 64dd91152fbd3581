"""Registration of a fused op family's forward/backward pair with torch.library.

Every op family has the same shape: ``<name>_fwd`` returns the outputs plus whatever the backward
needs, ``<name>_bwd`` returns the input gradients. The native pair is defined in C++
(torch.ops.vtreid.<name>_fwd/_bwd, csrc/ops.cpp) with its autograd in C++ too (csrc/autograd.cpp: less
fixed cost per call than the Python formula); the Triton pair is registered here with
``torch.library.custom_op`` from the module's two launcher functions and gets the family's autograd
formula. Both save the same tensors and call their ``_bwd`` op the same way, and both get the same fake
kernels, so ``torch.compile`` and ``torch.library.opcheck`` treat them alike.

The public functions call ``FusedOp.call``. For Triton outside torch.compile that is a
``torch.autograd.Function`` with the same formula around the launchers themselves: the custom op's
Python dispatch (schema defaults, redispatch, its own autograd wrapper) cost about as much again as the
formula (CPU, launchers stubbed, forward + backward: pairwise 58 -> 34 us, mining 97 -> 48 us).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import _backend
from ._autocast import without_autocast


class FusedOp(NamedTuple):
    forward: Callable   # the registered forward op (what torch.compile traces and opcheck checks)
    backward: Callable  # the registered backward op
    call: Callable      # what the public functions call: ``forward``, or its eager fast path (Triton)


_REBUILD = "the built extension is older than the Python sources; rebuild it with " \
           "`pip install --no-build-isolation -e .`"


def native_op(name: str):
    """torch.ops.vtreid.<name>.default of the built extension; an ImportError that says to rebuild when
    the extension predates the op."""
    try:
        return getattr(torch.ops.vtreid, name).default
    except AttributeError as exc:
        raise ImportError(f"vtreid._C has no op {name}: {_REBUILD}") from exc


def _native_ops(name: str):
    ok, _, _ = _backend.native_status()
    if not ok:
        return None
    pair = native_op(f"{name}_fwd"), native_op(f"{name}_bwd")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vtreid::{name}_fwd", "Autograd"):
        raise ImportError(f"vtreid._C has no autograd for {name}_fwd (csrc/autograd.cpp): {_REBUILD}")
    return pair


def _eager_call(name: str, launch_forward, launch_backward, forward_op, backward_op, setup_context, make_backward):
    """forward_op's autograd without its dispatch: a torch.autograd.Function around the launchers, used
    outside torch.compile (which traces the registered op). A double backward goes through backward_op,
    whose missing derivative is then an error that names it, as with the registered forward."""
    eager_backward = without_autocast(make_backward(launch_backward))
    graph_backward = without_autocast(make_backward(backward_op))

    # forward(ctx, ...) rather than a setup_context method: apply() binds a setup_context Function's
    # arguments with inspect.signature on every call (~30 us)
    def forward(ctx, *args):
        out = launch_forward(*args)
        setup_context(ctx, args, out)
        return out

    def backward(ctx, *grads):
        return (graph_backward if torch.is_grad_enabled() else eager_backward)(ctx, *grads)

    # built with type(): the class name is fixed at creation and names the grad_fn (<name>_tritonBackward)
    eager = type(f"{name}_triton", (torch.autograd.Function,),
                 {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args):
        if torch.compiler.is_compiling():
            return forward_op(*args)
        return eager.apply(*args)
    return call


def register_fused_op(name: str, *, triton, fake_forward, fake_backward, setup_context, make_backward,
                      ) -> dict[str, FusedOp]:
    """Give both fused backends of ``name`` their fake kernels and autograd; returns {backend: FusedOp}.

    ``triton`` is the pair of launcher functions (type-annotated: their signatures become the schemas of
    torch.ops.vtreid.<name>_triton_fwd / _bwd)."""
    fused = {}
    launch_forward, launch_backward = triton
    triton_ops = (torch.library.custom_op(f"vtreid::{name}_triton_fwd", launch_forward, mutates_args=()),
                  torch.library.custom_op(f"vtreid::{name}_triton_bwd", launch_backward, mutates_args=()))
    for backend, pair in {"triton": triton_ops, "native": _native_ops(name)}.items():
        if pair is None:
            continue
        forward, backward = pair
        torch.library.register_fake(forward)(fake_forward)
        torch.library.register_fake(backward)(fake_backward)
        call = forward
        if backend == "triton":  # the native forward's autograd is registered in C++
            torch.library.register_autograd(forward, without_autocast(make_backward(backward)),
                                            setup_context=setup_context)
            call = _eager_call(name, launch_forward, launch_backward, forward, backward, setup_context,
                               make_backward)
        fused[backend] = FusedOp(forward, backward, call)
    return fused
