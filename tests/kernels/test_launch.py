"""What the GPU review of the Triton launches found, checked without a GPU (defects 2, 6, 7 of issue 14)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vtreid.ops as ops
from vtreid.kernels import _launch
from vtreid.kernels import hard_mining as k_mining
from vtreid.kernels import hetero_center as k_center
from vtreid.kernels import normalized_softmax as k_nce
from vtreid.kernels import pairwise_distance as k_pair

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter")

LAUNCHERS = [k_pair.forward, k_pair.backward, k_mining.forward, k_mining.backward, k_center.forward,
             k_center.backward, k_nce.cross_entropy_forward, k_nce.cross_entropy_backward]


def test_pairwise_backward_offsets_are_64_bit():
    """The transposed side of the pairwise backward reads grad at rk * stride: with a row stride just under
    2^31 / 2, rk = 2 passes 2^31. Checked on a strided view whose storage is only reserved (virtual
    memory, three rows touched), in a subprocess because a 32-bit offset wraps and reads 4 GiB before the
    buffer (a crash, or garbage)."""
    code = textwrap.dedent("""
        import torch
        from vtreid.kernels import pairwise_distance as k
        n, m, d = 3, 2, 4
        stride = 2**30 + 8                      # fits int32; 2 * stride does not
        base = torch.empty(stride * (n - 1) + m, dtype=torch.float16)   # ~4 GiB reserved, never filled
        g = base.as_strided((n, m), (stride, 1))
        torch.manual_seed(0)
        g.copy_(torch.randn(n, m))
        x, y = torch.randn(n, d), torch.randn(m, d)
        dist, xsq, ysq = k.forward(x, y, "euclidean", 0.0)
        gx, gy = k.backward(g, dist, x, y, xsq, ysq, "euclidean")
        rx, ry = k.backward(g.contiguous(), dist, x, y, xsq, ysq, "euclidean")
        assert torch.equal(gx, rx) and torch.equal(gy, ry), (gy, ry)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and "ok" in result.stdout, \
        f"rc {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_pairwise_feature_slice_steps_are_64_bit():
    """The forward's dot product steps its pointers by BLOCK_D x the feature stride: a transposed gallery's
    feature stride is its row count, and 32 x (2^26 + 8) passes 2^31. Reserved storage and a subprocess, as
    above (a wrapped step reads before the buffer)."""
    code = textwrap.dedent("""
        import torch
        from vtreid.kernels import pairwise_distance as k
        block = k._pairwise_fwd_kernel.configs[0].kwargs["BLOCK_D"]    # the interpreter's one config
        n, d = 3, block + 1                                            # two feature slices
        stride = 2**31 // block + 8                                    # fits int32; block * stride does not
        base = torch.empty(stride * (d - 1) + n, dtype=torch.float16)  # ~4 GiB reserved, never filled
        x = base.as_strided((n, d), (1, stride))
        torch.manual_seed(0)
        x.copy_(torch.randn(n, d))
        y = torch.randn(2, d, dtype=torch.float16)
        got = k.forward(x, y, "euclidean", 0.0)[0]
        want = k.forward(x.contiguous(), y, "euclidean", 0.0)[0]
        assert torch.equal(got, want), (got, want)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and "ok" in result.stdout, \
        f"rc {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


class _GridRecorder:
    """Stands in for a kernel: records the grids it is launched with, for every config it may run with."""

    def __init__(self, name, kernel, grids):
        self.name, self.kernel, self.grids = name, kernel, grids

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            configs = getattr(self.kernel, "gpu_configs", None) or getattr(self.kernel, "configs", [])
            metas = [c.kwargs for c in configs] or [kwargs]
            for meta in metas:
                g = grid({**kwargs, **meta}) if callable(grid) else grid
                self.grids.append((self.name, tuple(g)))
        return launch


def test_triton_grids_respect_hardware_limits(monkeypatch):
    """Grid axes 1 and 2 stop at 65535 programs on a GPU (the interpreter has no limit): large counts
    (samples, rows) must go on axis 0. Every launch of every kernel, with 70000 samples."""
    grids = []
    for module in (k_pair, k_mining, k_center, k_nce):
        for name in dir(module):
            obj = getattr(module, name)
            if name.startswith("_") and name.endswith("_kernel"):
                monkeypatch.setattr(module, name, _GridRecorder(name, obj, grids))
    n, d = 70000, 2
    x = torch.randn(n, d)
    labels = torch.arange(n) % 7
    mod = torch.arange(n) % 2
    k_pair.forward(x, x[:3], "euclidean", 0.0)
    dist = torch.zeros(n, 3)
    k_pair.backward(dist, dist, x, x[:3], torch.ones(n), torch.ones(3), "euclidean")
    k_mining.forward(x, labels, x[:5], labels[:5], mod, mod[:5], "euclidean", "any", "any", False, 0.0)
    idx = torch.zeros(n, dtype=torch.int64)
    k_mining.backward(torch.ones(n), torch.ones(n), x, x[:5], idx, idx, torch.ones(n), torch.ones(n),
                      torch.ones(n), torch.ones(5), "euclidean")
    order, seg, slot, _, _ = k_center.class_slots(labels)
    out = k_center.forward(x[None], order, seg, mod.int(), "sqeuclidean", True, 0.0)
    k_center.backward(x[None], slot, mod.int(), out[0], out[1], out[2], out[3], out[4], torch.ones(1, n), None,
                      "sqeuclidean", True)
    w = torch.randn(5, d)
    k_nce.cross_entropy_forward(x, w, labels % 5, 1.0, 0.0, True)
    many = torch.zeros(2, 65536 * 64 + 1)  # more candidate tiles of the coefficient pass than axis 1 holds
    k_pair.backward(many, many, x[:2], torch.randn(many.shape[1], d), torch.ones(2), torch.ones(many.shape[1]),
                    "euclidean")
    assert {g[0] for g in grids} >= {"_pairwise_fwd_kernel", "_pairwise_bwd_kernel", "_mining_fwd_kernel",
                                     "_mining_pair_grad_kernel", "_candidate_grad_kernel", "_centers_fwd_kernel",
                                     "_centers_bwd_kernel", "_nce_fwd_kernel", "_slot_rank_kernel",
                                     "_slot_segments_kernel"}, grids
    for name, grid in grids:
        for axis, (count, limit) in enumerate(zip(grid, _launch.GRID_LIMITS)):
            assert 1 <= count <= limit, f"{name}: grid {grid} has {count} programs on axis {axis} (limit {limit})"


def test_every_triton_launch_runs_under_its_device_guard(monkeypatch):
    """Triton launches on the current CUDA device: every launch function must make its tensors' device
    current (tensors on cuda:1 while device 0 is current would fail otherwise)."""
    for fn in LAUNCHERS:
        assert getattr(fn, "device_guard_arg", None), f"{fn.__module__}.{fn.__name__} has no device guard"
    seen = []
    real = _launch.device_guard

    def recording_guard(t):
        seen.append(t.device)
        return real(t)
    monkeypatch.setattr(_launch, "device_guard", recording_guard)
    x = torch.randn(5, 3, requires_grad=True)
    ops.pairwise_distance(x, backend="triton").sum().backward()
    assert len(seen) == 2 and all(dev == x.device for dev in seen)  # forward, backward


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_triton_on_second_gpu():
    x = torch.randn(47, 7, device="cuda:1", requires_grad=True)
    with torch.cuda.device(0):
        out = ops.pairwise_distance(x, backend="triton")
        out.sum().backward()
    torch.testing.assert_close(out, ops.pairwise_distance(x.detach(), backend="reference"))
