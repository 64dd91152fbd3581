"""bench/overhead.py --stub-kernels: the Triton path's host cost on a CPU (the launchers run, the kernels not)."""
import json

import pytest
import torch

from bench import overhead
from support import require_backend
from vtreid.kernels import pairwise_distance as k_pair


def test_stubbed_triton_overhead_runs_every_op_and_restores_the_kernels(tmp_path):
    require_backend("triton", "cpu", torch.float32)
    real = k_pair._pairwise_fwd_kernel
    out = tmp_path / "overhead.jsonl"
    overhead.main(["--backend", "triton", "--stub-kernels", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["op"], r["mode"]) for r in rows} == {(op, mode) for op in overhead.cases("triton")
                                                    for mode in ("forward", "full")}
    assert all(r["stub_kernels"] and r["backend"] == "triton" and 0 < r["us_public"] < 1e5 for r in rows)
    assert k_pair._pairwise_fwd_kernel is real


def test_stubbed_kernels_launch_nothing_but_their_grids_run():
    require_backend("triton", "cpu", torch.float32)
    import vtreid.ops as ops
    x = torch.randn(40, 24)
    with overhead.stub_kernels():
        assert isinstance(k_pair._pairwise_fwd_kernel, overhead._NoLaunch)
        dist = ops.pairwise_distance(x, backend="triton")
        assert dist.shape == (40, 40)
    assert not isinstance(k_pair._pairwise_fwd_kernel, overhead._NoLaunch)
    with pytest.raises(AttributeError):
        overhead._NoLaunch(k_pair._pairwise_fwd_kernel).no_such_attribute
