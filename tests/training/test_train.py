"""python -m vtreid.train end to end on tiny synthetic data: every method, outputs, resume, signals, errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vtreid import train
from vtreid.methods import METHODS
from vtreid.training import checkpoint

from support import without_onednn

TINY = ["dataset.synthetic.ids=16", "dataset.synthetic.images=2", "dataset.synthetic.height=64",
        "dataset.synthetic.width=32", "input.size=[64, 32]", "input.resize=null", "input.test_size=null",
        "model.arch=resnet_tiny", "train.workers=0", "train.eval_at_start=false", "train.log_every=1",
        "eval.trials_final=2"]
#: per method: a batch small enough for a 2-core machine
SMALL = {"sphere": ["sampler.identities=4", "sampler.instances=4"], "hsme": ["sampler.pairs=4"],
         "dhsme": ["sampler.pairs=4", "train.length=2"], "hc": ["sampler.identities=2", "sampler.per_modality=4"],
         "hc_baseline": ["sampler.identities=2", "sampler.per_modality=4"], "lccrf": ["sampler.tuples=3"],
         "expat": ["sampler.tuples=3"]}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """One synthetic dataset for the whole session, outside the user's cache."""
    monkeypatch.setenv("VTREID_CACHE", str(tmp_path_factory.getbasetemp() / "vtreid-cache"))


def run(out, method, *extra, expect=0):
    code = train.main(["--method", method, "--out", str(out), *TINY, *SMALL[method], *extra])
    assert code == expect, f"exit code {code}, expected {expect}"
    return out


def metric_lines(out):
    """metrics.jsonl without the timing fields (which differ from run to run)."""
    lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in ("images_per_s", "data_time", "step_time", "peak_mem_mib"):
            line.pop(key, None)
    return lines


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_from_the_cli(method, tmp_path):
    out = run(tmp_path / method, method, "train.max_steps=4")   # dhsme: 2 steps a stage, so both stages
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "results.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert state["step"] == 4 and state["config"]["method"] == method
    assert state["stage"] == (2 if method == "dhsme" else 1)
    steps = [line for line in metric_lines(out) if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    assert all(set(line["terms"]) and abs(sum(line["terms"].values()) - line["loss"]) < 1e-3 * abs(line["loss"])
               for line in steps)
    results = json.loads((out / "results.json").read_text())
    summary = next(iter(results["results"].values()))
    assert len(summary["trials"]) == 2 and set(summary["mAP"]) == {"mean", "std"}
    assert set(results["backends"]) == set(train.OP_FAMILIES)


def test_the_no_argument_run_reaches_the_evaluation_and_writes_every_file(tmp_path, monkeypatch, capsys):
    """The README's main command, with only the step count and worker count reduced."""
    monkeypatch.chdir(tmp_path)
    assert train.main(["train.max_steps=3", "train.workers=0"]) == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("hc-synthetic-")
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "results.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (runs[0] / name).is_file(), name
    printed = capsys.readouterr()
    assert "evaluation at step 0" in printed.out and "evaluation at step 3" in printed.out  # untrained, then trained
    assert "rank1" in printed.out and "method: hc" in printed.out and "step 3/3" in printed.out
    results = json.loads((runs[0] / "results.json").read_text())
    assert len(next(iter(results["results"].values()))["trials"]) == 10
    # every evaluation kept in full; the untrained baseline with as many trials as the final one
    evaluations = sorted((runs[0] / "evaluations").iterdir())
    assert [p.name for p in evaluations] == ["step0000000.json", "step0000003.json"]
    start, end = (json.loads(p.read_text()) for p in evaluations)
    assert start["step"] == 0 and len(next(iter(start["results"].values()))["trials"]) == 10
    assert end == results


def final_state(out):
    return checkpoint.load(Path(out) / "checkpoints" / "last.pt")


@pytest.mark.parametrize("method", ["hsme", "dhsme"])
def test_resume_continues_exactly(method, tmp_path):
    """2N steps in one run == N steps, resume, N steps: bit-identical weights, the same metric lines
    (hsme: dropout + SGD momentum; dhsme: the resume crosses into stage 2)."""
    n = 3 if method == "hsme" else 2
    whole = run(tmp_path / "whole", method, "--deterministic", f"train.max_steps={2 * n}")
    part = run(tmp_path / "part", method, "--deterministic", f"train.max_steps={n}")
    assert train.main(["--resume", "--out", str(part), f"train.max_steps={2 * n}"]) == 0
    a, b = final_state(whole), final_state(part)
    assert a["step"] == b["step"] == 2 * n and a["stage"] == b["stage"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for oa, ob in zip(a["optimizers"], b["optimizers"]):
        for k, state in oa["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][k][name])), (k, name)
    # the training lines (the first part also ends with its own final evaluation at step N)
    steps = lambda out: [line for line in metric_lines(out) if "loss" in line]  # noqa: E731
    assert steps(whole) == steps(part) and len(steps(whole)) == 2 * n
    # --deterministic does not outlive the run: it made every later torch.empty fill its memory (a profiled
    # op test downstream counted those fills)
    assert not torch.are_deterministic_algorithms_enabled()


def test_dhsme_stage_two_decorrelates_freezes_and_continues_stage_one(tmp_path):
    out = run(tmp_path / "s1", "dhsme", "train.max_steps=2")            # stage 1 only (2 steps a stage)
    stage1 = final_state(out)
    assert stage1["stage"] == 1
    assert train.main(["--resume", "--out", str(out), "train.max_steps=3"]) == 0
    after_one = final_state(out)
    assert train.main(["--resume", "--out", str(out), "train.max_steps=4"]) == 0
    stage2 = final_state(out)
    assert after_one["stage"] == stage2["stage"] == 2
    w1 = stage1["model"]["classifier.weight"].double().T                  # W: m x n
    u, s, _ = torch.linalg.svd(w1, full_matrices=False)
    w2 = stage2["model"]["classifier.weight"].double().T
    torch.testing.assert_close(w2, (u * s).float().double(), atol=1e-5, rtol=1e-5)     # W <- U S
    assert torch.equal(after_one["model"]["classifier.weight"], stage2["model"]["classifier.weight"])  # frozen
    gram = w2.T @ w2
    torch.testing.assert_close(gram, torch.diag(gram.diagonal()), atol=1e-4, rtol=0)  # W^T W diagonal
    projection = w2 @ torch.linalg.pinv(w2) @ w1                           # same column space
    torch.testing.assert_close(projection, w1, atol=1e-5, rtol=1e-4)
    # stage 2 starts from stage 1's weights: one stage-2 step moves the rest only a little
    moved = [(stage1["model"][k] - after_one["model"][k]).abs().max() for k in stage1["model"]
             if k != "classifier.weight" and stage1["model"][k].is_floating_point()]
    assert max(moved) < 1.0
    held = lambda state: sum(len(g["params"]) for g in state["optimizers"][0]["param_groups"])  # noqa: E731
    assert held(after_one) == held(stage1) - 1                             # a fresh optimiser without W


def test_sigterm_checkpoints_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "VTREID_CACHE": os.environ["VTREID_CACHE"]}
    cmd = [sys.executable, "-m", "vtreid.train", "--method", "expat", "--out", str(out), *TINY, *SMALL["expat"],
           "train.max_steps=500"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "resume with: python -m vtreid.train --resume" in stdout
    stopped = final_state(out)["step"]
    assert 2 <= stopped < 500
    assert train.main(["--resume", "--out", str(out), f"train.max_steps={stopped + 2}"]) == 0
    assert final_state(out)["step"] == stopped + 2
    assert [line["step"] for line in metric_lines(out) if "loss" in line] == list(range(1, stopped + 3))


@pytest.mark.parametrize("when", ["final", "start"])
def test_a_signal_during_an_evaluation_outside_the_loop_stops_at_once_and_says_so(tmp_path, monkeypatch, capsys, when):
    """SIGTERM during the final evaluation (or the one at start) killed the process without a word; it
    now stops the evaluation where it is, with the signal's exit code and what to do. The final one's
    checkpoint is written first, and a resume runs the final evaluation again."""
    evaluate, seen, handler = train.evaluate, [], signal.getsignal(signal.SIGTERM)

    def interrupted(run, writers, progress, final):
        if final and not seen:
            seen.append(run.step)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler raises at the next bytecode: this loop never finishes
                time.sleep(0.01)
            raise AssertionError("the signal did not stop the evaluation")
        return evaluate(run, writers, progress, final)

    monkeypatch.setattr(train, "evaluate", interrupted)
    out = tmp_path / "run"
    extra = ["train.eval_at_start=true"] if when == "start" else []
    run(out, "expat", "train.max_steps=2", *extra, expect=128 + signal.SIGTERM)
    said = capsys.readouterr().out
    assert not (out / "results.json").exists()
    if when == "start":
        assert seen == [0] and "during the evaluation at start" in said
        assert not (out / "checkpoints" / "last.pt").exists()
        return
    assert seen == [2] and "during the final evaluation" in said and "resume with: python -m vtreid.train --resume" in said
    assert final_state(out)["step"] == 2
    assert train.main(["--resume", "--out", str(out)]) == 0
    assert (out / "results.json").is_file() and seen == [2]
    assert signal.getsignal(signal.SIGTERM) == handler


def test_a_worker_forked_inside_a_stop_request_leaves_the_stop_to_the_main_process():
    """A DataLoader worker forked during an evaluation inherits its handler; a terminal's Ctrl-C reaches
    the worker too, and a Stopped raised there came back to the main process as a failed batch (whose
    re-raise could not even rebuild the exception)."""
    from vtreid.training.signals import StopRequest, Stopped
    with StopRequest(immediate=True):
        pid = os.fork()
        if pid == 0:   # the worker: the signal must not raise here (and no exception may leave this fork)
            code = 4
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                code = 0
            except (Stopped, KeyboardInterrupt):
                code = 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class Killed(BaseException):
    """A kill in the middle of something (SIGKILL after a launcher's grace): nothing in the run catches it."""


@pytest.mark.parametrize("when", ["signal at the step", "kill during the evaluation", "kill saving best.pt"])
def test_a_run_stopped_at_an_evaluation_step_keeps_the_step_and_the_resume_evaluates_first(tmp_path, monkeypatch,
                                                                                            when):
    """A stop requested in a step due an evaluation checkpoints without evaluating (the evaluation can outlast
    the 30 s torchrun gives after SIGTERM); a kill during the evaluation finds last.pt already written (it
    was written after the evaluation, and a kill during it lost every step since the last checkpoint). An
    evaluation counts as done once best.pt holds its step (evaluations/step<N>.json is written last). In each
    case the resume runs that evaluation before its first step."""
    evaluate, step, seen, killed = train.evaluate, train.Run.train_step, [], []
    out = tmp_path / "run"

    def evaluating(run, writers, progress, final):
        seen.append((run.step, final))
        if when == "kill during the evaluation" and not killed:
            killed.append(run.step)
            assert final_state(out)["step"] == 2   # the step is safe before the evaluation starts
            raise Killed
        return evaluate(run, writers, progress, final)

    def signalled_step(self, raw):
        terms = step(self, raw)
        if when == "signal at the step" and self.step == 1:   # the step that makes 2
            os.kill(os.getpid(), signal.SIGTERM)
        return terms

    save = train.Run.save

    def killed_saving_best(self, *names):
        if when == "kill saving best.pt" and "best.pt" in names and not killed:
            killed.append(self.step)   # the evaluation is done, best.pt not written: it must be redone
            raise Killed
        return save(self, *names)

    monkeypatch.setattr(train, "evaluate", evaluating)
    monkeypatch.setattr(train.Run, "train_step", signalled_step)
    monkeypatch.setattr(train.Run, "save", killed_saving_best)
    if when != "signal at the step":
        with pytest.raises(Killed):
            run(out, "expat", "train.max_steps=4", "train.eval_every=2")
    else:
        run(out, "expat", "train.max_steps=4", "train.eval_every=2", expect=128 + signal.SIGTERM)
        assert seen == []
    assert final_state(out)["step"] == 2 and not (out / "evaluations" / "step0000002.json").exists()
    seen.clear()
    assert train.main(["--resume", "--out", str(out)]) == 0
    assert seen == [(2, False), (4, True)]
    assert sorted(p.name for p in (out / "evaluations").iterdir()) == ["step0000002.json", "step0000004.json"]
    assert [line["step"] for line in metric_lines(out) if "loss" in line] == [1, 2, 3, 4]


def test_a_stop_inside_an_evaluation_outside_the_loop_skips_the_teardown_barrier(tmp_path, monkeypatch):
    """Each rank leaves such an evaluation where the signal found it, maybe inside a gather: a barrier at
    teardown then met that gather, and the ranks hung until torchrun killed them. A stop in the loop, which
    the ranks agree on, still meets at the barrier."""
    evaluate, cleans = train.evaluate, []
    monkeypatch.setattr(train.distributed, "teardown", lambda ctx, clean=True: cleans.append(clean))

    def interrupted(run, writers, progress, final):
        if final:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                time.sleep(0.01)
        return evaluate(run, writers, progress, final)

    monkeypatch.setattr(train, "evaluate", interrupted)
    run(tmp_path / "a", "expat", "train.max_steps=1", expect=128 + signal.SIGTERM)
    monkeypatch.setattr(train, "evaluate", evaluate)
    run(tmp_path / "b", "expat", "train.max_steps=1")
    assert cleans == [False, True]


def poison(monkeypatch, method_class, call: int, term: str, change) -> None:
    """The method's ``call``-th objective (1-based) gives change(terms[term]) for that term."""
    objective = method_class.objective
    calls = []

    def poisoned(self, model, batch):
        terms = objective(self, model, batch)
        calls.append(1)
        if len(calls) == call:
            terms[term] = change(terms[term])
        return terms

    monkeypatch.setattr(method_class, "objective", poisoned)


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _nan_gradient(term):
    """The term itself, with a NaN gradient: a finite loss whose update breaks the weights."""
    return _NaNGradient.apply(term)


def test_a_non_finite_loss_stops_with_the_term_and_keeps_the_last_good_step(tmp_path, monkeypatch, capsys):
    from vtreid.methods.expat import ExpAT
    objective = ExpAT.objective
    poison(monkeypatch, ExpAT, 3, "expat", lambda t: t * float("nan"))
    run(tmp_path / "nan", "expat", "--deterministic", "train.max_steps=10", expect=1)
    assert "the loss term 'expat' is nan at step 3" in capsys.readouterr().out
    # the failed step's forward ran (BatchNorm statistics, RNG): the checkpoint is the state before it
    kept = final_state(tmp_path / "nan")
    monkeypatch.setattr(ExpAT, "objective", objective)
    good_run = run(tmp_path / "good", "expat", "--deterministic", "train.max_steps=2")
    good = checkpoint.load(good_run / "checkpoints" / "last.pt")
    assert kept["step"] == good["step"] == 2
    assert kept["model"].keys() == good["model"].keys() and any("running_mean" in k for k in good["model"])
    for key in good["model"]:
        assert torch.equal(kept["model"][key], good["model"][key]), key
    assert torch.equal(kept["rng"][0]["torch"], good["rng"][0]["torch"])
    assert kept["rng"][0]["python"] == good["rng"][0]["python"]


def test_the_final_evaluation_s_best_score_is_in_last_pt(tmp_path):
    """A resume of a finished run must not replace best.pt with a worse network at its next evaluation."""
    out = run(tmp_path / "r", "hsme", "train.max_steps=2")
    score = checkpoint.load(out / "checkpoints" / "best.pt")["best_score"]
    assert score > float("-inf") and final_state(out)["best_score"] == score


@pytest.mark.parametrize("args, message", [
    (["optim.learning_rate=1"], "unknown setting 'optim.learning_rate'"),
    (["optim.lr=fast"], "'optim.lr' must be a float"),
    (["variant=[nope]"], "unknown variant 'nope' of method 'expat'"),
    (["--dataset", "sysu"], "dataset 'sysu' needs its folder: --data-root DIR"),
    (["--dataset", "sysu", "--data-root", "/nonexistent/SYSU"], "missing or incomplete"),
    (["--device", "cuda:7"], "train.device is 'cuda:7'"),
    (["--config", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
    (["sampler.tuples"], "must be KEY=VALUE"),
    (["variant=null"], "'variant' cannot be null"),
    (["optim.lr=null"], "'optim.lr' cannot be null"),
    (["train.max_steps=two"], "train.max_steps must be a whole number of at least 1 or null, got 'two'"),
    (["train.max_steps=0"], "train.max_steps must be a whole number of at least 1"),
    (["input.size=[64]"], "input.size must be [height, width]"),
    (["input.resize=[64, 0]"], "input.resize must be [height, width], two whole numbers of at least 1 or null"),
    (["optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    (["schedule.milestones=[5, 2]"], "schedule.milestones must be an increasing list"),
    (["train.log_every=0"], "train.log_every must be at least 1, got 0"),
    (["optim.lr=.nan"], "optim.lr must be a finite number"),
    (["model.pretrained=7"], "model.pretrained must be a path or null, got 7"),
    (["train.epoch_steps=100000"], "needs more than 1000 passes over the identities"),
])
def test_bad_input_is_an_error_naming_it_before_any_work(args, message, tmp_path, capsys):
    if args[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert train.main(["--method", "expat", "--out", str(tmp_path / "bad"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_checkpoint_whose_weights_do_not_fit_is_a_short_error(tmp_path, capsys):
    """load_state_dict's message lists every key (hundreds of lines for a ResNet-50); the error counts them
    and names the first few, for the resume and for evaluate / extract alike."""
    out = run(tmp_path / "r", "expat", "train.max_steps=1")
    path = out / "checkpoints" / "last.pt"
    state = checkpoint.load(path)
    state["model"] = {(k if i % 2 else f"renamed.{k}"): v for i, (k, v) in enumerate(state["model"].items())}
    torch.save(state, path)
    assert train.main(["--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot resume: the checkpoint's model does not fit" in err and " missing (" in err and "more)" in err
    assert len(err) < 800, err
    from vtreid.extract import load_checkpoint
    with pytest.raises(ValueError, match=r"weights do not fit .* missing \(") as info:
        load_checkpoint(path)
    assert len(str(info.value)) < 800
    # a configuration its network cannot be built from: the error names the checkpoint (it did not)
    state["config"]["model"]["last_stride"] = 3
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{path}: cannot rebuild its network .*last_stride"):
        load_checkpoint(path)


def test_unknown_method_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        train.main(["--method", "agw"])
    assert "invalid choice: 'agw' (choose from" in capsys.readouterr().err


def test_resuming_with_a_changed_method_or_model_is_an_error(tmp_path, capsys):
    out = run(tmp_path / "r", "expat", "train.max_steps=1")
    assert train.main(["--resume", "--out", str(out), "--method", "lccrf"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "trained with method 'expat'" in err
    for change in ("model.arch=resnet18", "train.epoch_steps=5", "train.amp=fp16", "train.length=9", "seed=3"):
        assert train.main(["--resume", "--out", str(out), change]) == 2, change
        assert f"cannot change '{change.split('=')[0]}' when resuming" in capsys.readouterr().err
    # where, how often, how far: these may change (and an unchanged value of any setting may be given)
    assert train.main(["--resume", "--out", str(out), "train.max_steps=2", "train.log_every=5", "eval.trials_final=1",
                       "train.workers=0", "model.arch=resnet_tiny", f"dataset.root={tmp_path}"]) == 0
    assert train.main(["--resume", "--out", str(tmp_path / "absent")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_second_start_does_not_decode_the_dataset_again(tmp_path, monkeypatch):
    """The start-up check decodes the dataset's images once; later starts (and resumes) reuse the stamp of
    the verified listing (vtreid.data.verify), so they begin training at once."""
    from vtreid.data import verify
    from vtreid.methods import VARIANTS
    from vtreid.training.config import resolve
    from vtreid.training.data import load_split
    monkeypatch.setenv("VTREID_CACHE", str(tmp_path / "cache"))
    decoded = []
    real = verify.decode_problem
    monkeypatch.setattr(verify, "decode_problem", lambda path: decoded.append(path) or real(path))
    cfg = resolve("hc", "synthetic", None, ["dataset.synthetic.ids=6"], VARIANTS)
    reports = []
    first = load_split(cfg, progress=lambda done, total: reports.append((done, total)))
    assert decoded and len(decoded) >= len(first.train) + len(first.query) + len(first.gallery)
    assert reports[-1] == (len(decoded), len(decoded))            # the start says it decodes, and how far
    decoded.clear()
    reports.clear()
    assert load_split(cfg, progress=lambda done, total: reports.append((done, total))) == first
    assert not decoded and not reports


def test_an_empty_identity_folder_is_a_warning_at_start_and_a_bad_image_an_error(tmp_path, monkeypatch):
    """Training starts on a copy with an empty identity folder (it holds nothing to read; an identity the
    protocol uses without a modality is an error of its own), with a warning naming it; an image that does
    not decode stops it with the check's report."""
    import shutil

    from vtreid.data import sysu as sysu_reader
    from vtreid.methods import VARIANTS
    from vtreid.training.config import resolve
    from vtreid.training.data import load_split, synthetic_root
    monkeypatch.setenv("VTREID_CACHE", str(tmp_path / "cache"))
    generated = synthetic_root({"ids": 6, "images": 2, "height": 64, "width": 32, "seed": 0})
    root = tmp_path / "SYSU-MM01"
    shutil.copytree(generated, root)
    pid = sysu_reader.read_ids(root / "exp" / "train_id.txt")[0]
    emptied = root / "cam2" / f"{pid:04d}"     # the identity keeps visible images in cams 1, 4, 5
    for image in emptied.glob("*.jpg"):
        image.unlink()
    cfg = resolve("hc", "sysu", None, [f"dataset.root={root}"], VARIANTS)
    with pytest.warns(UserWarning, match=r"1 empty identity folder\(s\), e.g. .*cam2"):
        split = load_split(cfg)
    assert any(r.pid == pid for r in split.train)
    next(root.glob("cam3/*/*.jpg")).write_bytes(b"not an image")
    with pytest.raises(train.ConfigError, match="image does not decode"), pytest.warns(UserWarning):
        load_split(cfg)


@pytest.mark.parametrize("dataset, trial", [("regdb", 3), ("sysu", None)])
def test_results_json_names_the_regdb_trial(dataset, trial):
    """results.json says which RegDB trial list it holds, as evaluate --checkpoint's output does, so
    evaluate --combine reads it without parsing the protocol's text."""
    from types import SimpleNamespace

    from vtreid.evaluate import _regdb_trial
    run = SimpleNamespace(cfg={"method": "hc", "dataset": {"name": dataset, "trial": 3}}, step=5, backends={},
                          ctx=SimpleNamespace(world_size=1))
    data = json.loads(train.results_json(run, {"protocol": "RegDB visible_to_thermal", "results": {}}))
    assert data.get("trial") == trial and _regdb_trial(data) == trial


def test_a_sysu_folder_with_the_official_galleries_is_evaluated_on_them(tmp_path, capsys):
    """PROTOCOLS.md: the galleries come from exp/rand_perm_cam.mat when the dataset has it; results.json
    and the tables name the source (eval.galleries=seeded keeps the seeded draw)."""
    from support import write_sysu_rand_perm
    from vtreid.data import synthetic
    root = synthetic.write_sysu(tmp_path / "SYSU-MM01", ids=8, images=2, height=64, width=32, seed=1)
    write_sysu_rand_perm(root)
    args = ["--dataset", "sysu", "--data-root", str(root), "train.max_steps=1"]
    for choice in ("auto", "seeded"):
        out = run(tmp_path / choice, "hc", *args, f"eval.galleries={choice}")
        results = json.loads((out / "results.json").read_text())
        source = "official" if choice == "auto" else "seeded"
        assert results["protocol"].endswith(f"galleries={source}")
        assert list(results["results"]) == [f"SYSU-MM01 all single-shot, {source} galleries, 2 trial(s)"]
    # a file of another copy of the dataset (it picks image 3 of 2) stops the run before its first step
    write_sysu_rand_perm(root, first=lambda n, t: n + 1)
    capsys.readouterr()
    assert train.main(["--method", "hc", "--out", str(tmp_path / "other"), *TINY, *SMALL["hc"], *args]) == 2
    assert "rand_perm_cam.mat does not fit its test images" in capsys.readouterr().err
    assert not (tmp_path / "other" / "checkpoints").exists()
    # so does a damaged file, naming it
    (root / "exp" / "rand_perm_cam.mat").write_bytes(b"")
    assert train.main(["--method", "hc", "--out", str(tmp_path / "damaged"), *TINY, *SMALL["hc"], *args]) == 2
    assert "rand_perm_cam.mat: cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "damaged" / "checkpoints").exists()


def test_a_float_written_without_a_dot_is_a_number(tmp_path):
    """PyYAML (YAML 1.1) reads 3e-4 as a string; the help's own example optim.lr=3e-4 must work, in a
    --config file too."""
    (tmp_path / "my.yaml").write_text("optim: {eps: 1e-6}\n")
    out = run(tmp_path / "r", "expat", "optim.lr=3e-4", "--config", str(tmp_path / "my.yaml"), "train.max_steps=1")
    cfg = final_state(out)["config"]
    assert cfg["optim"]["lr"] == 3e-4 and cfg["optim"]["eps"] == 1e-6


def test_resume_checks_a_changed_setting_and_the_file(tmp_path, capsys):
    out = run(tmp_path / "r", "hc", "train.max_steps=1")
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(out), "eval.metric=manhattan"]) == 2
    assert "eval.metric must be one of" in capsys.readouterr().err
    # a checkpoint written before a setting existed resumes with the setting's preset value
    state = final_state(out)
    del state["config"]["eval"]["galleries"]
    checkpoint.save_atomic(state, out / "checkpoints" / "last.pt")
    assert train.main(["--resume", "--out", str(out), "train.max_steps=2"]) == 0
    assert final_state(out)["config"]["eval"]["galleries"] == "auto"
    from vtreid import evaluate   # and the tools read it alike
    state = final_state(out)
    del state["config"]["eval"]["galleries"]
    checkpoint.save_atomic(state, out / "checkpoints" / "last.pt")
    assert evaluate.main(["--checkpoint", str(out / "checkpoints" / "last.pt"), "--trials", "1"]) == 0
    (tmp_path / "notes.pt").write_bytes(b"not a checkpoint")
    assert train.main(["--resume", str(tmp_path / "notes.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "notes.pt" in err and "Traceback" not in err


def test_a_new_run_into_a_run_directory_is_refused(tmp_path, capsys):
    out = run(tmp_path / "r", "hc", "train.max_steps=1")
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train.main(["--method", "hc", "--out", str(out), *TINY, *SMALL["hc"], "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume --out {out}" in err
    assert (out / "metrics.jsonl").read_text() == metrics
    # a run that failed before its first checkpoint left its log: that directory is not reused either
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "log.txt").write_text("vtreid.train: ...\n")
    assert train.main(["--method", "hc", "--out", str(failed), *TINY, *SMALL["hc"], "train.max_steps=1"]) == 2
    assert "already holds a run (log.txt)" in capsys.readouterr().err


def test_metric_lines_give_the_steps_own_epoch_and_rate(tmp_path):
    """Step k trained at the rate before the scheduler moved on, in epoch (k - 1) // steps_per_epoch."""
    out = run(tmp_path / "r", "hc", "train.max_steps=4", "train.epoch_steps=2", "schedule.warmup=4",
              "schedule.warmup_from=0.5", "optim.lr=0.01")
    steps = [line for line in metric_lines(out) if "loss" in line]
    assert [line["epoch"] for line in steps] == [0, 0, 1, 1]
    assert steps[0]["lr"] == pytest.approx(0.005) and steps[0]["lr"] < steps[1]["lr"] < steps[3]["lr"] < 0.01


def test_a_finite_loss_with_a_non_finite_gradient_does_not_overwrite_last_pt(tmp_path, monkeypatch, capsys):
    """Step 3's loss is finite but its gradient is NaN: the update breaks the weights and step 4's loss is
    NaN. The checkpoint of step 2 stays; the broken weights are not saved over it."""
    from vtreid.methods.expat import ExpAT
    poison(monkeypatch, ExpAT, 3, "expat", _nan_gradient)
    out = run(tmp_path / "nan", "expat", "--deterministic", "train.max_steps=10", "train.checkpoint_every=2",
              expect=1)
    printed = capsys.readouterr().out
    assert "is nan at step 4" in printed and "the weights are not finite" in printed and "last.pt holds step 2" in printed
    kept = final_state(out)
    assert kept["step"] == 2 and all(t.isfinite().all() for t in kept["model"].values() if t.is_floating_point())


def test_weights_broken_on_a_checkpoint_step_are_neither_evaluated_nor_saved(tmp_path, monkeypatch, capsys):
    """The NaN gradient at step 2, a checkpoint and evaluation step: the weights are checked there (one sync
    per checkpoint), so the broken state is not written and the run says no checkpoint holds it."""
    from vtreid.methods.expat import ExpAT
    poison(monkeypatch, ExpAT, 2, "expat", _nan_gradient)
    out = run(tmp_path / "nan", "expat", "train.max_steps=10", "train.checkpoint_every=2", "train.eval_every=2",
              expect=1)
    printed = capsys.readouterr().out
    assert "the weights are not finite after step 2" in printed and "no checkpoint was written" in printed
    assert not (out / "checkpoints" / "last.pt").exists() and "evaluation at step 2" not in printed


@pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_fp16_skips_a_non_finite_first_step_and_keeps_the_schedule(tmp_path, monkeypatch):
    """The scaler had no scale before its first scale() (update() asserted), and a skipped step left the
    schedule one step behind the step count."""
    from vtreid.methods.hetero_center import HeteroCenter
    objective = HeteroCenter.objective
    calls = []

    def overflowing(self, model, batch):   # step 1's forward overflows: its loss and its BatchNorm statistics
        terms = objective(self, model, batch)
        calls.append(1)
        if len(calls) == 1:
            terms["hc"] = terms["hc"] * float("inf")
            next(b for n, b in model.named_buffers() if n.endswith("running_var")).fill_(float("inf"))
        return terms

    monkeypatch.setattr(HeteroCenter, "objective", overflowing)
    out = run(tmp_path / "r", "hc", "--amp", "fp16", "train.max_steps=3")
    state = final_state(out)
    assert state["step"] == 3 and all(s["last_epoch"] == 3 for s in state["schedulers"])
    assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())   # undone
    assert [line["step"] for line in metric_lines(out) if "loss" in line] == [2, 3]


def test_the_resume_command_under_torchrun_names_torchrun():
    from types import SimpleNamespace
    one = SimpleNamespace(ctx=SimpleNamespace(enabled=False), out=Path("runs/a"))
    two = SimpleNamespace(ctx=SimpleNamespace(enabled=True, world_size=2), out=Path("runs/a"))
    assert train.resume_command(one, Path("runs/a/checkpoints/last.pt")) == \
        "python -m vtreid.train --resume runs/a/checkpoints/last.pt"
    assert train.resume_command(two, Path("runs/a/checkpoints/last.pt")).startswith(
        "torchrun --nproc_per_node=2 -m vtreid.train --resume runs/a/checkpoints/last.pt --out runs/a")


def test_an_epoch_never_reuses_the_next_epochs_sampler_seeds():
    """Epoch e draws the sampler's epochs e * 1000 + r: an epoch of more than 1000 passes would repeat
    epoch e + 1's batches, so it is refused (whether train.epoch_steps or the method set its length)."""
    from vtreid.training.data import EpochBatches

    class TwoBatches:
        def __init__(self):
            self.epochs = []

        def __len__(self):
            return 2

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter([[0], [1]])

    sampler = TwoBatches()
    batches = EpochBatches(sampler, 2000)   # exactly 1000 passes: allowed
    batches.set_position(3)
    assert len(list(batches)) == 2000 and sampler.epochs == list(range(3000, 4000))
    with pytest.raises(ValueError, match="needs more than 1000 passes over the identities"):
        EpochBatches(sampler, 2001)


def test_bf16_on_a_cpu_with_amx_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """oneDNN's AMX bfloat16 convolutions gave NaN and wrong values (vtreid.train.cpu_has_amx): a CPU run
    with --amp bf16 on such a CPU stops with the reason and what to do instead."""
    monkeypatch.setattr(train, "cpu_has_amx", lambda: True)
    run(tmp_path / "r", "hc", "--amp", "bf16", "--device", "cpu", expect=2)
    err = capsys.readouterr().err
    assert err.startswith("error: train.amp=bf16 on this CPU") and "--amp off" in err, err
    assert not (tmp_path / "r" / "checkpoints").exists()
    # a bf16 run (trained on a GPU, say) cannot change its precision on a resume: the message says so
    monkeypatch.setattr(train, "cpu_has_amx", lambda: False)
    with without_onednn():   # this CPU has AMX: its bf16 oneDNN kernels are the problem
        out = run(tmp_path / "g", "hc", "--amp", "bf16", "--device", "cpu", "train.max_steps=1")
    monkeypatch.setattr(train, "cpu_has_amx", lambda: True)
    assert train.main(["--resume", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "train.amp=bf16 on this CPU" in err and "resume it on a GPU" in err and "--amp off" not in err, err


def test_cpu_has_amx_reads_the_flags_line(tmp_path, monkeypatch):
    import builtins
    real_open = builtins.open

    def cpuinfo(text):
        def fake_open(path, *args, **kwargs):
            if str(path) == "/proc/cpuinfo":
                if text is None:
                    raise FileNotFoundError(path)
                (tmp_path / "cpuinfo").write_text(text)
                return real_open(tmp_path / "cpuinfo", *args, **kwargs)
            return real_open(path, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", fake_open)
    cpuinfo("model name\t: x\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert train.cpu_has_amx() is True
    cpuinfo("flags\t\t: fpu avx512f avx512_bf16\nbugs\t\t: amx_bf16_like\n")
    assert train.cpu_has_amx() is False
    cpuinfo(None)
    assert train.cpu_has_amx() is False
