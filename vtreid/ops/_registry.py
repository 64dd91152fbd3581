"""Registration of a fused op family's forward/backward pair with torch.library.

Every op family has the same shape: ``<name>_fwd`` returns the outputs plus whatever the backward
needs, ``<name>_bwd`` returns the input gradients. The native pair is defined in C++
(torch.ops.vtreid.<name>_fwd/_bwd, csrc/ops.cpp) with its autograd in C++ too (csrc/autograd.cpp: less
fixed cost per call than the Python formula); the Triton pair is defined in Python with
``torch.library.custom_op`` and gets the family's autograd formula here. Both save the same tensors and
call their ``_bwd`` op the same way, and both get the same fake kernels, so ``torch.compile`` and
``torch.library.opcheck`` treat them alike.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import _backend
from ._autocast import without_autocast


class FusedOp(NamedTuple):
    forward: Callable
    backward: Callable


def _native_ops(name: str):
    ok, _, _ = _backend.native_status()
    if not ok:
        return None
    rebuild = "the built extension is older than the Python sources; rebuild it with " \
              "`pip install --no-build-isolation -e .`"
    try:
        pair = getattr(torch.ops.vtreid, f"{name}_fwd").default, getattr(torch.ops.vtreid, f"{name}_bwd").default
    except AttributeError as exc:
        raise ImportError(f"vtreid._C has no op {name}_fwd/_bwd: {rebuild}") from exc
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vtreid::{name}_fwd", "Autograd"):
        raise ImportError(f"vtreid._C has no autograd for {name}_fwd (csrc/autograd.cpp): {rebuild}")
    return pair


def register_fused_op(name: str, *, triton, fake_forward, fake_backward, setup_context, make_backward,
                      ) -> dict[str, FusedOp]:
    """Give both fused backends of ``name`` their fake kernels and autograd; returns {backend: FusedOp}."""
    fused = {}
    pairs = {"triton": triton, "native": _native_ops(name)}
    for backend, pair in pairs.items():
        if pair is None:
            continue
        forward, backward = pair
        torch.library.register_fake(forward)(fake_forward)
        torch.library.register_fake(backward)(fake_backward)
        if backend == "triton":  # the native forward's autograd is registered in C++
            torch.library.register_autograd(forward, without_autocast(make_backward(backward)),
                                            setup_context=setup_context)
        fused[backend] = FusedOp(forward, backward)
    return fused
