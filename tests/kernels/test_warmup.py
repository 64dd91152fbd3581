"""ops.warmup() tunes every Triton kernel a job uses before it starts, and bucketed keys keep it tuned for
every size in a bucket: after warmup, the steady-state calls benchmark nothing (CUDA-graph capturable)."""
import os

import pytest
import torch
import triton

import vtreid.ops as ops
from vtreid.kernels import pairwise_distance as k_pair

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter")


def _counting_tuner(kernel, monkeypatch):
    """Give ``kernel`` two configs (the interpreter has one, and then never tunes) and count benchmarks."""
    configs = [triton.Config(dict(c.kwargs), num_warps=4) for c in kernel.configs] * 2
    benched = []

    def bench(kernel_call, quantiles):
        kernel_call()
        benched.append(1)
        return [1.0, 1.0, 1.0]
    monkeypatch.setattr(kernel, "configs", configs)
    monkeypatch.setattr(kernel, "cache", {})
    monkeypatch.setattr(kernel, "early_config_prune", None)
    monkeypatch.setitem(kernel.__dict__, "do_bench", bench)
    return benched


def test_warmup_runs_every_op_forward_and_backward():
    calls = ops.warmup(batch=8, dim=16, classes=5, galleries=(12,), device="cpu", backend="triton")
    assert [op for op, _ in calls] == ["pairwise_distance", "hard_mining", "hetero_center_loss",
                                       "normalized_cross_entropy", "pairwise_distance"]
    with pytest.raises(ValueError, match="batch"):
        ops.warmup(batch=1, dim=16, device="cpu")
    # every size is checked before any op runs (they failed deep in torch.randn)
    with pytest.raises(ValueError, match="classes must be an int >= 1, got -2"):
        ops.warmup(batch=8, dim=16, classes=-2, device="cpu")
    with pytest.raises(ValueError, match=r"galleries\[1\] must be an int >= 1, got 2.5"):
        ops.warmup(batch=8, dim=16, galleries=(4, 2.5), device="cpu")
    with pytest.raises(TypeError, match="dtype must be float32"):
        ops.warmup(batch=8, dim=16, dtype=torch.int64, device="cpu")
    np = pytest.importorskip("numpy")   # NumPy's integers are sizes like Python's
    assert len(ops.warmup(batch=np.int64(8), dim=16, device="cpu", backend="reference")) == 3


def test_after_warmup_sizes_in_the_same_bucket_do_not_retune(monkeypatch):
    benched = _counting_tuner(k_pair._pairwise_fwd_kernel, monkeypatch)
    ops.warmup(batch=20, dim=16, device="cpu", backend="triton")
    tuned = len(benched)
    assert tuned > 0, "warmup tuned the forward"
    for n in (17, 24, 32):  # bucket 32, as 20
        ops.pairwise_distance(torch.randn(n, 9), backend="triton")  # D = 9: bucket 16, as 16
    assert len(benched) == tuned, "a size in a tuned bucket benchmarked again"
    ops.pairwise_distance(torch.randn(40, 16), backend="triton")  # bucket 64: a new key
    assert len(benched) > tuned
