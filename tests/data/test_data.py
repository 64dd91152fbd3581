"""vtreid.data on generated data in both real layouts: readers, check, generator, transforms, samplers, loader."""
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vtreid.data import (INFRARED, VISIBLE, IdentityBalancedSampler, PairSampler, PKSampler, Transform, TupleSampler,
                         build_loader, load_image, regdb, synthetic, sysu)
from vtreid.data.__main__ import main as data_cli
from vtreid.models import resnet18

from shape_features import rank1, silhouette_features


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    return synthetic.write_sysu(tmp_path_factory.mktemp("sysu") / "SYSU-MM01", ids=20, images=2, seed=3)


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    return synthetic.write_regdb(tmp_path_factory.mktemp("regdb") / "RegDB", ids=12, images=3, seed=4)


def test_sysu_reader_counts(sysu_root):
    split = sysu.load(sysu_root)
    test_ids = sysu.read_ids(sysu_root / "exp" / "test_id.txt")
    train_ids = sysu.read_ids(sysu_root / "exp" / "train_id.txt") + sysu.read_ids(sysu_root / "exp" / "val_id.txt")
    assert len(test_ids) == 10 and len(train_ids) == 10 and not set(test_ids) & set(train_ids)
    assert {r.pid for r in split.train} == set(train_ids)
    assert sorted({r.label for r in split.train}) == list(range(10))
    assert Counter(r.modality for r in split.train) == {VISIBLE: 10 * 4 * 2, INFRARED: 10 * 2 * 2}
    assert len(split.query) == 10 * 2 * 2 and all(r.cam in (3, 6) and r.modality == INFRARED for r in split.query)
    assert len(split.gallery) == 10 * 4 * 2 and all(r.cam in (1, 2, 4, 5) for r in split.gallery)


def test_sysu_ori_data_nesting_is_accepted(sysu_root, tmp_path):
    nested = tmp_path / "SYSU"
    shutil.copytree(sysu_root / "exp", nested / "exp")
    for cam in range(1, 7):
        shutil.copytree(sysu_root / f"cam{cam}", nested / "ori_data" / f"cam{cam}")
    assert len(sysu.load(nested).train) == len(sysu.load(sysu_root).train)


def test_regdb_reader_counts_and_directions(regdb_root):
    for trial in (1, 10):
        v2t = regdb.load(regdb_root, trial, "visible_to_thermal")
        t2v = regdb.load(regdb_root, trial, "thermal_to_visible")
        assert len({r.pid for r in v2t.train}) == 6 and len(v2t.train) == 6 * 3 * 2
        assert all(r.modality == VISIBLE for r in v2t.query) and all(r.modality == INFRARED for r in v2t.gallery)
        assert t2v.query == v2t.gallery and t2v.gallery == v2t.query
        assert all(Path(r.path).is_file() for r in v2t.query + v2t.gallery)
    assert regdb.load(regdb_root, 1).train != regdb.load(regdb_root, 2).train
    with pytest.raises(ValueError, match="trial"):
        regdb.load(regdb_root, 11)


def test_check_names_missing_and_malformed_files(sysu_root, regdb_root, tmp_path, capsys):
    assert sysu.check(sysu_root) == [] and regdb.check(regdb_root) == []
    assert data_cli(["check", "--dataset", "sysu", "--root", str(sysu_root)]) == 0
    broken = tmp_path / "sysu"
    shutil.copytree(sysu_root, broken)
    pid = sysu.read_ids(broken / "exp" / "test_id.txt")[0]
    for cam in (3, 6):
        shutil.rmtree(broken / f"cam{cam}" / f"{pid:04d}")
    (broken / "exp" / "val_id.txt").unlink()
    problems = sysu.check(broken)
    assert any(f"identity {pid}" in p and "no infrared image" in p for p in problems)
    assert any("val_id.txt" in p for p in problems)
    assert data_cli(["check", "--dataset", "sysu", "--root", str(broken)]) == 1
    assert "val_id.txt" in capsys.readouterr().out

    broken = tmp_path / "regdb"
    shutil.copytree(regdb_root, broken)
    victim = regdb.read_list(broken, "test", "thermal", 1)[0].path
    Path(victim).unlink()
    with (broken / "idx" / "train_visible_2.txt").open("a") as f:
        f.write("Visible/1/x.bmp not-a-label\n")
    problems = regdb.check(broken)
    assert any(victim in p for p in problems)
    assert any("train_visible_2.txt" in p and "expected 'relative/path label'" in p for p in problems)


def test_check_decodes_every_image_and_reports_empty_identity_folders(sysu_root, tmp_path, capsys):
    broken = tmp_path / "sysu"
    shutil.copytree(sysu_root, broken)
    pid = sysu.read_ids(broken / "exp" / "train_id.txt")[0]
    empty, garbage = broken / "cam1" / f"{pid:04d}" / "0001.jpg", broken / "cam4" / f"{pid:04d}" / "0002.jpg"
    empty.write_bytes(b"")
    garbage.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    truncated = broken / "cam3" / f"{pid:04d}" / "0001.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    emptied = broken / "cam2" / f"{pid:04d}"  # the identity keeps images in cams 1, 4, 5: only the folder is empty
    for f in emptied.glob("*.jpg"):
        f.unlink()
    problems = sysu.check(broken, workers=3)
    assert problems == [f"empty identity folder (no *.jpg): {emptied}", f"empty image file (0 bytes): {empty}",
                        *[p for p in problems if str(garbage) in p or str(truncated) in p]]
    assert len(problems) == 4 and all("image does not decode" in p for p in problems[2:])
    assert data_cli(["check", "--dataset", "sysu", "--root", str(broken)]) == 1
    captured = capsys.readouterr()
    assert "4 problem(s)" in captured.out and str(garbage) in captured.out
    total = sum(1 for _ in broken.glob("cam*/*/*.jpg"))
    assert f"decoding images: {total}/{total} (100%" in captured.err


def test_a_verified_listing_is_not_decoded_again(sysu_root, regdb_root, tmp_path, monkeypatch):
    """A training start skips decoding a listing that decoded cleanly before (a stamp in the cache named by
    every image's path, size and mtime); the check command always decodes; a changed image is decoded
    again and reported; a listing with a problem leaves no stamp; an unwritable cache only costs decodes."""
    from vtreid.data import verify
    monkeypatch.setenv("VTREID_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "sysu"
    shutil.copytree(sysu_root, root)
    decoded = []
    real = verify.decode_problem
    monkeypatch.setattr(verify, "decode_problem", lambda path: decoded.append(path) or real(path))
    total = sum(1 for _ in root.glob("cam*/*/*.jpg"))

    def decodes(**kwargs):
        decoded.clear()
        problems = sysu.check(root, **kwargs)
        return len(decoded), problems
    assert decodes(reuse_verified=True) == (total, [])
    assert decodes(reuse_verified=True) == (0, [])
    assert decodes() == (total, [])                                     # python -m vtreid.data check
    image = next(root.glob("cam3/*/*.jpg"))
    image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for _ in range(2):                                                  # no stamp for a listing with a problem
        count, problems = decodes(reuse_verified=True)
        assert count == total and len(problems) == 1 and str(image) in problems[0]
    image.unlink()                                                      # a removed image: another listing
    assert decodes(reuse_verified=True)[0] == total - 1
    assert regdb.check(regdb_root, reuse_verified=True) == [] and decoded
    decoded.clear()
    assert regdb.check(regdb_root, reuse_verified=True) == [] and not decoded
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("VTREID_CACHE", str(blocked))
    assert regdb.check(regdb_root, reuse_verified=True) == [] and decoded


def test_ranks_share_the_decoding_and_agree_on_skipping_it(sysu_root, tmp_path, monkeypatch):
    """Under torchrun each rank decodes every world-th image (a first start costs one decode in all, not
    one per rank), and every rank gets all the problems in listing order; the ranks skip a verified
    listing together, and decode when one of them lacks the stamp (another node's cache)."""
    import threading

    from vtreid.data import verify
    monkeypatch.setenv("VTREID_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "sysu"
    shutil.copytree(sysu_root, root)
    bad = sorted(root.glob("cam*/*/*.jpg"))[1::7]
    for image in bad:
        image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    world, decoded, real = 3, Counter(), verify.decode_problem
    monkeypatch.setattr(verify, "decode_problem", lambda path: decoded.update([path]) or real(path))
    slots, meet = [None] * world, threading.Barrier(world)

    def all_gather(rank, obj):  # what gather_objects does across processes
        slots[rank] = obj
        meet.wait()
        got = list(slots)
        meet.wait()
        return got

    def ranks(**kwargs):
        results, decoded_before = [None] * world, sum(decoded.values())

        def rank_main(rank):
            share = verify.WorkShare(rank, world, lambda obj: all_gather(rank, obj))
            results[rank] = sysu.check(root, reuse_verified=True, share=share, **kwargs)
        threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}") for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(r is not None for r in results)
        return results, sum(decoded.values()) - decoded_before

    alone = sysu.check(root)
    total = sum(1 for _ in root.glob("cam*/*/*.jpg"))
    decoded.clear()
    results, count = ranks()
    assert results == [alone] * world and len(alone) == len(bad) and count == total  # each image once in all
    assert set(decoded.values()) == {1}
    for image in bad:
        image.unlink()
    results, count = ranks()
    assert results == [[]] * world and count == total - len(bad)                     # clean: stamped
    assert ranks()[1] == 0                                                            # all skip together
    real_stamp = verify.listing_stamp

    def rank2_elsewhere(paths):  # rank 2's node has its own cache, without the stamp
        elsewhere = tmp_path / "other-node" / "stamp"
        return elsewhere if threading.current_thread().name == "rank2" else real_stamp(paths)
    monkeypatch.setattr(verify, "listing_stamp", rank2_elsewhere)
    results, count = ranks()
    assert results == [[]] * world and count == total - len(bad)                     # all decode their part


def test_check_reports_identities_missing_a_modality_and_bad_regdb_images(regdb_root, tmp_path):
    broken = tmp_path / "regdb"
    shutil.copytree(regdb_root, broken)
    records = regdb.read_list(broken, "train", "thermal", 1)
    label = records[0].label
    lines = (broken / "idx" / "train_thermal_1.txt").read_text().splitlines()
    kept = [line for line in lines if int(line.split()[1]) != label]
    (broken / "idx" / "train_thermal_1.txt").write_text("\n".join(kept) + "\n")
    garbage = Path(regdb.read_list(broken, "test", "visible", 1)[0].path)
    garbage.write_bytes(b"BM garbage")
    problems = regdb.check(broken, workers=2)
    assert problems[0] == (f"{broken / 'idx' / 'train_thermal_1.txt'}: no thermal image of label(s) [{label}], "
                           f"which train_visible_1.txt lists")
    assert problems[1:] == [p for p in problems if f"image does not decode: {garbage}" in p] and len(problems) == 2
    Path(records[0].path).unlink()
    assert sum(f"listed file missing: {records[0].path} (in " in p for p in regdb.check(broken, decode=False)) == 1


@pytest.mark.parametrize("dataset", ["sysu", "regdb"])
def test_check_of_a_missing_root_says_so_once(dataset, tmp_path, capsys):
    assert data_cli(["check", "--dataset", dataset, "--root", str(tmp_path / "nope")]) == 1
    out = capsys.readouterr().out.splitlines()
    name = "SYSU-MM01" if dataset == "sysu" else "RegDB"
    assert out == [f"problem: {name} root {tmp_path / 'nope'} does not exist", f"1 problem(s) in {tmp_path / 'nope'}"]
    (tmp_path / "empty").mkdir()
    problems = regdb.check(tmp_path / "empty")
    assert len(problems) == 3 and problems[-1].startswith(f"missing folder {tmp_path / 'empty' / 'idx'}")


def test_synth_help_describes_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        data_cli(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--ids", "default 24"), ("--images", "sysu, default 3"), ("--height", "default 128"),
                            ("--width", "default 64"), ("--seed", "default 0")):
        usage = f"{option} {option[2:].upper()} "
        assert usage in text and default in text.split(usage)[1][:90]
    assert "outside the source tree" in text
    with pytest.raises(SystemExit) as exc:
        data_cli(["synth", "--layout", "sysu", "--out", "x", "--ids", "0"])
    assert exc.value.code == 2 and "--ids must be at least 1" in capsys.readouterr().err


def test_synth_into_an_unwritable_place_exits_2_naming_it(tmp_path, capsys):
    """As train / evaluate / extract / export / visualize report a file they cannot write."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert data_cli(["synth", "--layout", "regdb", "--out", str(blocker / "out"), "--ids", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(blocker) in err


def test_corrupt_or_missing_image_names_the_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_image(tmp_path / "gone.jpg")


def test_generator_is_deterministic_fast_and_three_channel_infrared(tmp_path):
    start = time.time()
    a = synthetic.write_sysu(tmp_path / "a", ids=6, images=2, seed=7)
    assert time.time() - start < 10
    b = synthetic.write_sysu(tmp_path / "b", ids=6, images=2, seed=7)
    c = synthetic.write_sysu(tmp_path / "c", ids=6, images=2, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".jpg")
    ir = load_image(a / "cam3" / "0001" / "0001.jpg", INFRARED)
    assert ir.shape == (3, 128, 64) and torch.equal(ir[0], ir[1]) and torch.equal(ir[1], ir[2])
    assert data_cli(["synth", "--layout", "regdb", "--out", str(tmp_path / "r"), "--ids", "4", "--images", "2"]) == 0
    assert regdb.check(tmp_path / "r") == []


def test_synthetic_data_is_learnable_but_not_trivial(tmp_path):
    """Cross-modal rank-1 (infrared query, visible gallery, 20 test identities, chance 0.05): simple
    silhouette statistics reach at least 3x chance; an untrained ResNet-18 stays within 2x chance."""
    root = synthetic.write_sysu(tmp_path / "sysu", ids=40, images=3, seed=1)
    split = sysu.load(root)
    qids, gids = [r.pid for r in split.query], [r.pid for r in split.gallery]
    chance = 1 / len(set(qids))
    shape_r1 = rank1(np.stack([silhouette_features(r.path, r.modality) for r in split.query]), qids,
                     np.stack([silhouette_features(r.path, r.modality) for r in split.gallery]), gids)
    torch.manual_seed(0)
    net, transform = resnet18().eval(), Transform((128, 64), train=False)

    def embed(records):
        with torch.no_grad():
            x = torch.stack([transform(load_image(r.path, r.modality)) for r in records])
            return torch.nn.functional.adaptive_avg_pool2d(net.features(x), 1).flatten(1).numpy()

    random_r1 = rank1(embed(split.query), qids, embed(split.gallery), gids)
    assert shape_r1 >= 3 * chance, (shape_r1, chance)
    assert random_r1 <= 2 * chance, (random_r1, chance)


def test_transforms_keep_shapes_and_ranges():
    img = torch.randint(0, 256, (3, 100, 50), dtype=torch.uint8)
    test = Transform((64, 32), train=False)(img)
    assert test.shape == (3, 64, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert ((test * std[:, None, None] + mean[:, None, None]).clamp(0, 1) - (test * std[:, None, None] + mean[:, None, None])).abs().max() < 1e-5
    train = Transform((64, 32), train=True, erasing=1.0, padding=4)
    a = train(img, torch.Generator().manual_seed(5))
    b = train(img, torch.Generator().manual_seed(5))
    c = train(img, torch.Generator().manual_seed(6))
    assert a.shape == (3, 64, 32) and torch.equal(a, b) and not torch.equal(a, c)
    crop = Transform((48, 24), train=True, resize_to=(64, 32), padding=0, flip=False)(img, torch.Generator().manual_seed(0))
    assert crop.shape == (3, 48, 24)
    assert Transform((48, 24), train=False, resize_to=(64, 32))(img).shape == (3, 64, 32)


def test_identity_balanced_and_pk_batches(sysu_root):
    records = sysu.load(sysu_root).train
    sampler = IdentityBalancedSampler(records, identities=4, per_modality=3, seed=0)
    assert len(sampler) == 10 // 4
    for batch in sampler:
        chosen = [records[i] for i in batch]
        assert len(batch) == 4 * 6 and len({r.label for r in chosen}) == 4
        for label in {r.label for r in chosen}:
            assert Counter(r.modality for r in chosen if r.label == label) == {VISIBLE: 3, INFRARED: 3}
    pk = PKSampler(records, identities=5, instances=4, seed=0)
    for batch in pk:
        chosen = [records[i] for i in batch]
        assert len(batch) == 20 and all(c == 4 for c in Counter(r.label for r in chosen).values())
        for label in {r.label for r in chosen}:
            assert Counter(r.modality for r in chosen if r.label == label) == {VISIBLE: 2, INFRARED: 2}


def test_pair_and_tuple_batches(sysu_root):
    records = sysu.load(sysu_root).train
    for batch in PairSampler(records, pairs=5, seed=1):
        chosen = [records[i] for i in batch]
        for k in range(5):
            vis, ir = chosen[2 * k], chosen[2 * k + 1]
            assert vis.modality == VISIBLE and ir.modality == INFRARED and vis.label == ir.label
    n = 4
    for batch in TupleSampler(records, tuples=n, seed=2):
        r = [records[i] for i in batch]
        a_v, p_v, n_v, a_i, p_i, n_i = (r[k * n:(k + 1) * n] for k in range(6))
        for k in range(n):
            assert {a_v[k].modality, p_v[k].modality, n_v[k].modality} == {VISIBLE}
            assert {a_i[k].modality, p_i[k].modality, n_i[k].modality} == {INFRARED}
            assert a_v[k].label == a_i[k].label == p_i[k].label == p_v[k].label
            assert p_i[k].path != a_i[k].path and p_v[k].path != a_v[k].path   # positive is not the pair
            assert n_i[k].label != a_v[k].label and n_v[k].label != a_i[k].label


@pytest.mark.parametrize("make", [lambda r, **kw: IdentityBalancedSampler(r, 2, 2, **kw),
                                  lambda r, **kw: PKSampler(r, 2, 4, **kw), lambda r, **kw: PairSampler(r, 2, **kw),
                                  lambda r, **kw: TupleSampler(r, 2, **kw)])
def test_samplers_reproducible_reshuffled_and_rank_split(sysu_root, make):
    records = sysu.load(sysu_root).train
    first, again = make(records, seed=5), make(records, seed=5)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    ranks = [make(records, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    anchor_ids = [set() for _ in ranks]
    for r, sampler in enumerate(ranks):
        for batch in sampler:
            chosen = [records[i] for i in batch]
            # the identities a rank owns (negatives of a tuple may come from anywhere)
            owned = chosen[:len(chosen) // 3] if isinstance(sampler, TupleSampler) else chosen
            anchor_ids[r] |= {c.label for c in owned}
            assert {c.modality for c in chosen} == {VISIBLE, INFRARED}
    assert not anchor_ids[0] & anchor_ids[1]


def test_loader_splits_modalities_in_batch_order(sysu_root):
    records = sysu.load(sysu_root).train
    sampler = IdentityBalancedSampler(records, identities=2, per_modality=2, seed=0)
    loader = build_loader(records, Transform((64, 32), train=True), batch_sampler=sampler, seed=0)
    batch = next(iter(loader))
    assert batch["visible"].shape == (4, 3, 64, 32) and batch["infrared"].shape == (4, 3, 64, 32)
    first = next(iter(sampler))
    assert batch["visible_index"].tolist() == [i for i in first if records[i].modality == VISIBLE]
    assert batch["visible_labels"].tolist() == [records[i].label for i in batch["visible_index"]]
    again = next(iter(build_loader(records, Transform((64, 32), train=True), batch_sampler=sampler, seed=0)))
    assert torch.equal(batch["visible"], again["visible"])
    evaluation = build_loader(sysu.load(sysu_root).query, Transform((64, 32), train=False), batch_size=7)
    sizes = [len(b["infrared"]) for b in evaluation]
    assert sum(sizes) == 40 and sizes[0] == 7


def test_every_training_draw_gets_its_own_augmentation(sysu_root):
    """A record drawn twice in an epoch (here with replacement: 8 images a modality from identities that have
    8 visible and 4 infrared) is augmented twice; a draw's augmentation is the same in every run, with any
    number of workers."""
    from vtreid.training.data import EpochBatches
    records = sysu.load(sysu_root).train
    batches = EpochBatches(IdentityBalancedSampler(records, identities=2, per_modality=8, seed=0), 2)
    transform = Transform((64, 32), train=True, padding=8, flip=True, erasing=0.5)
    images, index = {}, {}
    for workers in (0, 2):
        loader = build_loader(records, transform, batch_sampler=batches, seed=0, workers=workers)
        for step, batch in enumerate(loader):
            for part in ("visible", "infrared"):
                images[workers, step, part], index[workers, step, part] = batch[part], batch[f"{part}_index"]
    for key in images:
        assert torch.equal(images[key], images[(2, *key[1:])]) and torch.equal(index[key], index[(2, *key[1:])])
    draws = [(idx, img) for key in images if key[0] == 0 for idx, img in zip(index[key].tolist(), images[key])]
    repeated = Counter(idx for idx, _ in draws)
    assert sum(n > 1 for n in repeated.values()) >= 5, repeated   # infrared images drawn more than once
    for record in repeated:
        same = [img for idx, img in draws if idx == record]
        assert all(not torch.equal(same[0], other) for other in same[1:]), record


def test_augmentation_seeds_do_not_collide_across_epochs_or_seeds():
    from vtreid.data.loader import augmentation_seed
    seeds = {augmentation_seed(seed, epoch, index) for seed in range(3) for epoch in range(3) for index in range(20011)}
    assert len(seeds) == 3 * 3 * 20011   # the old linear mix gave (e + 1, i) the seed of (e, i + 10007)
    assert augmentation_seed(0, 1, 3) == augmentation_seed(0, 1, 3) < 2**63


def test_random_erasing_draws_the_aspect_ratio_uniformly():
    """Zhong et al.: r_e ~ U(0.3, 1/0.3), so the median h/w of the erased box is about 1.8 (a log-uniform
    draw, as before, gives 1.0), and the box is filled with 0 (the mean colour after normalisation)."""
    from vtreid.data.transforms import random_erasing
    g = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(600):
        img = random_erasing(torch.ones(3, 400, 400), g, p=1.0)
        erased = (img[0] == 0)
        h, w = int(erased.any(1).sum()), int(erased.any(0).sum())
        assert (img[:, erased] == 0).all() and h * w == int(erased.sum())
        ratios.append(h / w)
    median = float(np.median(ratios))
    assert 1.5 < median < 2.2, median


def test_transform_defaults_add_no_augmentation_and_grayscale_is_luminance():
    img = (torch.rand(3, 64, 32) * 255).to(torch.uint8)
    plain = Transform((64, 32), train=True)
    for seed in range(5):  # no flip, no padding, no erasing by default: the train transform is deterministic
        assert torch.equal(plain(img, torch.Generator().manual_seed(seed)), Transform((64, 32), train=False)(img))
    grey = Transform((64, 32), train=True, grayscale=1.0)(img, torch.Generator().manual_seed(0))
    x = img.float() / 255
    lum = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    torch.testing.assert_close(grey, (lum[None] - mean.view(3, 1, 1)) / std.view(3, 1, 1))
