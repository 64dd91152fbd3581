"""Each method's objective against the papers' equations written out here, on every backend.

The expected values are computed from the network's outputs with loops over the equations of METHODS.md
(not with vtreid.losses or the method's code), in float64 on the reference backend; the backends must
then agree with each other on every term and on every parameter gradient.
"""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from vtreid import ops
from vtreid.methods import METHODS, VARIANTS, Batch, get_method
from vtreid.training.config import ConfigError, resolve

from support import FUSED_BACKENDS, require_backend, without_onednn

SIZE = (64, 32)


def config(method, *overrides):
    return resolve(method, "synthetic", None, ["model.arch=resnet_tiny", f"input.size={list(SIZE)}", *overrides],
                   VARIANTS)


def layout(method, n=3, classes=5):
    """(visible labels, infrared labels) in the method's sampler layout."""
    ids = torch.arange(n)
    if method in ("hsme", "dhsme"):
        return ids, ids.clone()
    if method in ("lccrf", "expat"):
        neg = (ids + 1) % n + n % classes  # another identity
        return torch.cat([ids, ids, neg]), torch.cat([ids, ids, (ids + 2) % classes])
    if method == "sphere":
        return torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])
    return ids.repeat_interleave(2), ids.repeat_interleave(2)   # hc: L ids x (T visible + T infrared)


def make_batch(method, dtype=torch.float32, classes=5):
    vis, ir = layout(method, classes=classes)
    g = torch.Generator().manual_seed(1)
    return Batch({"visible": torch.randn(len(vis), 3, *SIZE, generator=g, dtype=dtype),
                  "infrared": torch.randn(len(ir), 3, *SIZE, generator=g, dtype=dtype),
                  "visible_labels": vis, "infrared_labels": ir}, torch.device("cpu"))


def build(method, *overrides, classes=5, dtype=torch.float32):
    torch.manual_seed(0)
    m = get_method(method)(config(method, *overrides), classes)
    model = m.build_model().to(dtype)
    return m, model


def outputs(model, batch):
    torch.manual_seed(123)  # the same dropout masks as the method's own forward
    return model(batch.visible, batch.infrared)


# -- the papers' equations, one sample at a time ------------------------------------------------------
def ce(logits_row, label, smoothing=0.0):
    logp = torch.log_softmax(logits_row, 0)
    return -(1 - smoothing) * logp[label] - smoothing / len(logits_row) * logp.sum()


def cosine(a, b):
    return torch.dot(a, b) / (a.norm().clamp_min(1e-12) * b.norm().clamp_min(1e-12))


def sphere_logits(x, w, s):
    return torch.stack([torch.stack([s * cosine(xi, wc) for wc in w]) for xi in x])


def expected_sphere(model, batch, cfg):
    emb = outputs(model, batch)["embedding"]
    logits = sphere_logits(emb, model.classifier.weight, 14.0)
    return {"id": sum(ce(logits[i], batch.labels[i]) for i in range(len(emb))) / len(emb)}


def expected_hsme(model, batch, cfg):
    emb = outputs(model, batch)["embedding"]
    b, y, mod = batch.num_visible, batch.labels, batch.modality
    logits = sphere_logits(emb, model.classifier.weight, 5.0)
    p = torch.softmax(logits, 1)
    kl = lambda target, q: (target * (target.log() - q.log())).sum(1).mean()  # noqa: E731 - KL(target || q)
    d = lambda i, k: (emb[i] - emb[k]).norm()  # noqa: E731
    intra, cross, valid_i, valid_c = 0.0, 0.0, 0, 0
    for i in range(len(emb)):
        pos = [d(i, k) for k in range(len(emb)) if y[k] == y[i] and mod[k] != mod[i]]
        same = [d(i, k) for k in range(len(emb)) if y[k] != y[i] and mod[k] == mod[i]]
        other = [d(i, k) for k in range(len(emb)) if y[k] != y[i] and mod[k] != mod[i]]
        if pos and same:   # eq. 10
            intra, valid_i = intra + torch.clamp(0.5 + max(pos) - min(same), min=0), valid_i + 1
        if pos and other:  # eq. 12
            cross, valid_c = cross + torch.clamp(0.5 + max(pos) - min(other), min=0), valid_c + 1
    return {"id_visible": sum(ce(logits[i], y[i]) for i in range(b)) / b,
            "kl_visible": kl(p[b:], p[:b]),      # KL(p2 || p1), eq. 7
            "id_thermal": sum(ce(logits[i], y[i]) for i in range(b, 2 * b)) / b,
            "kl_thermal": kl(p[:b], p[b:]),      # KL(p1 || p2), eq. 8
            "intra": intra / max(valid_i, 1), "cross": cross / max(valid_c, 1)}


def expected_hc(model, batch, cfg):
    out = outputs(model, batch)
    y, mod = batch.labels, batch.modality
    ident = sum(sum(ce(out["logits"][p, i], y[i]) for i in range(len(y))) / len(y) for p in range(len(out["logits"])))
    hc = 0.0
    for p in range(out["stripes"].shape[0]):
        x = F.normalize(out["stripes"][p], dim=1)
        for c in y.unique():
            vis, ir = x[(y == c) & (mod == 0)], x[(y == c) & (mod == 1)]
            if len(vis) and len(ir):
                hc = hc + ((vis.mean(0) - ir.mean(0)) ** 2).sum()   # eq. 2 on the stripe's centres
    return {"id": ident, "hc": cfg["loss"]["weight"] * hc}


def tuples(x):
    return x.chunk(6)  # a_v, p_v, n_v, a_i, p_i, n_i


def expected_lccrf(model, batch, cfg):
    out = outputs(model, batch)
    a_v, p_v, n_v, a_i, p_i, n_i = tuples(out["feature"])
    pos = lambda z: torch.clamp(z, min=0)  # noqa: E731
    eat = 0.0
    for (a, p, n1, n2) in ((a_v, p_i, n_i, n_v), (a_i, p_v, n_v, n_i)):      # eq. 15, 16
        for k in range(len(a)):
            cp = pos(cosine(a[k], p[k]))
            eat = eat + (torch.exp(pos(cosine(a[k], n1[k])) - cp + 1) + torch.exp(pos(cosine(a[k], n2[k])) - cp + 1)) / len(a)
    parts = out["parts"]                                           # [R, 6N, C]
    n = len(a_v)
    compact = 0.0
    for rows in (range(0, n), range(3 * n, 4 * n)):               # the visible and the infrared anchors
        for i in rows:
            mean = parts[:, i].mean(0)
            compact = compact + sum(torch.exp(cosine(parts[r, i], mean)) for r in range(len(parts))) / n
    m_av, m_pv, _, m_ai, m_pi, _ = tuples(out["specific"])
    cmkd = sum(((m_av[k] - m_pi[k]) ** 2).mean() + ((m_ai[k] - m_pv[k]) ** 2).mean() for k in range(n)) / n
    logits = tuples(out["logits"])
    labels = tuples(batch.labels)
    ident = sum(sum(ce(logits[j][k], labels[j][k], 0.1) for k in range(n)) / n for j in (0, 3))
    return {"id": ident, "eat": eat, "compact": compact, "cmkd": cmkd}


def expected_expat(model, batch, cfg):
    out = outputs(model, batch)
    a_v, p_v, n_v, a_i, p_i, n_i = tuples(out["feature"])
    n = len(a_v)
    expat = sum(torch.exp(torch.clamp(cosine(a_v[k], n_i[k]), min=0) - cosine(a_v[k], p_i[k]) + 1)
                + torch.exp(torch.clamp(cosine(a_i[k], n_v[k]), min=0) - cosine(a_i[k], p_v[k]) + 1) for k in range(n)) / n
    logits, labels = tuples(out["logits"]), tuples(batch.labels)
    ident = sum(sum(ce(logits[j][k], labels[j][k], 0.1) for k in range(n)) / n for j in (0, 3))   # eq. 18
    return {"id": ident, "expat": expat}


EXPECTED = {"sphere": expected_sphere, "hsme": expected_hsme, "dhsme": expected_hsme, "hc": expected_hc,
            "hc_baseline": expected_hc, "lccrf": expected_lccrf, "expat": expected_expat}


def test_every_method_is_tested():
    assert set(EXPECTED) == set(METHODS) == {"sphere", "hsme", "dhsme", "hc", "hc_baseline", "lccrf", "expat"}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_objective_matches_the_papers_equations(method):
    m, model = build(method, dtype=torch.float64)
    batch = make_batch(method, torch.float64)
    with ops.use_backend("reference"):
        torch.manual_seed(123)
        got = m.objective(model, batch)
        want = EXPECTED[method](model, batch, m.cfg)
    assert set(got) == set(want), f"{method}: terms {sorted(got)} != {sorted(want)}"
    for name in want:
        torch.testing.assert_close(got[name], torch.as_tensor(want[name], dtype=torch.float64), rtol=1e-9, atol=1e-9,
                                   msg=lambda s: f"{method} term {name}: {s}")
        assert got[name] > 0 or name in ("intra", "cross"), f"{method}: {name} is {got[name]}: an uninformative check"


def terms_and_grads(method, backend):
    m, model = build(method)
    batch = make_batch(method)
    with ops.use_backend(backend):
        torch.manual_seed(123)
        terms = m.objective(model, batch)
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_backends_agree_on_terms_and_gradients(method, backend):
    require_backend(backend, "cpu", torch.float32)
    ref_terms, ref_grads = terms_and_grads(method, "reference")
    terms, grads = terms_and_grads(method, backend)
    assert terms.keys() == ref_terms.keys()
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda s: f"{method} {backend} term {name}: {s}")
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5,
                                   msg=lambda s: f"{method} {backend} gradient of {name}: {s}")


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_a_few_steps_lower_the_loss(method):
    m, model = build(method, "optim.weight_decay=0.0")   # the method's own optimiser and rate
    batch = make_batch(method)
    optimizers = m.optimizers(model)
    losses = []
    for _ in range(6):
        for o in optimizers:
            o.zero_grad()
        torch.manual_seed(0)  # the same dropout masks at every step: the same function of the weights
        loss = sum(m.objective(model, batch).values())
        loss.backward()
        for o in optimizers:
            o.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], f"{method}: {losses}"


def test_hsme_per_stream_is_two_optimisers_each_on_its_own_loss():
    m, model = build("hsme", "variant=[per_stream]")
    visible, thermal = m.optimizers(model)
    ids = lambda o: {id(p) for g in o.param_groups for p in g["params"]}  # noqa: E731
    own_v, own_t = ({id(p) for p in model.resnet.specific_stages[k].parameters()} for k in (0, 1))
    assert own_v <= ids(visible) and not own_v & ids(thermal)
    assert own_t <= ids(thermal) and not own_t & ids(visible)
    assert id(model.classifier.weight) in ids(visible) & ids(thermal)
    terms = m.objective(model, make_batch("hsme"))
    l_visible, l_thermal = m.losses(terms)
    ranking = terms["intra"] + terms["cross"]
    torch.testing.assert_close(l_visible, terms["id_visible"] + terms["kl_visible"] + ranking)   # eq. 13
    torch.testing.assert_close(l_thermal, terms["id_thermal"] + terms["kl_thermal"] + ranking)   # eq. 14


def test_variants_set_what_they_name():
    cfg = config("expat", "variant=[exp_of_mean, csbn_none]")
    assert cfg["loss"]["form"] == "exp_of_mean" and cfg["model"]["csbn"] == "none"
    assert config("lccrf", "variant=[cmkd_sum]", "loss.cmkd=mean")["loss"]["cmkd"] == "mean"  # explicit key wins
    assert config("hc", "variant=[authors_head]")["model"]["authors_head"] is True
    assert config("expat", "variant=[sysu_296]")["dataset"]["train_ids"] == "train"
    paper = config("lccrf", "variant=[paper_augmentation]")["input"]
    assert (paper["flip"], paper["padding"], paper["erasing"]) == (False, 0, 0.5)


def test_hc_authors_optim_reaches_its_last_milestone():
    """The authors' loop runs epochs 0..60: lr 1e-2, then 1e-3 from epoch 30, 1e-4 in epoch 60."""
    m = get_method("hc")(config("hc", "variant=[authors_optim]"), num_classes=5)
    per_epoch = 7
    steps = m.stage_steps(per_epoch)
    assert steps == 61 * per_epoch
    factors = [m.lr_factor(epoch * per_epoch, per_epoch) for epoch in (0, 29, 30, 59, 60)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert m.lr_factor(steps - 1, per_epoch) == pytest.approx(0.01)


def test_hsme_sum_variant_sums_every_batch_term_as_the_paper():
    """Eq. 6 (KL), 10 and 12 (ranking) sum over the batch: the variant scales each by its row count."""
    mean_terms = terms_and_grads("hsme", "reference")[0]
    m, model = build("hsme", "variant=[sum]")
    batch = make_batch("hsme")
    with ops.use_backend("reference"):
        torch.manual_seed(123)
        summed = m.objective(model, batch)
    b = batch.num_visible
    for name in ("kl_visible", "kl_thermal"):
        torch.testing.assert_close(summed[name].detach(), b * mean_terms[name], msg=name)
    for name in ("id_visible", "id_thermal"):
        torch.testing.assert_close(summed[name].detach(), mean_terms[name], msg=name)
    assert summed["intra"] >= mean_terms["intra"] and summed["cross"] >= mean_terms["cross"]


def test_bad_configuration_names_the_setting_and_the_choices():
    with pytest.raises(ConfigError, match=r"unknown method 'agw'; choose one of .*'hsme'"):
        resolve("agw", "synthetic", None, [], VARIANTS)
    with pytest.raises(ConfigError, match=r"unknown variant 'exp' of method 'expat'; variants: .*'exp_of_mean'"):
        config("expat", "variant=[exp]")
    with pytest.raises(ConfigError, match=r"unknown setting 'optim.learning_rate'; valid keys here: .*lr"):
        config("expat", "optim.learning_rate=0.1")
    with pytest.raises(ConfigError, match=r"'optim.lr' must be a float like 0.0003, got 'fast'"):
        config("expat", "optim.lr=fast")
    with pytest.raises(ConfigError, match=r"train.amp must be one of \('off', 'bf16', 'fp16'\), got 'fp8'"):
        config("expat", "train.amp=fp8")
    with pytest.raises(ConfigError, match=r"loss.form must be one of \('exp', 'exp_of_mean', 'linear', 'hinge'\)"):
        get_method("expat")(config("expat", "loss.form=square"), 5)
    with pytest.raises(ConfigError, match=r"model.embedding = 16 < 40 training identities"):
        get_method("dhsme")(config("dhsme", "model.embedding=16"), 40)


def test_a_sampler_that_cannot_form_a_batch_is_a_clear_error():
    from vtreid.data.records import Record
    only_visible = [Record(f"{i}.jpg", i // 2, i // 2, 1, 0) for i in range(8)]
    m = get_method("hc")(config("hc"), 4)
    with pytest.raises(ValueError, match="no identity has at least 1 image"):
        m.sampler(only_visible, seed=0)


def test_learning_rate_schedules():
    lccrf = get_method("lccrf")(resolve("lccrf", "sysu", None, [], VARIANTS), 395)
    assert math.isclose(lccrf.lr_factor(0, 100), 1 / 3, rel_tol=1e-6)          # warm-up from 1/3
    assert math.isclose(lccrf.lr_factor(250, 100), 1 / 3 + 2 / 3 * 0.5, rel_tol=1e-6)
    assert lccrf.lr_factor(9999, 100) == 1.0 and math.isclose(lccrf.lr_factor(10000, 100), 0.1)
    assert math.isclose(lccrf.lr_factor(20000, 100), 0.01) and lccrf.stage_steps(100) == 30000
    sphere = get_method("sphere")(resolve("sphere", "sysu", None, [], VARIANTS), 395)
    assert math.isclose(sphere.lr_factor(0, 10), 0.05)                         # 5e-5 / 1e-3, by epochs
    assert sphere.lr_factor(200, 10) == 1.0 and sphere.lr_factor(799, 10) == 1.0
    assert math.isclose(sphere.lr_factor(800, 10), 0.1) and math.isclose(sphere.lr_factor(1000, 10), 0.01)
    assert sphere.stage_steps(10) == 1400
    hc = get_method("hc")(resolve("hc", "sysu", None, [], VARIANTS), 395)
    assert math.isclose(hc.lr_factor(30 * 696, 696), 0.01) and hc.stage_steps(696) == 60 * 696   # 1e-2 -> 1e-4


@pytest.mark.parametrize("method", ["sphere", "hsme", "hc", "expat"])
def test_fused_ops_under_autocast_match_the_reference(method):
    """--amp bf16 on CPU: the objective with the native ops inside autocast agrees with the reference ops
    inside the same autocast, within bfloat16's tolerance."""
    require_backend("native", "cpu", torch.bfloat16)
    results = {}
    for backend in ("reference", "native"):
        m, model = build(method)
        batch = make_batch(method)
        with without_onednn():   # the network's bf16 layers: oneDNN's returned NaN on AMX CPUs, by test order
            with ops.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
                torch.manual_seed(123)
                terms = m.objective(model, batch)
            sum(terms.values()).backward()
        results[backend] = ({k: v.detach().float() for k, v in terms.items()},
                            {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None})
    (ref_terms, ref_grads), (terms, grads) = results["reference"], results["native"]
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=3e-2, atol=3e-2,
                                   msg=lambda s: f"{method} term {name} under autocast: {s}")
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp_min(1e-3)
        torch.testing.assert_close(grads[name] / scale, ref_grads[name] / scale, rtol=5e-2, atol=5e-2,
                                   msg=lambda s: f"{method} gradient of {name} under autocast: {s}")


@pytest.mark.parametrize("method", ["hsme", "hc"])
def test_training_batches_give_the_fused_ops_int32_modality(method, monkeypatch):
    """Batch.modality is the kernels' int32, so no training step pays a conversion launch per op call."""
    seen = []
    for module in (sys.modules["vtreid.ops.hard_mining"], sys.modules["vtreid.ops.hetero_center"]):
        real = module.modality_ids
        monkeypatch.setattr(module, "modality_ids", lambda t, real=real: seen.append(t.dtype) or real(t))
    m, model = build(method)
    with ops.use_backend("native"):
        m.objective(model, make_batch(method))
    assert seen and set(seen) == {torch.int32}, seen
