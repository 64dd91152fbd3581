"""What every kernel module shares about launching: autotune configs that the tools can enumerate, the
device guard, and the hardware grid limits.

``autotune(gpu_configs, interpreter_config, key, ...)`` wraps ``triton.autotune``. Under the interpreter it
tunes over the single ``interpreter_config`` (the interpreter would otherwise run every candidate); the
full GPU list stays on the kernel as ``kernel.gpu_configs``, so scripts/compile_triton.py can compile every
variant and tests/kernels/test_autotune.py can tune over all of them.

``on_device_of(arg)`` makes a launch function run with its tensors' CUDA device current: Triton launches
on the current device, so tensors on cuda:1 while device 0 is current would otherwise fail.

``bucket(n)`` is what autotune keys see instead of an exact size: the next power of two (at least 16).
Keying on exact N retuned at every new batch or gallery size (seconds at large N, and a first call of a
shape could not be captured in a CUDA graph); a bucket's configs are valid for every size in it, only
possibly a little less fast. Kernels take the buckets as extra (unused) integer arguments named
``*_BUCKET`` and list those in ``key``.

``not_on(config, arch)`` marks a config the tuner never picks on that architecture (e.g. 80: sm_80's ptxas
spills it although sm_90's does not); ``configs_for`` and ``prune_to_waves`` drop it there, and
scripts/compile_triton.py does not compile it for that architecture. The marks cover the architectures the
compile table sweeps: 80, 86, 87 (Jetson Orin), 89, 90, 100 (B200) and 120 (RTX 50xx, RTX PRO 6000
Blackwell), and 103 (B300) and 121 (DGX Spark), which a mark of 100 or 120 covers (``SAME_SPILLS``); another
one (sm_110, ...) matches none and may tune over every config. ``SM_86_89`` names the consumer and inference
parts (sm_86: RTX 30xx, A10, A40; sm_89: RTX 40xx, L4, L40), on which ptxas allocates registers alike (the
compile table's rows for the two are identical) and differently from sm_80.

``num_sms(device)`` and ``WAVE_SMS`` size the grids: a split launch picks its split count so that the
training shapes give at least one program per SM (tests/kernels/test_launch_waves.py checks it for a
132-SM H100 and for the largest part of each swept architecture, with every GPU config tuned there).
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

#: SM count assumed off a GPU (CPU tensors, the interpreter): an H100 SXM's, the largest target.
WAVE_SMS = 132

#: sm_86 and sm_89, for not_on: one ptxas behaviour in the compile table (and 99 KB of shared memory a block).
SM_86_89 = (86, 89)

#: Architectures a not_on mark extends to: their full sweeps (Triton 3.9's ptxas 12.9; 3.6's knows neither) spill
#: in the same configs as the marked one's (sm_103: exactly sm_100's marks; sm_121: all but one of sm_120's).
SAME_SPILLS = {100: (103,), 120: (121,)}


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host. triton.cdiv and triton.next_power_of_2 are ConstexprFunctions whose
    host calls unwrap their arguments (~1.5 us each; a pairwise backward made 14 of them per call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for n <= 0, as triton.next_power_of_2), on the host."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def bucket(n: int) -> int:
    """The autotune key of a size: the next power of two, at least 16 (one bucket for all small sizes)."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def device_arch(device: torch.device) -> int | None:
    """``device``'s compute capability as an integer (90 for sm_90; cached, no synchronisation), None off a
    GPU."""
    if device.type == "cuda":
        return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())
    return None


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``'s GPU (cached, no synchronisation); WAVE_SMS off a GPU."""
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return WAVE_SMS


def splits_for(blocks: int, tiles: int, sms: int) -> int:
    """How many slices to cut a loop of ``tiles`` steps into so that ``blocks`` programs per slice fill
    ``sms`` SMs at least once (never more slices than steps, at least one)."""
    return max(1, min(tiles, -(-sms // max(1, blocks))))


def configs_union(by_dtype: dict) -> list:
    """Every config of a {precision: configs} table once, in table order (the autotuner's full list)."""
    out = []
    for configs in by_dtype.values():
        out += [c for c in configs if all(c is not o for o in out)]
    return out


def not_on(config, *archs: int):
    """``config``, marked as never to be picked on these architectures (compute capability as 80, 90; a mark
    of 100 or 120 covers 103 or 121 too: ``SAME_SPILLS``)."""
    config.not_on = frozenset(archs).union(*(SAME_SPILLS.get(a, ()) for a in archs))
    return config


def usable_on(config, arch: int | None) -> bool:
    return arch not in getattr(config, "not_on", ())


def configs_for(by_dtype: dict, dtype: torch.dtype, arch: int | None = None) -> list:
    """The configs of ``by_dtype`` for inputs of ``dtype`` (float32 runs IEEE dots, fp16/bf16 tensor
    cores), less those marked ``not_on`` ``arch``."""
    return [c for c in by_dtype["fp32" if dtype == torch.float32 else "half"] if usable_on(c, arch)]


_MOST_SPLITS: dict = {}


def most_splits(grid_fn, kernel, family, *shape: int, sms: int, splits: int | None) -> int:
    """The most splits (grid axis 1 of ``grid_fn(*shape, meta, sms, splits)``) that any config ``kernel`` may
    launch with gives at this shape: what sizes a split launch's partial buffers. The configs are the
    kernel's current ones, ``family``'s GPU list and its interpreter meta. Memoised per shape (a training
    step asks the same every time, and the scan over ~20 configs cost more than the rest of a launcher)
    and per config list object, kept referenced so that its id is not reused: a list replaced by a test
    or the warm-up is seen."""
    configs = getattr(kernel, "configs", None)
    memo = _MOST_SPLITS.get(grid_fn)
    if memo is None or memo[0] is not configs or len(memo[1]) > 1024:
        memo = _MOST_SPLITS[grid_fn] = (configs, {})
    key = (shape, sms, splits)
    if key not in memo[1]:
        metas = [c.kwargs for c in [*(configs or []), *family[0]]] + [family[1]]
        memo[1][key] = max(grid_fn(*shape, meta, sms, splits)[1] for meta in metas)
    return memo[1][key]


def prune_to_waves(programs, by_dtype=None, operand=None):
    """An autotune ``early_config_prune``: first the configs usable on the device's architecture
    (``not_on``) and of the launch's precision (``by_dtype``, chosen by the dtype of argument
    ``operand``), then those whose grid, ``programs(meta, args)``, gives every SM of the device a program,
    when at least one does (at large sizes all do, and the tuner picks among all of them); otherwise it
    keeps them all."""
    def prune(configs, nargs, **kwargs):
        args = {**nargs, **kwargs}
        tensor = next(v for v in args.values() if isinstance(v, torch.Tensor))
        arch = device_arch(tensor.device)
        configs = [c for c in configs if usable_on(c, arch)] or list(configs)
        if by_dtype is not None and isinstance(args.get(operand), torch.Tensor):
            allowed = configs_for(by_dtype, args[operand].dtype)
            configs = [c for c in configs if any(c is a for a in allowed)] or list(configs)
        sms = num_sms(tensor.device)
        full = [c for c in configs if programs(c.kwargs, args) >= sms]
        return full or list(configs)
    return prune


def autotune(gpu_configs, interpreter_config, key, **kwargs):
    configs = [triton.Config(interpreter_config, num_warps=4)] if INTERPRET else list(gpu_configs)

    def wrap(fn):
        tuner = triton.autotune(configs=configs, key=key, **kwargs)(fn)
        tuner.gpu_configs = list(gpu_configs)
        return tuner
    return wrap


_NO_GUARD = contextlib.nullcontext()


def device_guard(t: torch.Tensor):
    """A context in which ``t``'s CUDA device is current (nothing for CPU tensors, or when it already is)."""
    if t.device.type == "cuda" and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NO_GUARD


def on_device_of(arg: str):
    """Decorator: run the launch function under device_guard(<its argument ``arg``>). The argument is found
    by position (or keyword) without binding the signature per call (inspect's bind cost ~4 us a launch)."""
    def wrap(fn):
        position = list(inspect.signature(fn).parameters).index(arg)

        @functools.wraps(fn)
        def launch(*args, **kwargs):
            with device_guard(args[position] if position < len(args) else kwargs[arg]):
                return fn(*args, **kwargs)
        launch.device_guard_arg = arg
        return launch
    return wrap
