"""The run directory's files survive interruptions: atomic writes, and a resume that tidies what a crash left."""
import json
import os
import sys
import types

import pytest
import torch

from vtreid.training import checkpoint
from vtreid.training.progress import Writers


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


#: writer(path, payload), a payload, and one that fails halfway through the write
WRITES = {"save_atomic": (lambda path, obj: checkpoint.save_atomic(obj, path), {"a": torch.arange(3)},
                          {"a": Unpicklable()}),
          "write_text_atomic": (checkpoint.write_text_atomic, "text \u00e9\n", None)}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_atomic_writes_fsync_the_file_and_the_folder_and_keep_the_old_file_on_failure(name, tmp_path, monkeypatch):
    write, payload, bad = WRITES[name]
    path = tmp_path / "sub" / "f"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    write(path, payload)
    assert synced == [False, True]  # the file's data, then the folder's entry (the rename)
    assert os.listdir(path.parent) == ["f"]
    before = path.read_bytes()
    with pytest.raises((RuntimeError, AttributeError)):
        write(path, bad)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["f"]  # the old file whole, no temp file


def test_resume_drops_metrics_after_the_checkpoint_and_a_torn_last_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 6, "lo')
    Writers(tmp_path, resume_step=3).drop_metrics_after(3)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:3]) + "\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_tensorboard_purges_what_a_crashed_run_logged_after_the_checkpoint(tmp_path, monkeypatch):
    made = []

    class FakeWriter:
        def __init__(self, logdir, purge_step=None):
            made.append(purge_step)

        def close(self):
            pass
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    Writers(tmp_path).close()
    Writers(tmp_path, resume_step=7).close()
    assert made == [None, 8]  # events at step 8 and later were written after the step-7 checkpoint


def test_state_mismatch_counts_and_names_the_first_keys():
    from vtreid.training.checkpoint import state_mismatch
    model = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(6)])
    state = model.state_dict()
    assert state_mismatch(model, state) is None
    bad = {k: v for k, v in state.items() if not k.startswith(("0.", "1.", "2."))}   # 6 missing
    bad.update({f"extra.{i}": torch.zeros(1) for i in range(4)}, **{"5.weight": torch.zeros(2, 3)})
    said = state_mismatch(model, bad)
    assert said == ("6 missing (0.weight, 0.bias, 1.weight, ... (3 more)); 4 unexpected (extra.0, extra.1, extra.2, "
                    "... (1 more)); 1 of another shape (checkpoint vs model) (5.weight (2, 3) vs (3, 3))"), said
