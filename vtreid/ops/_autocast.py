"""What the ops do inside ``torch.autocast``.

The fused kernels take one float dtype and accumulate in float32; autocast would otherwise hand them
mixed dtypes (a bfloat16 embedding and a float32 class weight) and, inside the native kernels, re-cast
the ATen calls they make. So, when autocast is on for the inputs' device, an op casts its floating
tensor arguments to one dtype and runs with autocast off:

    lower=True   autocast's dtype (normalized_logits / normalized_cross_entropy: matmul-like, as F.linear;
                 as autocast does, float64 tensors are left alone)
    lower=False  the widest dtype among the inputs (distances, mining, centres: as torch.cdist promotes)

The device is the first tensor argument's, positional or keyword. Without a float tensor the op runs as
called, so that its own checks name the argument.

The backward runs with autocast off too (``without_autocast``; the native ops' in csrc/autograd.cpp).
"""
from __future__ import annotations

import functools

import torch


def autocast_inputs(lower: bool):
    def decorate(op):
        @functools.wraps(op)
        def wrapper(*args, **kwargs):
            first = _first_tensor(args, kwargs)
            if first is None or not torch.is_autocast_enabled(first.device.type):
                return op(*args, **kwargs)
            device = first.device.type
            floats = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
            if not floats:
                return op(*args, **kwargs)
            if lower:
                dtype = torch.get_autocast_dtype(device)
            else:
                dtype = functools.reduce(torch.promote_types, (t.dtype for t in floats))

            def cast(a):
                if not isinstance(a, torch.Tensor) or not a.is_floating_point() or (lower and a.dtype == torch.float64):
                    return a
                return a.to(dtype)
            with torch.autocast(device, enabled=False):
                return op(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
        return wrapper
    return decorate


def _first_tensor(args, kwargs) -> torch.Tensor | None:
    for a in args:   # the first positional argument, as a rule: no list built on the common path
        if isinstance(a, torch.Tensor):
            return a
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def without_autocast(backward):
    """An autograd backward(ctx, *grads) run as autocast_inputs runs its forward, with autocast off: the
    torch calls in the Triton launchers keep their dtypes when backward() is called inside torch.autocast
    (csrc/autograd.cpp does the same for the native ops)."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        device = next((g.device.type for g in grads if isinstance(g, torch.Tensor)), None)
        if device is None or not torch.is_autocast_enabled(device):
            return backward(ctx, *grads)
        with torch.autocast(device, enabled=False):
            return backward(ctx, *grads)
    return run
