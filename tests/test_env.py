import re
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


def _mined_with(inputs_x, labels, metric, neg_index):
    """A backend's result that picks neg_index (gradients from the reference at those pairs)."""
    ref = env.ops.reference
    dist = ref.distance_matrix(inputs_x, inputs_x, metric)
    want = ref.hard_mining(inputs_x, labels, metric=metric)
    return env.ops.Mined(*ref.mined_pairs(dist, want[1], neg_index, want[4], inputs_x.dtype))


def _swap_tie(x, labels, metric, to):
    """neg_index with every pick of row 0 moved to row ``to`` (row 1 duplicates row 0 in env's cases)."""
    want = env.ops.reference.hard_mining(x, labels, metric=metric)
    neg = want[3].clone()
    movable = (neg == 0) & (labels != labels[to])
    neg[movable] = to
    return neg, movable


def test_env_check_accepts_another_pick_at_an_exact_tie_only(monkeypatch):
    """The cases' duplicate rows tie exactly; a float32 computation may round them apart (the reference's on
    a GPU did), so a fused index may differ there, with the gradients checked at its own pick. Any other
    differing index still fails."""
    real = env.ops.hard_mining
    swapped = []

    def picking(to):
        def mining(x, labels, *args, backend=None, metric="euclidean", **kwargs):
            if backend != "native" or kwargs or len(x) < 47:
                return real(x, labels, *args, backend=backend, metric=metric, **kwargs)
            neg, movable = _swap_tie(x, labels, metric, to)
            swapped.append(int(movable.sum()))
            return _mined_with(x, labels, metric, neg)
        return mining

    monkeypatch.setattr(env.ops, "hard_mining", picking(1))  # row 1 == row 0: a tie
    table, ok = env.check(devices=[torch.device("cpu")], timing=False)
    assert ok, table
    assert sum(swapped) > 0, "the cases have no anchor whose nearest negative is the duplicated row"
    monkeypatch.setattr(env.ops, "hard_mining", picking(3))  # row 3 is no tie
    table, ok = env.check(devices=[torch.device("cpu")], timing=False)
    assert not ok and re.search(r"hard_mining +native +FAIL +output \[[0-9, ]*\b3\b", table), table


def test_env_tie_rule_refuses_a_tied_pick_the_masks_forbid():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [5.0, 5.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 2, 3])  # anchor 0: rows 1, 2 and 4 tie; row 2 is its own identity
    kwargs = {"metric": "euclidean"}
    want = env._outputs("hard_mining", (x, labels), kwargs, "reference")
    assert want[3][0] == 1
    got = list(want)
    for pick, allowed in ((2, False), (4, True), (3, False)):  # 3: a negative, but no tie
        got[3] = want[3].clone()
        got[3][0] = pick
        at_ties = env._reference_at_ties((x, labels), kwargs, got, want)
        assert (at_ties is not None) == allowed, pick
        if allowed:
            assert torch.equal(at_ties[3], got[3]) and env._close(at_ties[2], want[2])
            assert at_ties[5][4].abs().sum() > 0 and not env._close(at_ties[5], want[5])  # its own pair's gradient


def test_env_close_scales_each_row_by_its_own_largest_value():
    """A zero vector's cosine gradient is ~1e12; it must not hide another row's error."""
    want = torch.tensor([[1e12, 0.0], [0.5, 0.25]])
    assert env._close(want.clone(), want)
    wrong = want.clone()
    wrong[1, 0] = 0.6
    assert not env._close(wrong, want)
    assert env._close(torch.tensor(2.0), torch.tensor(2.0)) and not env._close(torch.tensor(2.1), torch.tensor(2.0))
    assert env._close(torch.empty(0, 3), torch.empty(0, 3))
