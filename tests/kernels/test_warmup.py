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
    assert [op for op, _ in calls] == ["pairwise_distance", "hard_mining", "hard_mining", "hetero_center_loss",
                                       "normalized_cross_entropy", "pairwise_distance"]
    calls = ops.warmup(batch=8, dim=16, galleries=(12,), metrics=("euclidean", "cosine"),
                       mining=(("cosine", "any", "any"),), device="cpu", backend="triton")
    assert [op for op, _ in calls] == ["pairwise_distance", "pairwise_distance", "hard_mining", "hetero_center_loss",
                                       "pairwise_distance", "pairwise_distance"]
    with pytest.raises(ValueError, match=r"metrics\[1\] must be one of"):
        ops.warmup(batch=8, dim=16, metrics=("euclidean", "l1"), device="cpu")
    with pytest.raises(TypeError, match="metrics must be a tuple"):
        ops.warmup(batch=8, dim=16, metrics="cosine", device="cpu")
    with pytest.raises(ValueError, match=r"mining\[0\] negative must be one of"):
        ops.warmup(batch=8, dim=16, mining=(("euclidean", "cross", "other"),), device="cpu")
    with pytest.raises(ValueError, match=r"mining\[0\] metric must be one of"):
        ops.warmup(batch=8, dim=16, mining=(("cross", "cross", "same"),), device="cpu")
    with pytest.raises(ValueError, match=r"mining\[0\] must be a \(metric, positive, negative\) triple"):
        ops.warmup(batch=8, dim=16, mining=(("cross", "same"),), device="cpu")
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
    assert len(ops.warmup(batch=np.int64(8), dim=16, device="cpu", backend="reference")) == 4


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


def test_after_warmup_the_library_own_mining_does_not_retune(monkeypatch):
    """The mining tuning is kept per rule pair: the default warm-up mines as HSME's ranking loss does (it
    mined with other rules, and the first training step tuned again)."""
    from vtreid.kernels import hard_mining as k_mining
    from vtreid.losses import reciprocal_ranking_loss
    benched = _counting_tuner(k_mining._mining_fwd_kernel, monkeypatch)
    ops.warmup(batch=16, dim=8, device="cpu", backend="triton")
    tuned = len(benched)
    assert tuned > 0, "warmup tuned the mining forward"
    x, labels, modality = torch.randn(16, 8), torch.arange(16) // 4, torch.arange(16) % 2
    reciprocal_ranking_loss(x, labels, modality, backend="triton")
    assert len(benched) == tuned, "the ranking loss benchmarked the mining again"
