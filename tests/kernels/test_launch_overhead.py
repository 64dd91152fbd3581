"""The launchers' fixed cost on the host: what the small training shapes wait for on a GPU, where the first
H100 run was host-bound (eager pairwise 256^2 forward + backward took 1.1 ms)."""
import pytest
import torch
import triton

from support import launch_every_op, record_launches
from vtreid.kernels import _launch


def test_host_helpers_match_triton():
    for n in range(0, 3000):
        assert _launch.next_power_of_2(n) == triton.next_power_of_2(n), n
        for b in (1, 3, 16, 64, 128):
            assert _launch.cdiv(n, b) == triton.cdiv(n, b), (n, b)


def test_launchers_call_no_triton_constexpr_function_on_the_host(monkeypatch):
    """triton.cdiv and triton.next_power_of_2 are ConstexprFunctions: ~1.5 us a host call, 14 calls in a
    pairwise backward, 24 config scans' worth in a normalized-CE forward. The launchers use
    _launch.cdiv / next_power_of_2."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a launcher called a Triton ConstexprFunction on the host")
    monkeypatch.setattr(triton, "cdiv", forbidden)
    monkeypatch.setattr(triton, "next_power_of_2", forbidden)
    launches = record_launches(monkeypatch)
    launch_every_op(256, 256, 2048, 395, torch.float32)
    assert launches


@pytest.mark.parametrize("how", ["positional", "keyword"])
def test_device_guard_finds_its_argument_by_position_or_keyword(monkeypatch, how):
    seen = []
    real = _launch.device_guard
    monkeypatch.setattr(_launch, "device_guard", lambda t: seen.append(t) or real(t))

    @_launch.on_device_of("x")
    def launcher(a, x, scale=1.0):
        return a, x, scale
    a, x = torch.zeros(1), torch.ones(2)
    out = launcher(a, x, 2.0) if how == "positional" else launcher(a, scale=2.0, x=x)
    assert out == (a, x, 2.0) and len(seen) == 1 and seen[0] is x
    assert launcher.device_guard_arg == "x"
