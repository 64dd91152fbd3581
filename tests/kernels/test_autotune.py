"""Autotuning cannot corrupt results: every autotuned kernel, under the interpreter, tuned over all of its
GPU configs with a benchmarking stand-in that launches each config several times on the live buffers (as
triton's GPU autotuner does), must give exactly what one plain launch of the chosen config gives.
(The normalized-softmax weight-gradient kernel read-modify-writes COL_GZ and had no restore_value: its
first call per shape returned a multiplied gradient.)"""
import os

import pytest
import torch

from vtreid.kernels import hard_mining as k_mining
from vtreid.kernels import normalized_softmax as k_nce
from vtreid.kernels import pairwise_distance as k_pair

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter")

BENCH_RUNS = 3


def _tune_all(kernel, monkeypatch, winner: int):
    """Tune ``kernel`` over its GPU configs; the stand-in benchmark makes config ``winner`` the fastest."""
    configs = kernel.gpu_configs
    calls = []

    def bench(kernel_call, quantiles):
        for _ in range(BENCH_RUNS):
            kernel_call()
        index = len(calls) % len(configs)  # configs are benchmarked in order, once per tuning key
        calls.append(index)
        rank = 0.0 if index == winner else 1.0 + index
        return [rank, rank, rank]
    monkeypatch.setattr(kernel, "configs", list(configs))
    monkeypatch.setattr(kernel, "cache", {})
    monkeypatch.setattr(kernel, "early_config_prune", None)  # every config, whatever its precision or grid
    monkeypatch.setitem(kernel.__dict__, "do_bench", bench)
    return calls


def _plain(kernel, monkeypatch, config):
    monkeypatch.setattr(kernel, "configs", [config])
    monkeypatch.setattr(kernel, "cache", {})


def _cases():
    x, y = torch.randn(47, 7), torch.randn(130, 7)
    labels_x, labels_y = torch.arange(47) % 5, torch.arange(130) % 5
    w, target = torch.randn(130, 7), torch.arange(47) % 130
    g, grad_row = torch.randn(47, 130), torch.rand(47)
    return {
        "_pairwise_fwd_kernel": (k_pair, lambda: k_pair.forward(x, y, "euclidean", 1e-6)),
        "_pairwise_bwd_kernel": (k_pair, lambda: k_pair.backward(g, k_pair.forward(x, y, "euclidean", 1e-6)[0], x, y,
                                                                 (x * x).sum(1), (y * y).sum(1), "euclidean")),
        "_mining_fwd_kernel": (k_mining, lambda: k_mining.forward(x, labels_x, y, labels_y, None, None, "euclidean",
                                                                  "any", "any", False, 1e-6)),
        "_nce_fwd_kernel": (k_nce, lambda: k_nce.cross_entropy_forward(x, w, target, 14.0, 0.1, True)),
        "_nce_grad_kernel": (k_nce, lambda: k_nce.cross_entropy_backward(
            grad_row, x, w, target, *k_nce.cross_entropy_forward(x, w, target, 14.0, 0.1, False)[1:], 14.0,
            0.1)),
    }


def test_every_autotuned_kernel_is_covered():
    tuned = {name for module in (k_pair, k_mining, k_nce) for name, obj in vars(module).items()
             if hasattr(obj, "gpu_configs")}
    assert tuned == set(_cases()), tuned


@pytest.mark.parametrize("name", sorted(_cases()))
def test_autotuning_on_live_buffers_gives_a_plain_launch_result(name, monkeypatch):
    module, run = _cases()[name]
    kernel = getattr(module, name)
    winner = len(kernel.gpu_configs) - 1
    with monkeypatch.context() as m:
        calls = _tune_all(kernel, m, winner)
        tuned = run()
        assert calls and len(calls) % len(kernel.gpu_configs) == 0, "the stand-in benchmarked every config"
        chosen = kernel.best_config
    assert chosen.kwargs == kernel.gpu_configs[winner].kwargs
    with monkeypatch.context() as m:
        _plain(kernel, m, chosen)
        plain = run()
    for a, b in zip(tuned, plain):
        assert torch.equal(a, b), f"{name}: autotuning changed the result (max diff {(a - b).abs().max()})"


def test_autotuning_the_chunked_weight_gradient_reads_only_the_launched_splits(monkeypatch):
    """Several row chunks share one buffer of partial column sums: the benchmarked configs with more row
    splits than the winner write rows its launch leaves alone, and summing them once put those stale partial
    sums into grad_w (the first call of each size on a GPU)."""
    kernel = k_nce._nce_grad_kernel
    monkeypatch.setattr(k_nce, "MAX_CHUNK_ELEMENTS", 32 * 40)  # 64 rows, 40 classes: two chunks
    x, w, target, grad_row = torch.randn(64, 24), torch.randn(40, 24), torch.arange(64) % 40, torch.rand(64)

    def run():
        return k_nce.cross_entropy_backward(
            grad_row, x, w, target, *k_nce.cross_entropy_forward(x, w, target, 14.0, 0.1, False)[1:], 14.0, 0.1)

    splits = [k_nce.grad_grid(32, 40, c.kwargs, k_nce.num_sms(x.device))[1] for c in kernel.gpu_configs]
    winner = splits.index(min(splits))
    assert max(splits) > splits[winner], splits  # a loser writes more rows than the winner
    with monkeypatch.context() as m:
        _tune_all(kernel, m, winner)
        tuned = run()
        chosen = kernel.best_config
    with monkeypatch.context() as m:
        _plain(kernel, m, chosen)
        plain = run()
    for name, a, b in zip(("grad_x", "grad_w"), tuned, plain):
        assert torch.equal(a, b), f"{name}: autotuning changed the result (max diff {(a - b).abs().max()})"
