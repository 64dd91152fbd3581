"""python -m vtreid.extract and python -m vtreid.evaluate --checkpoint on a tiny trained checkpoint."""
import json

import numpy as np
import pytest
import torch

from vtreid import evaluate, extract
from vtreid.data import synthetic
from vtreid.evaluate import load_features

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def assert_same_summary(got: dict, want: dict):
    for key in METRICS:
        assert got[key]["mean"] == pytest.approx(want[key]["mean"], abs=1e-6), key
        assert got[key]["std"] == pytest.approx(want[key]["std"], abs=1e-6), key
    assert [t["gallery_size"] for t in got["trials"]] == [t["gallery_size"] for t in want["trials"]]


@pytest.fixture(scope="module")
def feats(trained_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("feats") / "feats.pt"
    assert extract.main(["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--out", str(path)]) == 0
    return path


def test_extract_writes_query_and_gallery_in_the_features_format(feats):
    data = torch.load(feats, weights_only=True)
    n = len(data["ids"])
    assert data["features"].shape[0] == n == len(data["paths"]) == len(data["cams"]) == len(data["modalities"])
    query = data["query"].bool()
    assert (data["modalities"][query] == 1).all() and (data["modalities"][~query] == 0).all()  # SYSU: IR queries
    assert query[: int(query.sum())].all()                                                       # query rows first
    assert data["method"] == "hc" and data["dataset"] == "synthetic"
    loaded = load_features(feats)   # what evaluate --features reads
    assert torch.equal(loaded["features"], data["features"])


def test_extract_then_evaluate_gives_the_trainers_metrics(trained_run, feats, tmp_path):
    """The round trip: features of the final checkpoint, evaluated from the file, equal results.json."""
    results = json.loads((trained_run / "results.json").read_text())
    (want,) = results["results"].values()
    out = tmp_path / "eval.json"
    assert evaluate.main(["--features", str(feats), "--protocol", "sysu", "--trials", "2", "--out", str(out)]) == 0
    assert_same_summary(json.loads(out.read_text()), want)


def test_evaluate_checkpoint_takes_the_checkpoints_settings_and_matches_the_trainer(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    (want,) = json.loads((trained_run / "results.json").read_text())["results"].values()
    (summary,) = got["results"].values()
    assert_same_summary(summary, want)   # eval.trials_final=2, mode all, single-shot, from the checkpoint
    assert got["method"] == "hc" and got["dataset"] == "synthetic" and got["step"] == 3
    assert "rank1" in capsys.readouterr().out
    # the trainer's and evaluate's names of the setting agree, so that --combine pools them (synthetic
    # data was "SYSU-MM01" in one and "synthetic (SYSU)" in the other)
    assert list(got["results"]) == ["synthetic (SYSU) all single-shot, seeded galleries"]
    assert evaluate.main(["--combine", str(trained_run / "results.json"), str(out)]) == 0


@pytest.mark.parametrize("options", [["--mode", "indoor", "--trials", "2"], ["--shots", "10", "--trials", "3"],
                                     ["--mode", "indoor", "--shots", "10", "--metric", "cosine", "--trials", "1"]])
def test_evaluate_checkpoint_every_sysu_mode_equals_the_features_path(trained_run, feats, tmp_path, options):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert evaluate.main(["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), *options, "--out", str(a)]) == 0
    assert evaluate.main(["--features", str(feats), "--protocol", "sysu", *options, "--out", str(b)]) == 0
    (got,) = json.loads(a.read_text())["results"].values()
    want = json.loads(b.read_text())
    assert_same_summary(got, want)
    if "--trials" in options:
        assert len(got["trials"]) == int(options[options.index("--trials") + 1])


def test_evaluate_checkpoint_on_regdb_gives_both_directions(trained_run, tmp_path):
    root = synthetic.write_regdb(tmp_path / "RegDB", ids=6, images=2, height=64, width=32, seed=3)
    out = tmp_path / "regdb.json"
    ckpt = str(trained_run / "checkpoints" / "last.pt")
    assert evaluate.main(["--checkpoint", ckpt, "--dataset", "regdb", "--data-root", str(root), "--trial", "2",
                          "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert set(got["results"]) == {"RegDB visible_to_thermal", "RegDB thermal_to_visible"}
    feats = tmp_path / "regdb.npz"   # and the same numbers through an .npz features file
    assert extract.main(["--checkpoint", ckpt, "--dataset", "regdb", "--data-root", str(root), "--trial", "2",
                         "--out", str(feats)]) == 0
    for direction in ("visible_to_thermal", "thermal_to_visible"):
        one = tmp_path / f"{direction}.json"
        assert evaluate.main(["--features", str(feats), "--protocol", "regdb", "--direction", direction,
                              "--out", str(one)]) == 0
        assert_same_summary(got["results"][f"RegDB {direction}"], json.loads(one.read_text()))


def test_extract_images_of_a_users_own_list(trained_run, feats):
    """The Python function for your own images gives the features the test-set extraction gives."""
    loaded = extract.load_checkpoint(trained_run / "checkpoints" / "last.pt")
    data = load_features(feats)
    rows = [0, 1, len(data["ids"]) - 1]              # two infrared queries, one visible gallery image
    mine = extract.extract_images(loaded, [data["paths"][r] for r in rows],
                                  [int(data["modalities"][r]) for r in rows])
    assert mine["features"].shape == (3, data["features"].shape[1])
    assert torch.allclose(mine["features"], data["features"][rows], atol=1e-5)
    assert mine["ids"].tolist() == [-1, -1, -1] and mine["paths"] == [data["paths"][r] for r in rows]
    with pytest.raises(FileNotFoundError, match="nope.png"):
        extract.extract_images(loaded, ["nope.png"], 0)
    with pytest.raises(ValueError, match="modalities"):
        extract.extract_images(loaded, [data["paths"][0]], [2])


@pytest.mark.parametrize("tool", ["extract", "evaluate"])
def test_a_missing_or_foreign_checkpoint_is_one_line_naming_it(tool, tmp_path, capsys):
    foreign = tmp_path / "notes.pt"
    foreign.write_text("not a checkpoint")
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    for path in (tmp_path / "missing.pt", foreign, other):
        argv = ["--checkpoint", str(path)] + (["--out", str(tmp_path / "f.pt")] if tool == "extract" else [])
        code = (extract if tool == "extract" else evaluate).main(argv)
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("error: ") and str(path) in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_evaluate_checkpoint_takes_the_datasets_official_galleries(trained_run, tmp_path, monkeypatch):
    """--checkpoint on a SYSU folder with exp/rand_perm_cam.mat: its galleries, the same as --features
    with --rand-perm; --galleries seeded keeps the draw."""
    from support import write_sysu_rand_perm
    root = synthetic.write_sysu(tmp_path / "SYSU-MM01", ids=8, images=3, height=64, width=32, seed=2)
    mat = write_sysu_rand_perm(root, first=lambda n, t: (t % n) + 1)
    ckpt = str(trained_run / "checkpoints" / "last.pt")
    on_root = ["--dataset", "sysu", "--data-root", str(root)]
    a, b, c, feats = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json", tmp_path / "f.pt"
    assert evaluate.main(["--checkpoint", ckpt, *on_root, "--out", str(a)]) == 0
    assert extract.main(["--checkpoint", ckpt, *on_root, "--out", str(feats)]) == 0
    assert evaluate.main(["--features", str(feats), "--protocol", "sysu", "--trials", "2", "--rand-perm", str(mat),
                          "--out", str(b)]) == 0
    (name, got), = json.loads(a.read_text())["results"].items()
    assert name == "SYSU-MM01 all single-shot, official galleries"
    assert_same_summary(got, json.loads(b.read_text()))
    assert evaluate.main(["--checkpoint", ckpt, *on_root, "--galleries", "seeded", "--out", str(c)]) == 0
    assert list(json.loads(c.read_text())["results"]) == ["SYSU-MM01 all single-shot, seeded galleries"]
    # --rand-perm FILE with --checkpoint is that file, official (it was ignored for the checkpoint's choice)
    assert evaluate.main(["--checkpoint", ckpt, *on_root, "--rand-perm", str(tmp_path / "absent.mat")]) == 2
    assert evaluate.main(["--checkpoint", ckpt, "--rand-perm", str(mat), "--out", str(c)]) == 2   # synthetic
    # visualize's CMC and rank lists take the same galleries with --rand-perm
    from vtreid import visualize
    from vtreid.eval import load_rand_perm
    mean, _ = visualize.cmc_from_features(load_features(feats), trials=2, rand_perm=load_rand_perm(mat))
    assert [mean[k - 1] for k in (1, 5, 10, 20)] == pytest.approx([got[f"rank{k}"]["mean"] for k in (1, 5, 10, 20)])
    ranked = visualize.rankings(load_features(feats), trial=1, rand_perm=load_rand_perm(mat))
    assert float(ranked["ap"][ranked["valid"]].mean()) == pytest.approx(got["trials"][0]["mAP"], abs=1e-6)
    assert visualize.main(["ranks", "--features", str(feats), "--rand-perm", str(mat), "--out",
                           str(tmp_path / "ranks"), "--queries", "0"]) == 0
    # cmc --rand-perm through the command line draws that curve (the chart itself is tested elsewhere)
    from vtreid import plots
    drawn = []
    monkeypatch.setattr(plots, "cmc_plot", lambda curves, out, title: drawn.extend(curves) or out)
    assert visualize.main(["cmc", "--features", str(feats), "--rand-perm", str(mat), "--trials", "2", "--out",
                           str(tmp_path / "cmc.png")]) == 0
    (_, ranks, curve, _), = drawn
    assert list(ranks[:2]) == [1, 2] and np.array_equal(curve, mean)
    seeded, _ = visualize.cmc_from_features(load_features(feats), trials=2)
    assert not np.array_equal(seeded, mean)   # so the line above tells the two galleries apart
