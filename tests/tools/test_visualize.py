"""python -m vtreid.visualize: rank-list pictures read back pixel by pixel; CMC and training-curve plots."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vtreid import visualize as vis

# gallery (visible): row, id, cam, feature, colour of its image
GALLERY = [(1, 1, [1, 0, 0, 0], (200, 30, 30)), (2, 1, [0, 1, 0, 0], (30, 200, 30)),
           (3, 4, [0, 0, 1, 0], (30, 30, 200)), (1, 5, [0.8, 0.6, 0, 0], (200, 200, 30))]
# queries (infrared, camera 6): id, feature; expected top 3 gallery rows, AP
QUERIES = [(1, [1, 0.1, 0, 0], [0, 3, 1], 1.0), (2, [0, 0.3, 1, 0], [2, 1, 3], 0.5)]


@pytest.fixture
def hand_made(tmp_path):
    """A features file whose rankings are known, with one plain-coloured image per row."""
    rows = []
    for n, (pid, feature, _, _) in enumerate(QUERIES):
        rows.append((pid, 6, 1, feature, (90 + 40 * n,) * 3))
    for pid, cam, feature, colour in GALLERY:
        rows.append((pid, cam, 0, feature, colour))
    paths = []
    for n, (*_, colour) in enumerate(rows):
        path = tmp_path / "images" / f"{n:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 40), colour).save(path)
        paths.append(str(path))
    data = {"features": torch.tensor([r[3] for r in rows], dtype=torch.float32),
            "ids": torch.tensor([r[0] for r in rows]), "cams": torch.tensor([r[1] for r in rows]),
            "modalities": torch.tensor([r[2] for r in rows]), "paths": paths}
    torch.save(data, tmp_path / "feats.pt")
    return tmp_path / "feats.pt", rows


def pixel(image, xy):
    return image.getpixel(xy)[:3]


def test_rank_list_grid_size_frames_and_images_read_back(hand_made, tmp_path):
    feats, rows = hand_made
    out = tmp_path / "ranks"
    assert vis.main(["ranks", "--features", str(feats), "--out", str(out), "--top", "3"]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["query00000_id1_cam6.png", "query00001_id2_cam6.png"]
    for path, (pid, _, expected, _) in zip(files, QUERIES):
        image = Image.open(path).convert("RGB")
        assert image.size == vis.canvas_size(3)
        for position in range(4):
            left, top, right, bottom = vis.cell_box(position)
            assert right - left + 1 == vis.TILE[0] + 2 * vis.BORDER and bottom - top + 1 == vis.TILE[1] + 2 * vis.BORDER
            if position == 0:
                frame, modality = vis.QUERY_COLOR, 1
                colour = rows[QUERIES.index(next(q for q in QUERIES if q[0] == pid))][4]
            else:
                g = GALLERY[expected[position - 1]]
                frame = vis.MATCH_COLOR if g[0] == pid else vis.WRONG_COLOR
                modality, colour = 0, g[3]
            for xy in ((left + 1, (top + bottom) // 2), (right - 1, bottom - 1), ((left + right) // 2, top + 1)):
                assert pixel(image, xy) == frame, (path.name, position, xy)
            # the image itself, in rank order (infrared: its luminance on three channels)
            centre = pixel(image, ((left + right) // 2, (top + bottom) // 2 + 20))
            assert np.abs(np.subtract(centre, colour)).max() <= 2, (path.name, position)
            # the modality badge in the tile's top-left corner
            assert pixel(image, (left + vis.BORDER + vis.BADGE[0] - 1, top + vis.BORDER + vis.BADGE[1] - 1)) == \
                vis.BADGE_COLORS[modality][0]


def test_rank_list_worst_and_selected_queries(hand_made, tmp_path, capsys):
    feats, _ = hand_made
    out = tmp_path / "worst"
    assert vis.main(["ranks", "--features", str(feats), "--out", str(out), "--worst", "1", "--top", "2"]) == 0
    assert [f.name for f in out.glob("*.png")] == ["query00001_id2_cam6.png"]   # AP 0.5 < 1.0
    assert "AP 50.0%" in capsys.readouterr().out
    image = Image.open(out / "query00001_id2_cam6.png").convert("RGB")
    assert image.size == vis.canvas_size(2)
    ranked = vis.rankings(vis.load_features(feats), k=3)
    assert ranked["ap"].tolist() == pytest.approx([q[3] for q in QUERIES])
    assert vis.select_queries(ranked, [1, 0], 1) == [1, 0]
    assert vis.main(["ranks", "--features", str(feats), "--out", str(out), "--queries", "7"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_rank_lists_of_an_extracted_features_file(trained_run, tmp_path):
    from vtreid import extract
    feats = tmp_path / "feats.pt"
    assert extract.main(["--checkpoint", str(trained_run / "checkpoints" / "last.pt"), "--out", str(feats)]) == 0
    out = tmp_path / "ranks"
    assert vis.main(["ranks", "--features", str(feats), "--out", str(out), "--worst", "2", "--queries", "0"]) == 0
    assert len(list(out.glob("*.png"))) == 3
    assert all(Image.open(p).size == vis.canvas_size(10) for p in out.glob("*.png"))


def test_curves_plot_from_a_metrics_file(trained_run, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")
    out = tmp_path / "curves.png"
    assert vis.main(["curves", "--metrics", str(trained_run / "metrics.jsonl"), "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300


def test_cmc_plot_from_results_files_and_features(trained_run, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")
    other = tmp_path / "other" / "results.json"   # a second run: evaluate --features' JSON shape
    other.parent.mkdir()
    (summary,) = json.loads((trained_run / "results.json").read_text())["results"].values()
    other.write_text(json.dumps({"protocol": "SYSU-MM01 all single-shot", **summary}))
    out = tmp_path / "cmc.png"
    assert vis.main(["cmc", "--results", str(trained_run / "results.json"), str(other), "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"
    from vtreid import plots
    curves = plots.results_curves([trained_run / "results.json", other], ["a", "b"])
    assert [c[0] for c in curves] == ["a", "b"] and list(curves[0][1]) == [1, 5, 10, 20]
    assert curves[0][2] == pytest.approx([summary[f"rank{k}"]["mean"] for k in (1, 5, 10, 20)])


def test_full_cmc_from_features_agrees_with_the_reported_ranks(hand_made):
    feats, _ = hand_made
    mean, std = vis.cmc_from_features(vis.load_features(feats), trials=1, max_rank=4)
    assert mean.tolist() == pytest.approx([0.5, 1.0, 1.0, 1.0]) and std.tolist() == [0, 0, 0, 0]


def test_plots_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)   # import matplotlib fails
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "lr": 0.1, "loss": 1.0, "terms": {"id": 1.0}}) + "\n")
    assert vis.main(["curves", "--metrics", str(metrics), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'vtreid[plot]'" in err and "Traceback" not in err


@pytest.mark.parametrize("command, content", [
    ("ranks", None), ("ranks", "garbage"), ("cmc", None), ("cmc", "{not json"), ("cmc", '{"results": {"x": {}}}'),
    ("curves", None), ("curves", "not json\n"), ("curves", '{"no_step": 1}\n'),
    ("curves", '{"step": 1, "loss": 2.0}\n'), ("curves", '{"step": 1, "eval": 0.5}\n'),
    ("cmc", '{"results": {"x": {"rank1": {}, "rank5": {}, "rank10": {}, "rank20": {}}}}')])
def test_bad_input_files_are_one_line_naming_the_file(command, content, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")
    path = tmp_path / "input.file"
    if content is not None:
        path.write_text(content)
    flag = {"ranks": "--features", "cmc": "--results", "curves": "--metrics"}[command]
    assert vis.main([command, flag, str(path), "--out", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, option", [
    (["visualize", "ranks", "--features", "F", "--out", "OUT", "--worst", "-2"], "--worst"),
    (["visualize", "ranks", "--features", "F", "--out", "OUT", "--top", "0"], "--top"),
    (["visualize", "ranks", "--features", "F", "--out", "OUT", "--trial", "0"], "--trial"),
    (["visualize", "ranks", "--features", "F", "--out", "A_FILE"], "--out"),
    (["visualize", "cmc", "--results", "F", "--out", "c.png", "--max-rank", "0"], "--max-rank"),
    (["visualize", "cmc", "--results", "F", "--out", "c.png", "--trials", "0"], "--trials"),
    (["visualize", "cmc", "--results", "F", "--out", "curves"], "--out"),
    (["visualize", "curves", "--metrics", "F", "--out", "A_FOLDER"], "--out"),
    (["extract", "--checkpoint", "C", "--out", "A_FOLDER"], "--out"),
    (["extract", "--checkpoint", "C", "--out", "f.pt", "--device", "ABSENT_GPU"], "--device"),
    (["export", "--checkpoint", "C", "--onnx", "m.onnx", "--device", "ABSENT_GPU"], "--device"),
    (["evaluate", "--features", "F", "--protocol", "sysu", "--out", "A_FOLDER"], "--out"),
])
def test_bad_options_are_usage_errors_naming_them_before_any_work(argv, option, tmp_path, monkeypatch, capsys):
    """Out-of-range counts, a folder given as the file to write (or the reverse), a PNG without .png (which
    matplotlib would have renamed) and a GPU the machine lacks: before, tracebacks or silent odd output."""
    # one index past the last GPU (cuda:1 without one): a device this machine never has
    argv = [f"cuda:{max(torch.cuda.device_count(), 1)}" if a == "ABSENT_GPU" else a for a in argv]
    import importlib
    monkeypatch.chdir(tmp_path)
    (tmp_path / "A_FOLDER").mkdir()
    (tmp_path / "A_FILE").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"vtreid.{argv[0]}").main(argv[1:])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}" in err and "Traceback" not in err, err


def test_a_training_checkpoint_or_a_binary_file_is_named_for_what_it_is(trained_run, capsys):
    from vtreid import evaluate
    ckpt = trained_run / "checkpoints" / "last.pt"
    assert evaluate.main(["--features", str(ckpt), "--protocol", "sysu"]) == 2
    assert f"{ckpt} is a training checkpoint" in capsys.readouterr().err
    from vtreid import plots
    with pytest.raises(ValueError, match=f"{ckpt} is not a text file"):   # was: 'utf-8' codec can't decode
        plots.read_metrics(ckpt)


@pytest.mark.parametrize("command", ["ranks", "cmc"])
def test_a_features_file_without_paths_or_a_modality_is_named(hand_made, tmp_path, command, capsys):
    """ranks needs image paths (the check compared with the old row names and never fired); cmc needs
    queries and gallery rows (it drew a flat 0 % curve without queries)."""
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")
    data = torch.load(hand_made[0])
    if command == "ranks":
        del data["paths"]
        argv = ["ranks", "--features"]
        message = "has no image paths"
    else:
        keep = data["modalities"] == 0
        data = {k: (v[keep] if isinstance(v, torch.Tensor) else [p for p, m in zip(v, keep) if m])
                for k, v in data.items()}
        argv = ["cmc", "--features"]
        message = "no infrared rows"
    path = tmp_path / "damaged.pt"
    torch.save(data, path)
    out = tmp_path / ("out.png" if command == "cmc" else "out")
    assert vis.main([*argv, str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and message in err
