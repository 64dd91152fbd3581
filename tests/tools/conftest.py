"""A tiny trained checkpoint shared by the tools' tests (extract, evaluate --checkpoint, visualize, export)."""
import json
from pathlib import Path

import pytest

from vtreid import train

TINY = ["dataset.synthetic.ids=16", "dataset.synthetic.images=2", "dataset.synthetic.height=64",
        "dataset.synthetic.width=32", "input.size=[64, 32]", "input.resize=null", "input.test_size=null",
        "model.arch=resnet_tiny", "train.workers=0", "train.eval_at_start=false", "train.log_every=1",
        "eval.trials_final=2"]
SMALL_HC = ["sampler.identities=2", "sampler.per_modality=4"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """The same synthetic dataset as the trainer's tests, outside the user's cache."""
    monkeypatch.setenv("VTREID_CACHE", str(tmp_path_factory.getbasetemp() / "vtreid-cache"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """An hc run of 3 steps with an evaluation on the way: run directory with checkpoints, results.json,
    metrics.jsonl."""
    out = tmp_path_factory.mktemp("tools") / "hc-run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VTREID_CACHE", str(tmp_path_factory.getbasetemp() / "vtreid-cache"))
        code = train.main(["--method", "hc", "--out", str(out), *TINY, *SMALL_HC, "train.max_steps=3",
                           "train.eval_every=2"])
    assert code == 0
    assert json.loads((out / "results.json").read_text())["results"]
    return Path(out)
