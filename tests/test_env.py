import subprocess
import sys

import torch

from vtreid import env


def test_env_report_lists_backends():
    out = subprocess.run([sys.executable, "-m", "vtreid.env"], capture_output=True, text=True, check=True).stdout
    for needle in ("torch", "triton", "vtreid._C", "cpu backends", "reference", "native"):
        assert needle in out


def test_env_help_and_unknown_flags():
    done = subprocess.run([sys.executable, "-m", "vtreid.env", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--check" in done.stdout and "usage" in done.stdout
    done = subprocess.run([sys.executable, "-m", "vtreid.env", "--chekc"], capture_output=True, text=True)
    assert done.returncode == 2 and "unrecognized arguments: --chekc" in done.stderr


def test_env_check_runs_every_op_on_every_backend_of_the_cpu():
    """Under the test suite's TRITON_INTERPRET=1, both fused backends run on the CPU."""
    table, ok = env.check(devices=[torch.device("cpu")], timing=False)
    assert ok, table
    for op in env.OPS:
        for backend in ("native", "triton"):
            line = next(line for line in table.splitlines() if f" {op} " in line and f" {backend} " in line)
            assert " pass " in line or " n/a " in line, line
    assert " pass " in table


def test_env_check_names_the_backend_to_avoid(monkeypatch):
    real = env.ops.hard_mining

    def broken(*args, backend=None, **kwargs):
        out = real(*args, backend=backend, **kwargs)
        return out._replace(pos_dist=out.pos_dist + 1) if backend == "native" else out
    monkeypatch.setattr(env.ops, "hard_mining", broken)
    table, ok = env.check(devices=[torch.device("cpu")], timing=False)
    assert not ok
    line = next(line for line in table.splitlines() if line.split()[1:3] == ["hard_mining", "native"])
    assert line.split()[3] == "FAIL", line
    assert "MISMATCH: vtreid.ops.hard_mining on cpu with backend 'native'" in table
    assert "VTREID_BACKEND=" in table and "use_backend(" in table


def test_env_check_cli_prints_the_table():
    done = subprocess.run([sys.executable, "-m", "vtreid.env", "--check"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "speed-up vs reference" in done.stdout and "pairwise_distance" in done.stdout
