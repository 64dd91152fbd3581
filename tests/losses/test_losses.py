"""vtreid.losses against loop-by-loop implementations of the papers' formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from vtreid import losses
from vtreid.data import INFRARED, VISIBLE, TupleSampler
from vtreid.data.records import Record

from support import FUSED_BACKENDS, require_backend


def cos(a, b):
    return float(torch.dot(a, b) / (a.norm().clamp_min(1e-12) * b.norm().clamp_min(1e-12)))


# --- identity ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", (0.0, 0.1))
def test_identity_loss_single_and_striped(smoothing):
    logits, labels = torch.randn(3, 10, 7, dtype=torch.float64), torch.randint(0, 7, (10,))
    expected = 0.0
    for s in range(3):
        per_sample = []
        for i in range(10):
            logp = torch.log_softmax(logits[s, i], 0)
            per_sample.append(-(1 - smoothing) * logp[labels[i]] - smoothing / 7 * logp.sum())
        expected += sum(per_sample) / 10
    got = losses.identity_loss(logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(got, torch.as_tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(losses.identity_loss(logits[1], labels, label_smoothing=smoothing),
                               F.cross_entropy(logits[1], labels, label_smoothing=smoothing))
    with pytest.raises(ValueError, match="labels must be a 1-D tensor of length 10"):
        losses.identity_loss(logits, labels[:4])


@pytest.mark.parametrize("detach", (True, False))
def test_prediction_kl(detach):
    target = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    kl = losses.prediction_kl(target, logits, detach_target=detach)
    pt, p = target.detach().softmax(1), logits.detach().softmax(1)
    expected = sum(float((pt[i] * (pt[i].log() - p[i].log())).sum()) for i in range(5)) / 5
    assert math.isclose(float(kl.detach()), expected, rel_tol=1e-6)
    kl.backward()
    assert logits.grad.abs().sum() > 0
    assert (target.grad is None) == detach
    zero = losses.prediction_kl(logits.detach(), logits.detach())
    assert abs(float(zero)) < 1e-6
    total = losses.prediction_kl(target, logits, reduction="sum")   # eq. 6 as the paper writes it
    assert math.isclose(float(total), 5 * expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.prediction_kl(target, logits, reduction="batchmean")


# --- reciprocal ranking (HSME) ---------------------------------------------------------------------------

def ranking_by_loops(x, labels, modality, margin, reduction):
    d = torch.cdist(x, x)
    intra, cross, count = 0.0, 0.0, 0
    for a in range(len(x)):
        pos = [k for k in range(len(x)) if labels[k] == labels[a] and modality[k] != modality[a]]
        same = [k for k in range(len(x)) if labels[k] != labels[a] and modality[k] == modality[a]]
        other = [k for k in range(len(x)) if labels[k] != labels[a] and modality[k] != modality[a]]
        if not pos or not same or not other:
            continue  # the fused miner marks such an anchor invalid for the term that lacks a negative
        count += 1
        hard_pos = max(d[a, k] for k in pos)
        intra = intra + (margin + hard_pos - min(d[a, k] for k in same)).clamp_min(0)
        cross = cross + (margin + hard_pos - min(d[a, k] for k in other)).clamp_min(0)
    if reduction == "mean":
        intra, cross = intra / max(count, 1), cross / max(count, 1)
    return intra, cross


@pytest.mark.parametrize("backend", ("reference", *FUSED_BACKENDS))
@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_reciprocal_ranking_loss(backend, reduction):
    require_backend(backend, "cpu")
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1, 2, 3, 4])   # identity 4 has no visible image
    modality = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    x = F.normalize(torch.randn(12, 16, dtype=torch.float32), dim=1)
    x_loop = x.double().requires_grad_()
    x_op = x.clone().requires_grad_()
    want = ranking_by_loops(x_loop, labels, modality, 0.5, reduction)
    got = losses.reciprocal_ranking_loss(x_op, labels, modality, margin=0.5, reduction=reduction, backend=backend)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)
    (sum(want)).backward()
    got.total.backward()
    torch.testing.assert_close(x_op.grad.double(), x_loop.grad, rtol=1e-3, atol=1e-4)


# --- angular triplets (expAT, LCCRF) ---------------------------------------------------------------------

def tuples(n=5, d=8, dtype=torch.float64):
    return losses.Tuples.split(torch.randn(6 * n, d, dtype=dtype))


def term(a, p, n, clamp_positive):
    cp = cos(a, p)
    return max(cos(a, n), 0.0) - (max(cp, 0.0) if clamp_positive else cp) + 1.0


@pytest.mark.parametrize("clamp_positive", (False, True))
def test_angular_triplet_forms(clamp_positive):
    t = tuples()
    a, p, n = t.a_v, t.p_i, t.n_i
    terms = [term(a[k], p[k], n[k], clamp_positive) for k in range(5)]
    want = {"exp": sum(math.exp(v) for v in terms) / 5, "exp_of_mean": math.exp(sum(terms) / 5),
            "linear": sum(terms) / 5,
            "hinge": sum(max(cos(a[k], n[k]) - cos(a[k], p[k]) + 1.0, 0.0) for k in range(5)) / 5}
    for form, value in want.items():
        got = losses.angular_triplet_loss(a, p, n, form=form, clamp_positive=clamp_positive)
        assert math.isclose(float(got), value, rel_tol=1e-9), form


def test_expat_and_eat_compose_the_papers_terms():
    t = tuples()
    e = lambda a, p, n, c: sum(math.exp(term(a[k], p[k], n[k], c)) for k in range(5)) / 5  # noqa: E731
    expat = 0.7 * e(t.a_v, t.p_i, t.n_i, False) + 1.3 * e(t.a_i, t.p_v, t.n_v, False)     # expAT eq. 10
    assert math.isclose(float(losses.expat_loss(t, alpha=0.7, beta=1.3)), expat, rel_tol=1e-9)
    # uni-directional (Table II): anchor, positive and negative of each triplet from one modality
    assert math.isclose(float(losses.expat_loss(t, alpha=0.7, beta=1.3, bidirectional=False)),
                        0.7 * e(t.a_v, t.p_v, t.n_v, False) + 1.3 * e(t.a_i, t.p_i, t.n_i, False), rel_tol=1e-9)
    eat = (e(t.a_v, t.p_i, t.n_i, True) + e(t.a_v, t.p_i, t.n_v, True)                      # eq. 15
           + e(t.a_i, t.p_v, t.n_v, True) + e(t.a_i, t.p_v, t.n_i, True))                   # eq. 16
    assert math.isclose(float(losses.eat_loss(t)), eat, rel_tol=1e-9)


def test_tuples_split_matches_the_tuple_sampler():
    records = [Record(f"{pid}/{m}/{k}", pid, pid, 1 + 2 * m, m) for pid in range(6) for m in (VISIBLE, INFRARED)
               for k in range(3)]
    batch = next(iter(TupleSampler(records, tuples=3, seed=1)))
    t = losses.Tuples.split(torch.tensor([[r.label, r.modality] for r in (records[i] for i in batch)]))
    assert (t.a_v[:, 1] == VISIBLE).all() and (t.p_i[:, 1] == INFRARED).all() and (t.n_i[:, 1] == INFRARED).all()
    assert (t.a_i[:, 1] == INFRARED).all() and (t.p_v[:, 1] == VISIBLE).all() and (t.n_v[:, 1] == VISIBLE).all()
    assert (t.a_v[:, 0] == t.p_i[:, 0]).all() and (t.a_i[:, 0] == t.p_v[:, 0]).all()
    assert (t.a_v[:, 0] != t.n_i[:, 0]).all() and (t.a_i[:, 0] != t.n_v[:, 0]).all()
    with pytest.raises(ValueError, match="6N rows"):
        losses.Tuples.split(torch.randn(7, 3))


def test_compactness_and_cmkd():
    parts = torch.randn(4, 3, 5, dtype=torch.float64)
    want = 0.0
    for i in range(3):
        mean = parts[:, i].mean(0)
        want += sum(math.exp(cos(parts[r, i], mean)) for r in range(4))
    assert math.isclose(float(losses.compactness(parts)), want / 3, rel_tol=1e-9)
    same = torch.randn(2, 3, 5).expand(4, 2, 3, 5).permute(1, 0, 2, 3)[0]  # 4 identical parts: cos = 1 each
    assert math.isclose(float(losses.compactness(same)), 4 * math.e, rel_tol=1e-6)

    maps = [torch.randn(3, 2, 4, 2, dtype=torch.float64) for _ in range(4)]
    want = sum(float(((maps[0][k] - maps[1][k]) ** 2).sum() + ((maps[2][k] - maps[3][k]) ** 2).sum())
               for k in range(3)) / 3
    assert math.isclose(float(losses.cmkd_loss(*maps, reduction="sum")), want, rel_tol=1e-9)
    # default: the per-element mean (MSELoss over each map, the two directions summed)
    mse = float(((maps[0] - maps[1]) ** 2).mean() + ((maps[2] - maps[3]) ** 2).mean())
    assert math.isclose(float(losses.cmkd_loss(*maps)), mse, rel_tol=1e-9)
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.cmkd_loss(*maps, reduction="elements")
    with pytest.raises(ValueError, match="positive_infrared has shape"):
        losses.cmkd_loss(maps[0], maps[1][:2], maps[2], maps[3])


def test_empty_batches_give_zero_with_a_gradient_path():
    x = torch.randn(0, 4, requires_grad=True)
    parts = torch.randn(3, 0, 4, requires_grad=True)
    values = (losses.angular_triplet_loss(x, x, x), losses.cmkd_loss(x, x, x, x), losses.compactness(parts))
    for value in values:
        assert float(value.detach()) == 0.0
    sum(values).backward()
    assert x.grad.shape == (0, 4) and parts.grad.shape == (3, 0, 4)


def test_bad_inputs_name_the_argument():
    t = tuples()
    with pytest.raises(ValueError, match="form must be one of"):
        losses.angular_triplet_loss(t.a_v, t.p_i, t.n_i, form="square")
    with pytest.raises(ValueError, match="negative has shape"):
        losses.angular_triplet_loss(t.a_v, t.p_i, t.n_i[:2])
    with pytest.raises(ValueError, match="parts must be a float"):
        losses.compactness(torch.randn(3, 4))
    zeros = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="margin must be at least 0, got -1"):
        losses.reciprocal_ranking_loss(t.a_v, zeros, zeros, margin=-1.0)
    # scalars must be finite real numbers (inf gave an inf loss, True a margin of 1, "0.5" a TypeError deep)
    for bad, error in ((float("inf"), ValueError), (True, TypeError), ("0.5", TypeError)):
        with pytest.raises(error, match="margin must be a f"):
            losses.reciprocal_ranking_loss(t.a_v, zeros, zeros, margin=bad)
    with pytest.raises(ValueError, match="xi must be a finite number"):
        losses.angular_triplet_loss(t.a_v, t.p_i, t.n_i, xi=float("nan"))
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        losses.expat_loss(t, alpha=float("inf"))
    with pytest.raises(ValueError, match="anchor must hold rows"):
        losses.angular_triplet_loss(t.a_v[0], t.p_i[0], t.n_i[0])
    logits = torch.randn(4, 3)
    with pytest.raises(TypeError, match="labels must be integer class indices, got torch.float32"):
        losses.identity_loss(logits, torch.zeros(4))
    assert losses.identity_loss(logits, torch.tensor([0, 1, 2, 0], dtype=torch.uint8)).isfinite()   # as F.cross_entropy
    with pytest.raises(ValueError, match=r"label_smoothing must be a float in \[0, 1\], got -0.1"):
        losses.identity_loss(logits, torch.tensor([0, 1, 2, 0]), label_smoothing=-0.1)
    with pytest.raises(TypeError, match="clamp_positive must be True or False"):   # bool("no") is True
        losses.angular_triplet_loss(t.a_v, t.p_i, t.n_i, clamp_positive="no")
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        losses.expat_loss(t, bidirectional="yes")
    with pytest.raises(ValueError, match=r"labels must hold class indices in \[0, 3\)"):
        losses.identity_loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels is on meta"):
        losses.identity_loss(logits, torch.zeros(4, dtype=torch.long, device="meta"))
    int32 = losses.identity_loss(logits, torch.tensor([0, 1, 2, 0], dtype=torch.int32))
    assert int32 == losses.identity_loss(logits, torch.tensor([0, 1, 2, 0]))
    # NumPy scalars are numbers like Python's
    np = pytest.importorskip("numpy")
    assert losses.identity_loss(logits, torch.tensor([0, 1, 2, 0]), label_smoothing=np.float32(0.1)).isfinite()
