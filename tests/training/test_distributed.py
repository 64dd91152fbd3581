"""Training on 2 processes (gloo, CPU), started by the tests as torchrun would: RANK, WORLD_SIZE, ..."""
import contextlib
import faulthandler
import json
import os
import pathlib
import shutil
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from vtreid.data import Record
from vtreid.data.samplers import IdentityBalancedSampler, PairSampler, PKSampler, TupleSampler
from vtreid.methods import VARIANTS, Batch, get_method
from vtreid.training import distributed
from vtreid.training.config import ConfigError, resolve

TIMEOUT = 120      # one rank process, start to exit; these runs take 5-10 s alone on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def rank_main(fn, *args):
    """A hung rank prints every thread's stack to stderr and exits, so a failure says where it hung."""
    faulthandler.dump_traceback_later(TIMEOUT - 20, exit=True)
    fn(*args)


def spawn(fn, *args, world=2, codes=None):
    """Run fn(rank, world, port, *args) on ``world`` processes; their exit codes must be ``codes`` (all 0)."""
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(fn, rank, world, port, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    if any(p.is_alive() for p in procs):
        for p in procs:
            p.kill()
        pytest.fail(f"rank process still running after {TIMEOUT}s")
    assert [p.exitcode for p in procs] == (codes or [0] * world), [p.exitcode for p in procs]


# -- one DDP step with global mining == one process with the global batch --------------------------
def cfg_for(method, *overrides):
    return resolve(method, "synthetic", None, ["model.arch=resnet_tiny", "input.size=[64, 32]", *overrides], VARIANTS)


def global_batch(method):
    """(visible labels, infrared labels) of a 4-identity global batch; rank r takes identities 2r, 2r + 1."""
    ids = torch.arange(4)
    if method == "hsme":
        return ids, ids
    return ids.repeat_interleave(2), ids.repeat_interleave(2)     # hc: 2 visible + 2 infrared per identity


def images(labels, modality):
    g = torch.Generator().manual_seed(100 + modality)
    all_images = torch.randn(8, 3, 64, 32, generator=g)          # one image per (identity, slot)
    counts = {}
    out = []
    for label in labels.tolist():
        k = counts.get(label, 0)
        counts[label] = k + 1
        out.append(all_images[2 * label + k])
    return torch.stack(out)


def part(method, keep):
    vis, ir = global_batch(method)
    vis, ir = vis[keep(vis)], ir[keep(ir)]
    return Batch({"visible": images(vis, 0), "infrared": images(ir, 1), "visible_labels": vis, "infrared_labels": ir},
                 torch.device("cpu"))


def model_and_method(method, *overrides):
    torch.manual_seed(0)
    m = get_method(method)(cfg_for(method, *overrides), 4)
    model = m.build_model()
    for module in model.modules():   # per-rank batch statistics and dropout masks would differ by design
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            module.eval()
    return m, model


def ddp_step(rank, world, port, method, overrides, out):
    torchrun_env(rank, world, port)
    torch.distributed.init_process_group("gloo")
    m, model = model_and_method(method, *overrides)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batch = part(method, lambda labels: (labels // 2) == rank)
    terms = m.objective(ddp, batch)
    sum(terms.values()).backward()
    logged = distributed.mean_over_ranks(torch.stack([v.detach() for v in terms.values()]))   # as the trainer logs
    if rank == 0:
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                    "terms": dict(zip(terms, logged))}, out)
    leave_after_barrier()


def leave_after_barrier():
    """Meet the other rank, then exit without tearing anything down. These steps test gradients, not
    teardown, and gloo's teardown hung a rank: first when a rank destroyed its group while the other was
    still finishing (1 run in 3 before the barrier), then, with the barrier, in 1 CI run of about 5, in
    the destructors that run after the step returns (faulthandler: the rank's stack ended in rank_main).
    vtreid.train's own teardown is tested by the two-rank runs below."""
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("method, overrides", [("hsme", ()), ("hc", ()), ("hsme", ("variant=[sum]",))])
def test_ddp_step_with_global_mining_equals_one_process_with_the_global_batch(method, overrides, tmp_path):
    """The gradients and the logged terms (each rank's, averaged over the ranks) of a two-rank step are the
    one-process ones of the global batch; HSME's sum variant included (its KL sums read one rank's pairs)."""
    spawn(ddp_step, method, overrides, str(tmp_path / "grads.pt"))
    saved = torch.load(tmp_path / "grads.pt")
    ddp_grads, ddp_terms = saved["grads"], saved["terms"]
    m, model = model_and_method(method, *overrides)
    terms = m.objective(model, part(method, lambda labels: torch.ones_like(labels, dtype=torch.bool)))
    sum(terms.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp_grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(ddp_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=lambda s: f"{name}: {s}")
    assert ddp_terms.keys() == terms.keys()
    for name, value in terms.items():
        torch.testing.assert_close(ddp_terms[name], value.detach(), rtol=1e-5, atol=1e-6, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("method, overrides, summed", [
    ("hsme", ("variant=[sum]",), {"kl_visible", "kl_thermal", "intra", "cross"}),
    ("hc", (), {"hc"}),
])
def test_ddp_step_mining_within_ranks_sums_the_summed_terms_over_the_ranks(method, overrides, summed, tmp_path):
    """train.global_mining=false: each rank mines its own rows, and the step is that of the global batch's
    loss: the summed terms (sums over the batch) add up over the ranks, the averaged ones average. Before the
    fix, a summed ranking or centre term had 1/2 of its weight on two ranks (DDP averages the gradients)."""
    overrides = (*overrides, "train.global_mining=false")
    spawn(ddp_step, method, overrides, str(tmp_path / "grads.pt"))
    saved = torch.load(tmp_path / "grads.pt")
    ddp_grads, ddp_terms = saved["grads"], saved["terms"]
    m, model = model_and_method(method, *overrides)
    per_rank = [m.objective(model, part(method, lambda labels: (labels // 2) == rank)) for rank in (0, 1)]
    assert summed < per_rank[0].keys() and summed != set(per_rank[0])
    weight = {name: 1.0 if name in summed else 0.5 for name in per_rank[0]}
    sum(weight[name] * value for terms in per_rank for name, value in terms.items()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp_grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(ddp_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=lambda s: f"{name}: {s}")
    for name, w in weight.items():
        expected = w * (per_rank[0][name] + per_rank[1][name]).detach()
        torch.testing.assert_close(ddp_terms[name], expected, rtol=1e-5, atol=1e-6, msg=lambda s: f"{name}: {s}")


# -- HSME per_stream (two optimisers, no DDP): the same gradients as one process with the global batch --
def per_stream_step(rank, world, port, out):
    torchrun_env(rank, world, port)
    torch.distributed.init_process_group("gloo")
    from vtreid.train import optimizer_gradients
    from vtreid.training import distributed
    m, model = model_and_method("hsme", "variant=[per_stream]")
    if rank == 1:  # a different start on rank 1: the broadcast must replace it with rank 0's
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    distributed.broadcast_module(model)
    optimizers = m.optimizers(model)
    terms = m.objective(model, part("hsme", lambda labels: (labels // 2) == rank))
    grads = optimizer_gradients(m.losses(terms), optimizers)
    if rank == 0:
        torch.save(grads, out)
    leave_after_barrier()


def test_per_stream_step_on_two_ranks_equals_one_process_with_the_global_batch(tmp_path):
    from vtreid.train import optimizer_gradients
    spawn(per_stream_step, str(tmp_path / "grads.pt"))
    ranked = torch.load(tmp_path / "grads.pt")
    m, model = model_and_method("hsme", "variant=[per_stream]")
    terms = m.objective(model, part("hsme", lambda labels: torch.ones_like(labels, dtype=torch.bool)))
    grads = optimizer_gradients(m.losses(terms), m.optimizers(model))
    assert len(grads) == len(ranked) == 2
    for k, (one, two) in enumerate(zip(grads, ranked)):
        assert [g is None for g in one] == [g is None for g in two] and sum(g is not None for g in one) > 10
        for i, (a, b) in enumerate(zip(one, two)):
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=lambda s: f"optimiser {k}, tensor {i}: {s}")
    # the shared layers get each loss's own gradient (L_visible for optimiser 0, L_thermal for 1): not one loss twice
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = [{names[id(p)]: g for p, g in zip((p for grp in o.param_groups for p in grp["params"]), grads[k])}
               for k, o in enumerate(m.optimizers(model))]
    shared = [n for n in by_name[0] if n in by_name[1] and by_name[0][n] is not None]
    assert shared and all(n.startswith(("shared.", "classifier.")) for n in shared), shared
    assert any(not torch.allclose(by_name[0][n], by_name[1][n]) for n in shared)


# -- samplers ---------------------------------------------------------------------------------------
def records(ids=12, per=4):
    return [Record(f"{pid}-{m}-{k}.jpg", pid, pid, 1 + 2 * m, m) for pid in range(ids) for m in (0, 1)
            for k in range(per)]


@pytest.mark.parametrize("make", [
    lambda **kw: IdentityBalancedSampler(records(), 2, 2, **kw),
    lambda **kw: PKSampler(records(), 2, 4, **kw),
    lambda **kw: PairSampler(records(), 2, **kw),
    lambda **kw: TupleSampler(records(), 2, **kw),
])
def test_distributed_samplers_split_identities_without_overlap(make):
    recs = records()
    samplers = [make(seed=3, rank=r, world_size=3) for r in range(3)]
    for s in samplers:
        s.set_epoch(5)
    steps = [list(s) for s in samplers]
    assert len({len(s) for s in steps}) == 1 and len(steps[0]) == 12 // (2 * 3)
    seen = set()
    for step in zip(*steps):
        anchors = [{recs[i].pid for i in batch[: len(batch) // 3]} if isinstance(samplers[0], TupleSampler)
                   else {recs[i].pid for i in batch} for batch in step]
        assert all(len(a) == 2 for a in anchors)
        assert not (anchors[0] & anchors[1] or anchors[0] & anchors[2] or anchors[1] & anchors[2])
        for a in anchors:
            seen |= a
    assert seen == set(range(12))                               # one epoch covers every identity once
    again = make(seed=3, rank=1, world_size=3)
    again.set_epoch(5)
    assert list(again) == steps[1]                              # reproducible from seed and epoch


def test_bad_distributed_setups_are_clear_errors():
    with pytest.raises(ValueError, match="cannot give each of 4 ranks a group of 4 different identities"):
        IdentityBalancedSampler(records(ids=12), 4, 2, rank=0, world_size=4)
    m = get_method("hc")(cfg_for("hc"), 12)
    with pytest.raises(ConfigError, match=r"sampler.identities = 4 \(the global batch\) does not divide by the world size 3"):
        m.sampler(records(), seed=0, rank=0, world_size=3)


# -- a 2-rank run: only rank 0 writes, checkpoint, resume -----------------------------------------------
TINY = ["--method", "expat", "dataset.synthetic.ids=16", "dataset.synthetic.images=2", "dataset.synthetic.height=64",
        "dataset.synthetic.width=32", "input.size=[64, 32]", "model.arch=resnet_tiny", "train.workers=0",
        "train.eval_at_start=false", "train.log_every=1", "eval.trials_final=1", "sampler.tuples=4"]


HSME_TINY = [*TINY[2:-1], "--method", "hsme", "variant=[per_stream]", "sampler.pairs=4"]


def run_rank(rank, world, port, out, cache, extra, base=TINY):
    torchrun_env(rank, world, port)
    os.environ["VTREID_CACHE"] = cache
    from vtreid import train
    code = train.main(["--out", out, *base, *extra])
    if code != 0:
        raise SystemExit(code)


def run_rank_in_own_out(rank, world, port, outs, cache, extra):
    """run_rank with rank r's --out outs[r], as on nodes that each see their own directory at one path;
    what the rank prints to stderr goes to <outs[r]>.rank<r>.stderr."""
    with open(f"{outs[rank]}.rank{rank}.stderr", "w") as err, contextlib.redirect_stderr(err):
        run_rank(rank, world, port, outs[rank], cache, extra)


def run_rank_keeping_weights(rank, world, port, out, cache, extra, base):
    """run_rank, writing this rank's parameters after every step to <out>.rank<r>.pt."""
    from vtreid import train
    step = train.Run.train_step

    def train_step(self, raw):
        terms = step(self, raw)
        torch.save({n: p.detach().clone() for n, p in self.model.named_parameters()}, f"{out}.rank{rank}.pt")
        return terms
    train.Run.train_step = train_step
    run_rank(rank, world, port, out, cache, extra, base)


def test_two_rank_run_of_hsme_per_stream(tmp_path, monkeypatch):
    """Two optimisers under torchrun (no DDP: distributed.broadcast_module and average_gradients): the run
    trains, checkpoints both optimisers, and the ranks end on the same weights."""
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    from vtreid.training.data import synthetic_root
    with monkeypatch.context() as env:
        env.setenv("VTREID_CACHE", cache)
        synthetic_root({"ids": 16, "images": 2, "height": 64, "width": 32, "seed": 0})
    spawn(run_rank_keeping_weights, str(out), cache, ["train.max_steps=2"], HSME_TINY)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2 and len(state["optimizers"]) == 2 and state["config"]["optim"]["per_stream"]
    ranks = [torch.load(f"{out}.rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 10
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=0, msg=lambda s: f"{name}: {s}")
    for name, value in state["model"].items():   # and the checkpoint holds them
        if name in ranks[0]:
            assert torch.equal(value, ranks[0][name]), name


def test_two_rank_run_writes_once_checkpoints_and_resumes(tmp_path, monkeypatch):
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    from vtreid.training.data import synthetic_root
    with monkeypatch.context() as env:  # written once, before the ranks
        env.setenv("VTREID_CACHE", cache)
        synthetic_root({"ids": 16, "images": 2, "height": 64, "width": 32, "seed": 0})
    spawn(run_rank, str(out), cache, ["train.max_steps=2"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2]          # rank 0 alone writes
    log = (out / "log.txt").read_text()
    assert log.count("vtreid.train: expat on synthetic") == 1 and "(2 process(es))" in log
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2 and len(state["rng"]) == 2                          # both ranks' RNG states
    # each rank its own stream (its dropout masks): one seed on every rank gave row i the same mask on each
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    # Both ranks extracted test features with rank 0's BatchNorm statistics, those of the checkpoint: one
    # process evaluating it finds the same numbers (each rank's own statistics gave others).
    from vtreid.evaluate import main as evaluate_cli
    monkeypatch.setenv("VTREID_CACHE", cache)
    assert evaluate_cli(["--checkpoint", str(out / "checkpoints" / "last.pt"), "--device", "cpu",
                         "--out", str(tmp_path / "one.json")]) == 0
    (one,) = json.loads((tmp_path / "one.json").read_text())["results"].values()
    (two,) = json.loads((out / "results.json").read_text())["results"].values()
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert one[key]["mean"] == pytest.approx(two[key]["mean"], abs=1e-6), key
    stale = tmp_path / "stale"   # another node's copy of the directory, left at step 2
    shutil.copytree(out, stale)
    spawn(run_rank, str(out), cache, ["--resume", "train.max_steps=4"])
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4
    # --out on node-local storage: the ranks read different checkpoints and would train apart
    spawn(run_rank_in_own_out, [str(out), str(stale)], cache, ["--resume", "train.max_steps=6"], codes=[2, 2])
    for rank, path in enumerate((out, stale)):
        message = pathlib.Path(f"{path}.rank{rank}.stderr").read_text()
        assert "the ranks read different checkpoints" in message and "rank 0: step 4, rank 1: step 2" in message
        assert "every node sees" in message, message
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 4
    # a node that does not see the checkpoint at all: every rank stops (the others did wait in a collective
    # until the timeout), each saying which rank lacked it
    empty = tmp_path / "empty"
    spawn(run_rank_in_own_out, [str(out), str(empty)], cache, ["--resume", "train.max_steps=6"], codes=[2, 2])
    for rank, path in enumerate((out, empty)):
        message = pathlib.Path(f"{path}.rank{rank}.stderr").read_text()
        assert "rank 0: step 4, rank 1: no checkpoint" in message and "every node sees" in message, message
    assert "checkpoint not found" in pathlib.Path(f"{empty}.rank1.stderr").read_text()
    # no rank has one (a mistyped --out): the plain error
    spawn(run_rank_in_own_out, [str(empty), str(empty)], cache, ["--resume"], codes=[2, 2])
    for rank in (0, 1):
        message = pathlib.Path(f"{empty}.rank{rank}.stderr").read_text()
        assert message.startswith("error: checkpoint not found") and "every node" not in message, message
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["results"]


def test_sharded_extraction_with_fewer_records_than_ranks(monkeypatch):
    """Rank r extracts records r, r + world, ...: with 3 records and 4 ranks rank 3 has none, and its
    empty [0, 0] part could not be put back into the [0, D] rows it owns."""
    from vtreid.training import evaluation
    records = [Record(f"img{i}.png", pid=i, cam=1, modality=0, label=i) for i in range(3)]
    rows = torch.arange(3.0)[:, None].repeat(1, 5)
    monkeypatch.setattr(evaluation.distributed, "world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(evaluation, "extract_features", lambda model, recs, transform, **kw: {
        "features": rows[[int(r.pid) for r in recs]] if recs else torch.empty(0, 0)})
    parts = [rows[r::4] if r < 3 else torch.empty(0, 0) for r in range(4)]   # what each rank sends
    monkeypatch.setattr(evaluation.distributed, "gather_objects", lambda mine: parts)
    out = evaluation.extract_sharded(None, records, None)
    assert torch.equal(out["features"], rows) and list(out["ids"]) == [0, 1, 2]

