"""What every kernel module shares about launching: autotune configs that the tools can enumerate, the
device guard, and the hardware grid limits.

``autotune(gpu_configs, interpreter_config, key, ...)`` wraps ``triton.autotune``. Under the interpreter it
tunes over the single ``interpreter_config`` (the interpreter would otherwise run every candidate); the
full GPU list stays on the kernel as ``kernel.gpu_configs``, so scripts/compile_triton.py can compile every
variant and tests/kernels/test_autotune.py can tune over all of them.

``on_device_of(arg)`` makes a launch function run with its tensors' CUDA device current: Triton launches
on the current device, so tensors on cuda:1 while device 0 is current would otherwise fail.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: CUDA grid limits: dimension 0 (x) up to 2^31 - 1 programs, dimensions 1 and 2 up to 65535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def autotune(gpu_configs, interpreter_config, key, **kwargs):
    configs = [triton.Config(interpreter_config, num_warps=4)] if INTERPRET else list(gpu_configs)

    def wrap(fn):
        tuner = triton.autotune(configs=configs, key=key, **kwargs)(fn)
        tuner.gpu_configs = list(gpu_configs)
        return tuner
    return wrap


def device_guard(t: torch.Tensor):
    """A context in which ``t``'s CUDA device is current (nothing for CPU tensors)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def on_device_of(arg: str):
    """Decorator: run the launch function under device_guard(<its argument ``arg``>)."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def launch(*args, **kwargs):
            tensor = signature.bind(*args, **kwargs).arguments[arg]
            with device_guard(tensor):
                return fn(*args, **kwargs)
        launch.device_guard_arg = arg
        return launch
    return wrap
