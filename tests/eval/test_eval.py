"""vtreid.eval: metrics against hand-computed rankings and the numpy loop, protocols, top-k, CLI."""
import json
import re
import sys

import numpy as np
import pytest
import torch

from vtreid.eval import evaluate_regdb, evaluate_sysu, load_rand_perm, rank_metrics, sysu_galleries, sysu_gallery, topk
from vtreid.eval import numpy_protocol
from vtreid.evaluate import main as evaluate_cli

from support import DEVICES, write_rand_perm


def line_up(distances, gallery_ids, gallery_cams=None, query_id=1, query_cam=6, **kw):
    """One query whose distances to the gallery are given directly (1-D features on a line)."""
    g = torch.tensor(distances, dtype=torch.float32)[:, None]
    q = torch.zeros(1, 1)
    cams = None if gallery_cams is None else torch.tensor(gallery_cams)
    return rank_metrics(q, g, torch.tensor([query_id]), torch.tensor(gallery_ids),
                        None if cams is None else torch.tensor([query_cam]), cams, **kw)


def test_hand_computed_ranking():
    # ranked: id2, id1, id3, id1  -> matches at ranks 2 and 4
    r = line_up([1.0, 2.0, 3.0, 4.0], [2, 1, 3, 1], ranks=(1, 2, 3))
    assert r["cmc"].tolist() == [0.0, 1.0, 1.0]
    assert float(r["mAP"]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert float(r["mINP"]) == pytest.approx(2 / 4)
    assert r["first_match"].tolist() == [2]


def test_sysu_deduplication_and_camera_rule():
    # ranked: id2 (cam1), id2 (cam4), id1 (cam2), id1 (cam5)
    ids, cams = [2, 2, 1, 1], [1, 4, 2, 5]
    plain = line_up([1.0, 2.0, 3.0, 4.0], ids, cams, query_cam=6, ranks=(1, 2, 3), sysu_rules=False)
    assert plain["first_match"].tolist() == [3]
    sysu6 = line_up([1.0, 2.0, 3.0, 4.0], ids, cams, query_cam=6, ranks=(1, 2, 3), sysu_rules=True)
    assert sysu6["first_match"].tolist() == [2]                # id2 counted once
    assert float(sysu6["mAP"]) == pytest.approx((1 / 3 + 2 / 4) / 2)   # AP reads the full list
    sysu3 = line_up([1.0, 2.0, 3.0, 4.0], ids, cams, query_cam=3, ranks=(1, 2, 3), sysu_rules=True)
    # a cam-3 query ignores the cam-2 image: list id2, id2, id1(cam5) -> dedup rank 2, AP 1/3
    assert sysu3["first_match"].tolist() == [2] and float(sysu3["mAP"]) == pytest.approx(1 / 3)
    assert float(sysu3["mINP"]) == pytest.approx(1 / 3)


def test_ties_keep_gallery_order():
    r = line_up([1.0, 1.0, 1.0], [5, 1, 1], ranks=(1, 2))
    assert r["first_match"].tolist() == [2]
    r = line_up([1.0, 1.0, 1.0], [1, 5, 1], ranks=(1, 2))
    assert r["first_match"].tolist() == [1]


def test_queries_without_match_are_left_out():
    g = torch.tensor([[0.0], [1.0]])
    r = rank_metrics(torch.zeros(2, 1), g, torch.tensor([1, 9]), torch.tensor([1, 2]), ranks=(1,))
    assert r["valid"].tolist() == [True, False] and float(r["rank1"]) == 1.0 and float(r["mAP"]) == 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sysu_rules", [False, True])
def test_matches_numpy_loop_with_ties_and_chunks(device, sysu_rules):
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 3, (61, 4), generator=g).float()        # small integers: many exact ties
    gal = torch.randint(0, 3, (150, 4), generator=g).float()
    qid, gid = torch.randint(0, 12, (61,), generator=g), torch.randint(0, 12, (150,), generator=g)
    qc = torch.tensor([3, 6])[torch.randint(0, 2, (61,), generator=g)]
    gc = torch.tensor([1, 2, 4, 5])[torch.randint(0, 4, (150,), generator=g)]
    dist = torch.cdist(q.double(), gal.double()).numpy()
    cmc, m_ap, m_inp = numpy_protocol.evaluate(dist, qid.numpy(), gid.numpy(), qc.numpy(), gc.numpy(),
                                               sysu_rules=sysu_rules)
    full = None
    for chunk in (None, 1, 7, 61):
        r = rank_metrics(q.to(device), gal.to(device), qid, gid, qc, gc, sysu_rules=sysu_rules, chunk_size=chunk)
        np.testing.assert_allclose(r["cmc"].cpu().numpy(), cmc, atol=1e-6)
        assert float(r["mAP"]) == pytest.approx(m_ap, abs=1e-6) and float(r["mINP"]) == pytest.approx(m_inp, abs=1e-6)
        if full is None:
            full = r
        assert torch.equal(r["first_match"], full["first_match"]) and torch.allclose(r["ap"], full["ap"])


def coverage(seed=0, ids=96):
    """A SYSU-like test set: some (identity, visible camera) pairs absent, 1..12 images per present pair."""
    rng = np.random.default_rng(seed)
    gid, gcam, paths = [], [], []
    present = {}
    for pid in range(1, ids + 1):
        for cam in (1, 2, 4, 5):
            if rng.random() < 0.2:
                continue
            n = int(rng.integers(1, 13))
            present[(pid, cam)] = n
            for k in range(n):
                gid.append(pid)
                gcam.append(cam)
                paths.append(f"cam{cam}/{pid:04d}/{k + 1:04d}.jpg")  # SYSU numbers images from 0001
    return np.array(gid), np.array(gcam), paths, present


def test_sysu_gallery_sizes_per_mode():
    gid, gcam, paths, present = coverage()
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        for shots in (1, 10):
            expected = sum(min(shots, n) for (pid, cam), n in present.items() if cam in cams)
            for trial in (1, 2):
                chosen = sysu_gallery(gid, gcam, paths, mode=mode, shots=shots, trial=trial)
                assert len(chosen) == expected and len(set(chosen.tolist())) == expected
                assert set(gcam[chosen]) <= set(cams)
    one = sysu_gallery(gid, gcam, paths, trial=1)
    assert not np.array_equal(one, sysu_gallery(gid, gcam, paths, trial=2))
    assert np.array_equal(one, sysu_gallery(gid, gcam, paths, trial=1))
    with pytest.raises(ValueError, match="shots"):
        sysu_gallery(gid, gcam, paths, shots=5)


def test_sysu_all_search_single_shot_gallery_is_301_on_the_release_coverage():
    """The release's 96 test identities appear in 301 (identity, visible camera) pairs; a coverage with
    that count gives the 301-image single-shot gallery, and at most 10 per pair multi-shot."""
    rng = np.random.default_rng(0)
    pairs = [(pid, cam) for pid in range(1, 97) for cam in (1, 2, 4, 5)]
    kept = [pairs[i] for i in sorted(rng.choice(len(pairs), 301, replace=False))]
    gid = np.array([p for p, c in kept for _ in range(12)])
    gcam = np.array([c for p, c in kept for _ in range(12)])
    paths = [f"{p}/{c}/{k}" for p, c in kept for k in range(12)]
    assert len(sysu_gallery(gid, gcam, paths, mode="all", shots=1)) == 301
    assert len(sysu_gallery(gid, gcam, paths, mode="all", shots=10)) == 3010


def test_rand_perm_mat_drives_the_gallery(tmp_path):
    gid, gcam, paths, present = coverage(1, ids=4)
    write_rand_perm(tmp_path / "rand_perm_cam.mat", present, 4, lambda pid, cam, n, t: (pid + cam + t) % n + 1)
    perm = load_rand_perm(tmp_path / "rand_perm_cam.mat")
    for trial in (1, 3, 10):
        chosen = sysu_gallery(gid, gcam, paths, shots=1, trial=trial, rand_perm=perm)
        assert len(chosen) == len(present)
        for i in chosen:  # image number (pid + cam + trial) % n + 1 of that identity and camera
            n = present[(gid[i], gcam[i])]
            assert paths[i] == f"cam{gcam[i]}/{gid[i]:04d}/{(gid[i] + gcam[i] + trial) % n + 1:04d}.jpg"
        multi = sysu_gallery(gid, gcam, paths, shots=10, trial=trial, rand_perm=perm)
        assert len(multi) == sum(min(n, 10) for n in present.values())
    pytest.importorskip("scipy.io").savemat(tmp_path / "other.mat", {"something": np.zeros(3)})
    with pytest.raises(ValueError, match="other.mat: no variable 'rand_perm_cam'"):
        load_rand_perm(tmp_path / "other.mat")


def test_sysu_galleries_take_the_official_file_when_it_is_there(tmp_path, monkeypatch):
    """PROTOCOLS.md: the official permutations when exp/rand_perm_cam.mat is present, else the seeded draw;
    the choice is named ("official" / "seeded") so that results say which."""
    gid, gcam, paths, present = coverage(1, ids=4)
    mat = tmp_path / "rand_perm_cam.mat"
    assert sysu_galleries("auto", mat) == (None, "seeded") == sysu_galleries("auto", None)
    with pytest.raises(ValueError, match="need exp/rand_perm_cam.mat, not found at .*rand_perm_cam.mat"):
        sysu_galleries("official", mat)
    write_rand_perm(mat, present, 4, lambda pid, cam, n, t: n)   # every trial starts at the last image
    official = sysu_galleries("auto", mat)
    assert official.source == "official" and sysu_galleries("official", mat).source == "official"
    chosen = sysu_gallery(gid, gcam, paths, trial=2, rand_perm=official.rand_perm)
    assert all(paths[i].endswith(f"{present[(gid[i], gcam[i])]:04d}.jpg") for i in chosen)
    with pytest.raises(ValueError, match="identity numbers from 1; the gallery has identity 0"):
        sysu_gallery(np.where(gid == 1, 0, gid), gcam, paths, trial=1, rand_perm=official.rand_perm)  # no wrap to -1
    assert sysu_galleries("seeded", mat) == (None, "seeded")
    with pytest.raises(ValueError, match="galleries must be one of"):
        sysu_galleries("random", mat)
    monkeypatch.setitem(sys.modules, "scipy.io", None)   # scipy missing: auto falls back and says so
    with pytest.warns(RuntimeWarning, match="needs scipy.*'seeded galleries'"):
        assert sysu_galleries("auto", mat) == (None, "seeded")
    with pytest.raises(ValueError, match="needs scipy"):
        sysu_galleries("official", mat)


@pytest.mark.parametrize("damage", ["empty", "text", "truncated"])
def test_a_damaged_rand_perm_file_is_an_error_that_names_it(tmp_path, capsys, damage):
    good = tmp_path / "good.mat"
    gid, gcam, paths, present = coverage(1, ids=2)
    write_rand_perm(good, present, 2, lambda pid, cam, n, t: 1)
    bad = tmp_path / "rand_perm_cam.mat"
    bad.write_bytes({"empty": b"", "text": b"1,2,3\n" * 40, "truncated": good.read_bytes()[:200]}[damage])
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": cannot be read as rand_perm_cam.mat"):
        load_rand_perm(bad)
    with pytest.raises(ValueError, match="cannot be read"):
        sysu_galleries("auto", bad)    # present but damaged: an error, not a silent fallback
    line = run_cli_error(["--features", str(features_file(tmp_path, ".pt")), "--protocol", "sysu",
                          "--rand-perm", str(bad)], capsys)
    assert str(bad) in line


def test_evaluate_features_names_the_galleries_it_used(tmp_path, capsys):
    data = torch.load(features_file(tmp_path, ".pt"))
    data["ids"] += 1   # SYSU identity numbers start at 1; no paths: images are numbered by their row order
    feats = str(tmp_path / "from1.pt")
    torch.save(data, feats)
    present = {(pid, cam): 2 for pid in range(1, 7) for cam in (1, 4)}   # features_file's visible rows
    mat = tmp_path / "rand_perm_cam.mat"
    write_rand_perm(mat, present, 6, lambda pid, cam, n, t: 2)
    for extra, source in (([], "seeded"), (["--rand-perm", str(mat)], "official"),
                          (["--rand-perm", str(mat), "--galleries", "seeded"], "seeded")):
        out = tmp_path / f"{source}.json"
        assert evaluate_cli(["--features", feats, "--protocol", "sysu", "--trials", "1", *extra, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["protocol"] == f"SYSU-MM01 all single-shot, {source} galleries"
    capsys.readouterr()
    assert "not found" in run_cli_error(["--features", feats, "--protocol", "sysu", "--galleries", "official"], capsys)


def test_rand_perm_matches_image_numbers_not_positions(tmp_path):
    """The official file numbers images (0001.jpg = 1); a copy with a missing file must not shift the
    choice onto its neighbour, and a number the copy lacks is an error naming identity and camera."""
    gid, gcam = np.array([1, 1, 1]), np.array([1, 1, 1])
    paths = ["cam1/0001/0001.jpg", "cam1/0001/0003.jpg", "cam1/0001/0004.jpg"]  # 0002.jpg absent
    write_rand_perm(tmp_path / "p.mat", {(1, 1): 4}, 1, lambda pid, cam, n, t: 3 if t == 1 else 2)
    perm = load_rand_perm(tmp_path / "p.mat")
    assert paths[sysu_gallery(gid, gcam, paths, trial=1, rand_perm=perm)[0]] == "cam1/0001/0003.jpg"
    with pytest.raises(ValueError, match=r"picks image\(s\) \[2\] of identity 1 in camera 1"):
        sysu_gallery(gid, gcam, paths, trial=2, rand_perm=perm)


def test_regdb_directions():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(10).repeat_interleave(2)
    vis = torch.nn.functional.one_hot(ids, 10).float() + 0.3 * torch.randn(20, 10, generator=g)
    th = torch.nn.functional.one_hot(ids, 10).float() + 0.3 * torch.randn(20, 10, generator=g)
    a = evaluate_regdb({"features": vis, "ids": ids}, {"features": th, "ids": ids})
    b = evaluate_regdb({"features": th, "ids": ids}, {"features": vis, "ids": ids})
    for result, (query, gallery) in ((a, (vis, th)), (b, (th, vis))):
        cmc, m_ap, _ = numpy_protocol.evaluate(torch.cdist(query, gallery).numpy(), ids.numpy(), ids.numpy())
        assert result["rank1"]["mean"] == pytest.approx(cmc[0]) and result["mAP"]["mean"] == pytest.approx(m_ap)
    assert a["mAP"]["mean"] != b["mAP"]["mean"]


def test_topk_matches_a_full_sort():
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randint(0, 4, (37, 3), generator=g).float(), torch.randint(0, 4, (501, 3), generator=g).float()
    d, i = topk(q, gal, 20, query_chunk=8, gallery_chunk=64)
    ref = torch.sort(torch.cdist(q, gal), dim=1, stable=True)
    assert torch.equal(i, ref.indices[:, :20])
    torch.testing.assert_close(d, ref.values[:, :20])


def features_file(tmp_path, suffix):
    g = torch.Generator().manual_seed(2)
    ids = torch.arange(6).repeat_interleave(8)
    modalities = torch.arange(8).repeat(6) % 2
    cams = torch.where(modalities == 1, torch.tensor(3), torch.tensor([1, 2, 4, 5]).repeat(12))
    feats = torch.nn.functional.one_hot(ids, 6).float() + 0.2 * torch.randn(48, 6, generator=g)
    data = {"features": feats, "ids": ids, "cams": cams, "modalities": modalities}
    path = tmp_path / f"features{suffix}"
    if suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in data.items()})
    else:
        torch.save(data, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_evaluate_cli(tmp_path, suffix, capsys):
    path = features_file(tmp_path, suffix)
    out = tmp_path / "result.json"
    assert evaluate_cli(["--features", str(path), "--protocol", "sysu", "--trials", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["trials"]) == 3 and 0 <= result["mAP"]["mean"] <= 1
    assert "rank1" in capsys.readouterr().out
    assert evaluate_cli(["--features", str(path), "--protocol", "regdb", "--direction", "thermal_to_visible"]) == 0


def features_dict(tmp_path):
    return torch.load(features_file(tmp_path, ".pt"), weights_only=True)


def run_cli_error(argv, capsys):
    """The CLI's answer to a bad input: exit status non-zero, one line on stderr, nothing on stdout."""
    code = evaluate_cli(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def spoil(data, what):
    data = dict(data)
    if what == "no infrared":
        keep = data["modalities"] == 0
        data = {k: v[keep] for k, v in data.items()}
    elif what == "no visible":
        keep = data["modalities"] == 1
        data = {k: v[keep] for k, v in data.items()}
    elif what == "modality 2":
        data["modalities"] = data["modalities"].clone()
        data["modalities"][5] = 2
    elif what == "all nan":
        data["features"] = torch.full_like(data["features"], float("nan"))
    elif what == "one inf":
        data["features"] = data["features"].clone()
        data["features"][7, 2] = float("inf")
    elif what == "visible cam 3":
        data["cams"] = torch.where(data["modalities"] == 0, torch.tensor(3), data["cams"])
    elif what == "infrared cam 1":
        data["cams"] = torch.where(data["modalities"] == 1, torch.tensor(1), data["cams"])
    elif what == "ids disjoint":
        data["ids"] = torch.where(data["modalities"] == 1, data["ids"] + 100, data["ids"])
    return data


SPOILED = [
    ("no infrared", "no infrared rows (modality 1)"), ("no visible", "no visible rows (modality 0)"),
    ("modality 2", "modalities must be 0 (visible) or 1 (infrared), found [2]"),
    ("all nan", "48 of 48 feature rows hold NaN or inf"), ("one inf", "1 of 48 feature rows hold NaN or inf"),
    ("visible cam 3", "gallery (visible) cameras must be in (1, 2, 4, 5), found [3]"),
    ("infrared cam 1", "query (infrared) cameras must be in (3, 6), found [1]"),
    ("ids disjoint", "none of the 24 queries has its identity among the")]


# RegDB has no camera rule (its files' cameras are not read), so the camera cases are SYSU's alone.
@pytest.mark.parametrize("protocol, what, message", [("sysu", *case) for case in SPOILED] +
                         [("regdb", *case) for case in SPOILED if "cam" not in case[0]])
def test_evaluate_cli_rejects_what_would_give_a_wrong_table(tmp_path, capsys, protocol, what, message):
    path = tmp_path / "spoiled.pt"
    torch.save(spoil(features_dict(tmp_path), what), path)
    line = run_cli_error(["--features", str(path), "--protocol", protocol, "--trials", "2"], capsys)
    assert message in line
    if what in ("modality 2", "all nan", "one inf"):
        assert str(path) in line


@pytest.mark.parametrize("trials", ["0", "-3", "two"])
def test_evaluate_cli_rejects_trials_below_one(tmp_path, capsys, trials):
    path = features_file(tmp_path, ".pt")
    with pytest.raises(SystemExit) as exc:
        evaluate_cli(["--features", str(path), "--protocol", "sysu", "--trials", trials])
    assert exc.value.code == 2
    assert "argument --trials" in capsys.readouterr().err
    with pytest.raises(ValueError, match="trials must be a whole number of at least 1"):
        evaluate_sysu({"features": torch.zeros(1, 2), "ids": [1], "cams": [3]},
                      {"features": torch.zeros(1, 2), "ids": [1], "cams": [1], "paths": ["a"]}, trials=0)


def test_evaluate_cli_names_unreadable_files_and_the_format(tmp_path, capsys):
    data = features_dict(tmp_path)
    cases = {}
    (tmp_path / "text.pt").write_text("features,ids\n1,2\n")
    cases["text.pt"] = "cannot load it: it is not a file written by torch.save"
    torch.save(data["features"], tmp_path / "bare.pt")
    cases["bare.pt"] = "holds a Tensor, not a dict"
    torch.save({k: v.numpy() for k, v in data.items()}, tmp_path / "numpy.pt")
    cases["numpy.pt"] = "it holds numpy arrays, which torch.load(weights_only=True) refuses; save torch tensors"
    torch.save({"features": data["features"], "ids": data["ids"]}, tmp_path / "partial.pt")
    cases["partial.pt"] = "lacks ['cams', 'modalities']"
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    cases["broken.npz"] = "cannot read it as an .npz"
    torch.save({**data, "ids": data["ids"][:-1]}, tmp_path / "short.pt")
    cases["short.pt"] = "ids must be 1-D with one entry per feature row (48)"
    torch.save({**data, "ids": data["ids"].float() + 0.5}, tmp_path / "fractional.pt")
    cases["fractional.pt"] = "ids must hold integers"
    for name, message in cases.items():
        line = run_cli_error(["--features", str(tmp_path / name), "--protocol", "sysu"], capsys)
        assert str(tmp_path / name) in line and message in line, line
        if name not in ("short.pt", "fractional.pt"):
            assert "features [N, D], ids [N], cams [N] and modalities [N]" in line, line
    line = run_cli_error(["--features", str(tmp_path / "nope.pt"), "--protocol", "sysu"], capsys)
    assert line.endswith(f"features file not found: {tmp_path / 'nope.pt'}")


def test_evaluate_help_describes_the_features_file(capsys):
    with pytest.raises(SystemExit):
        evaluate_cli(["--help"])
    text = capsys.readouterr().out
    assert "features    [N, D] float" in text and "modalities  [N] int, 0 visible, 1 infrared" in text
    assert "SYSU-MM01: visible 1, 2, 4, 5; infrared 3, 6" in text


def test_rank_metrics_rejects_non_finite_features():
    q = torch.zeros(2, 3)
    q[1, 0] = float("nan")
    with pytest.raises(ValueError, match="query_features has 1 row"):
        rank_metrics(q, torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))


def test_sysu_protocol_end_to_end_perfect_features():
    gid, gcam, paths, _ = coverage(2, ids=10)
    q_ids = np.repeat(np.arange(1, 11), 3)
    one_hot = lambda ids: torch.nn.functional.one_hot(torch.as_tensor(ids) - 1, 10).float()  # noqa: E731
    summary = evaluate_sysu({"features": one_hot(q_ids), "ids": q_ids, "cams": np.full(30, 6)},
                            {"features": one_hot(gid), "ids": gid, "cams": gcam, "paths": paths}, trials=2)
    assert summary["rank1"]["mean"] == 1.0 and summary["mAP"]["mean"] == 1.0 and summary["mINP"]["std"] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="gallery_features has"):
        rank_metrics(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="query_cams is required"):
        rank_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), sysu_rules=True)
    with pytest.raises(ValueError, match="gallery_ids must be a 1-D tensor of length 2"):
        rank_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.zeros(3))


def regdb_results(tmp_path, trial, values, method="hsme"):
    """A trainer results.json of one RegDB trial whose two directions score ``values`` (one per trial)."""
    keys = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    summary = lambda v: {"trials": [dict.fromkeys(keys, v)], **{k: {"mean": v, "std": 0.0} for k in keys}}  # noqa: E731
    path = tmp_path / f"trial{trial}-{method}.json"
    path.write_text(json.dumps({"method": method, "dataset": "regdb", "step": 5,
                                "protocol": f"regdb trial {trial}, both directions",
                                "results": {"RegDB visible_to_thermal": summary(values[0]),
                                            "RegDB thermal_to_visible": summary(values[1])}}))
    return str(path)


def test_combine_pools_the_runs_trials_into_one_mean_and_std(tmp_path, capsys):
    """RegDB's reported figure: the mean (and std) over ten models, one per trial list."""
    scores = [(0.1 * t, 0.05 * t) for t in range(1, 4)]
    files = [regdb_results(tmp_path, t, v) for t, v in zip(range(1, 4), scores)]
    out = tmp_path / "combined.json"
    assert evaluate_cli(["--combine", *files, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RegDB visible_to_thermal, 3 runs" in printed and "20.00 +- 8.16" in printed   # 10, 20, 30 %
    combined = json.loads(out.read_text())
    assert combined["method"] == "hsme" and combined["dataset"] == "regdb" and combined["combined"] == files
    v2t = combined["results"]["RegDB visible_to_thermal"]
    assert v2t["mAP"]["mean"] == pytest.approx(0.2) and v2t["mAP"]["std"] == pytest.approx(np.std([0.1, 0.2, 0.3]))
    assert [t["run"] for t in v2t["trials"]] == files
    assert combined["results"]["RegDB thermal_to_visible"]["rank1"]["mean"] == pytest.approx(0.1)
    # the trainer's results and evaluate --features' JSON combine too (SYSU: every run's gallery draws pooled)
    sysu = tmp_path / "sysu.json"
    assert evaluate_cli(["--features", str(features_file(tmp_path, ".pt")), "--protocol", "sysu", "--trials", "2",
                         "--out", str(sysu)]) == 0
    capsys.readouterr()
    (tmp_path / "sysu-seed2.json").write_text(sysu.read_text())   # another run of the setting
    assert evaluate_cli(["--combine", str(sysu), str(tmp_path / "sysu-seed2.json"), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["results"]["SYSU-MM01 all single-shot, seeded galleries"]["trials"]) == 4


@pytest.mark.parametrize("case, message", [
    ("same trial", "are both RegDB trial 1"),
    ("same trial from evaluate", "are both RegDB trial 1"),
    ("other method", "method 'lccrf', but"),
    ("other settings", "holds ['RegDB visible_to_thermal']"),
    ("no trials", "has no per-trial results to combine"),
    ("missing", "results file not found"),
    ("twice", "is given twice"),
])
def test_combine_refuses_files_that_are_not_one_setting(tmp_path, capsys, case, message):
    first = regdb_results(tmp_path, 1, (0.1, 0.2))
    (tmp_path / "other").mkdir()
    second = regdb_results(tmp_path / "other", 1 if case == "same trial" else 2, (0.3, 0.4),
                           method="lccrf" if case == "other method" else "hsme")
    data = json.loads(open(second).read())
    if case == "other settings":
        del data["results"]["RegDB thermal_to_visible"]
    elif case == "no trials":
        data["results"]["RegDB thermal_to_visible"].pop("trials")
    open(second, "w").write(json.dumps(data))
    if case == "same trial from evaluate":   # evaluate --checkpoint --out's shape: "trial", no trial in protocol
        data = {**data, "trial": 1, "protocol": "RegDB visible_to_thermal, RegDB thermal_to_visible"}
        open(second, "w").write(json.dumps(data))
    if case == "missing":
        second = str(tmp_path / "absent.json")
    if case == "twice":
        second = str(tmp_path / "other" / ".." / "trial1-hsme.json")
    assert message in run_cli_error(["--combine", first, second], capsys)


def test_combine_takes_the_trainers_and_evaluates_files_together(tmp_path, capsys):
    """The trainer names a SYSU setting with its trial count, evaluate --checkpoint --out without; RegDB
    trials come from the trainer's protocol or evaluate's "trial"."""
    trainer = json.loads(open(regdb_results(tmp_path, 1, (0.1, 0.2))).read())
    sysu = {k: v for k, v in trainer["results"]["RegDB visible_to_thermal"].items()}
    for name, data in (("a.json", {"method": "hc", "dataset": "sysu", "protocol": "sysu all shots=1 trials=10",
                                   "results": {"SYSU-MM01 all single-shot, 10 trial(s)": sysu}}),
                       ("b.json", {"method": "hc", "dataset": "sysu", "checkpoint": "x.pt",
                                   "protocol": "SYSU-MM01 all single-shot",
                                   "results": {"SYSU-MM01 all single-shot": sysu}})):
        (tmp_path / name).write_text(json.dumps(data))
    assert evaluate_cli(["--combine", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "SYSU-MM01 all single-shot, 2 runs" in capsys.readouterr().out
    evaluate_out = {**trainer, "trial": 2, "protocol": "RegDB visible_to_thermal, RegDB thermal_to_visible"}
    (tmp_path / "c.json").write_text(json.dumps(evaluate_out))
    out = tmp_path / "combined.json"
    assert evaluate_cli(["--combine", str(tmp_path / "trial1-hsme.json"), str(tmp_path / "c.json"),
                         "--out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"].endswith("(RegDB trials [1, 2])")


@pytest.mark.parametrize("name", ["RegDB", "synthetic (SYSU) all single-shot, 10 runs"])
def test_the_table_s_columns_line_up(name):
    from vtreid.eval import format_table
    summary = {k: {"mean": 0.5, "std": 0.1} for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")}
    head, row = format_table(name, summary).splitlines()
    assert head.startswith(name + " ")
    heading_ends = [m.end() for m in re.finditer(r"\S+", head[len(name):])]
    value_ends = [m.end() for m in re.finditer(r"\d+\.\d\d \+-\s*\d+\.\d\d", row[len(name):])]
    assert len(value_ends) == 6 and heading_ends[-6:] == value_ends, format_table(name, summary)
