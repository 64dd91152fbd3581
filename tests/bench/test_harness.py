"""The benchmarks: every --quick run on CPU with every provider, the records and plot, failures and
the command line (choices validated, help listing them)."""
import importlib
import json
import os

import pytest
import torch
import torch._functorch.config

from bench import goals, harness, pairwise_distance, plot

BENCHMARKS = ("pairwise_distance", "hard_mining", "hetero_center", "normalized_softmax", "evaluation")


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run_of_every_benchmark_with_every_provider(name, tmp_path, capsys):
    """What `python -m bench.<name> --quick` runs on a CPU, every provider that can run here (compiled
    included: its backward once crashed) in every mode, then plotted."""
    module = importlib.import_module(f"bench.{name}")
    out = tmp_path / "cpu.jsonl"
    module.main(["--device", "cpu", "--quick", "--min-run-time", "0.001", "--out", str(out)])
    records = read(out)
    cpu = torch.device("cpu")
    expected = {p.name for p in module.providers() if p.available(cpu, torch.float32)[0]}
    if os.environ.get("TRITON_INTERPRET") == "1":
        expected.discard("triton")  # dropped on CPU: interpreted Triton times Python
    assert {"reference", "compiled"} <= expected or name == "evaluation"
    modes = ["forward"] if name == "evaluation" else list(harness.MODES)
    assert sorted((r["provider"], r["mode"]) for r in records) == sorted((p, m) for p in expected for m in modes)
    assert "failed" not in capsys.readouterr().out
    for r in records:
        assert r["device"].startswith("CPU") and r["commit"] and r["torch"] and r["dtype"] == "float32"
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["peak_bytes"] is None
    plot.main([str(out), "--out-dir", str(tmp_path)])
    assert len(list(tmp_path.glob("*.png"))) == len(modes)
    # bench.goals finds its CPU target in what this benchmark writes (op name, case keys, providers)
    targets = [t for t in goals.TARGETS if not t.gpu and t.op == records[0]["op"]]
    verdicts = goals.judge(records, targets)
    assert targets and verdicts and all(v.status in ("PASS", "FAIL") for v in verdicts), verdicts


def test_compiled_provider_compiles_every_measurement_past_the_recompile_limit():
    """More shapes than Dynamo's recompile_limit (8): each measurement still gets its own graph instead of
    the eager fallback Dynamo takes silently past the limit."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    provider = harness.compiled_provider(lambda inputs: (inputs["x"] * 2).sum(), backend=backend)
    for n in range(1, 13):
        provider.build({"x": torch.randn(n, 3)})()
    assert len(graphs) == 12


def test_compiled_backward_mode_runs_twice_on_one_graph():
    """The backward mode reruns backward on a kept graph. A compiled graph whose backward is lowered
    eagerly (as torch does when sizes are saved for backward, or forced here) donates its saved buffers
    and then refused retain_graph: the crash of `python -m bench.hard_mining --quick` on CPU."""
    reference = lambda inputs: (inputs["x"] @ inputs["x"]).exp().sum(1).log().sum()  # noqa: E731
    inputs = {"x": torch.randn(8, 8, requires_grad=True)}
    with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
        backward = harness.mode_callable(harness.compiled_provider(reference).build(inputs), inputs, "backward")
        backward()
        backward()


def test_a_failing_provider_writes_no_record_and_fails_the_run(tmp_path, capsys):
    def broken(inputs):
        def call():
            raise RuntimeError("kernel exploded\nsecond line")
        return call

    providers = [harness.Provider("reference", lambda inputs: (lambda: inputs["x"] * 2)),
                 harness.Provider("broken", broken),
                 harness.Provider("other", lambda inputs: (lambda: inputs["x"] * 3))]
    def make(case, dtype, device, requires_grad):
        if case["N"] == 0:
            raise ValueError("no inputs for N = 0")
        return {"x": torch.ones(case["N"], dtype=dtype, requires_grad=requires_grad)}

    out = tmp_path / "cpu.jsonl"
    with pytest.raises(SystemExit) as exc:
        harness.run("toy", providers, make, [{"N": 4}, {"N": 0}], [torch.float32], ["forward", "full"],
                    torch.device("cpu"), out, min_run_time=0.001)
    assert "8 measurement(s) failed" in str(exc.value) and "broken forward" in str(exc.value)
    assert "other full float32 N=0: ValueError: no inputs for N = 0" in str(exc.value)
    assert "RuntimeError: kernel exploded" in capsys.readouterr().out
    records = read(out)
    assert sorted((r["provider"], r["mode"]) for r in records) == [
        ("other", "forward"), ("other", "full"), ("reference", "forward"), ("reference", "full")]
    plot.main([str(out), "--out-dir", str(tmp_path)])
    assert len(list(tmp_path.glob("*.png"))) == 2


@pytest.mark.parametrize("option, value, what", [
    ("--providers", "nope", "providers"), ("--modes", "fwd", "modes"), ("--modes", "forward,back", "modes"),
    ("--dtypes", "float33", "dtypes"), ("--dtypes", "float32,", None), ("--device", "gpu", "device")])
def test_unknown_choices_are_rejected_with_the_valid_ones(option, value, what, tmp_path, capsys):
    argv = ["--device", "cpu", "--quick", "--out", str(tmp_path / "x.jsonl"), option, value]
    if what is None:  # a trailing comma is harmless: validated, nothing run here
        argv += ["--providers", "matmul", "--modes", "forward", "--min-run-time", "0.001"]
        pairwise_distance.main(argv)
        assert {r["dtype"] for r in read(tmp_path / "x.jsonl")} == {"float32"}
        return
    with pytest.raises(SystemExit) as exc:
        pairwise_distance.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown {what}" in err and err.count("\n") <= 8  # usage (6 lines) and the error
    if what == "modes":
        assert "['forward', 'backward', 'full']" in err
    if what == "dtypes":
        assert "float32" in err and "bfloat16" in err
    if what == "providers":
        assert "torch.cdist" in err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("name, argv, error", [
    ("pairwise_distance", ["--cuda-graph"], "--cuda-graph needs --device cuda"),
    ("evaluation", ["--modes", "backward"], "--modes backward: this run measures only forward"),
    ("hard_mining", ["--large", "--dtypes", "float32"], "--dtypes float32: this run measures only float16")])
def test_options_a_run_would_ignore_are_rejected(name, argv, error, capsys):
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--device", "cpu"] + argv)
    assert exc.value.code == 2 and error in capsys.readouterr().err


@pytest.mark.parametrize("name", BENCHMARKS)
def test_help_lists_modes_providers_and_explains_the_columns(name, capsys):
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m bench.{name} ")
    assert "forward, backward, full" in text and "float32, float16, bfloat16" in text
    for p in module.providers():
        assert p.name in text
    assert "x ref" in text and "peak MiB" in text and "'-' on CPU" in text


def test_overhead_bench_writes_one_record_per_op_and_mode(tmp_path, monkeypatch):
    """python -m bench.overhead: public / dispatch / eager microseconds per call for every op (CPU native)."""
    import json

    from bench import overhead
    from tests.support import require_backend
    require_backend("native", "cpu")
    monkeypatch.setattr(overhead, "_time", lambda fn, args, full: 1.0 if fn is None else (fn(*args), 2.0)[1])
    out = tmp_path / "o.jsonl"
    overhead.main(["--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["op"], r["mode"]) for r in rows} == {(op, mode) for op in overhead.cases("native")
                                                     for mode in ("forward", "full")}
    assert all(r["us_public"] == 2.0 and r["device"] for r in rows)


def test_cuda_timing_waits_for_the_l2_flush_before_the_start_event():
    """triton's do_bench recorded the start event right behind its 256 MB flush, so the host queued the
    timed call while the flush ran: a host-bound call lost that head start. Every timed call must follow a
    synchronisation, and be bracketed by the start and end events. (Run with CPU stand-ins for the CUDA
    synchronize and events: the order of the calls is what is checked.)"""
    import time
    log = []

    class Event:
        def __init__(self):
            self.name, self.t = f"event{len([e for e in log if e.startswith('new')])}", 0.0
            log.append("new")

        def record(self):
            self.t = time.perf_counter()
            log.append(self.name)

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    def fn():
        log.append("fn")
        time.sleep(0.001)

    med, p20, p80 = harness.cuda_quantiles(fn, torch.device("cpu"), warmup_ms=2, rep_ms=20,
                                           sync=lambda: log.append("sync"), event=Event)
    assert p20 <= med <= p80 and 0.9 <= med <= 50
    timed = log[log.index("new", log.index("new") + 1) + 1:]      # after the two events were made
    timed = timed[timed.index("event1") + 2:]                      # after the estimate (its end and sync)
    reps = [i for i, entry in enumerate(timed) if entry == "event0"]
    assert len(reps) >= 5
    for i in reps:
        assert timed[i - 1] == "sync" and timed[i + 1:i + 4] == ["fn", "event1", "sync"], timed[i - 1:i + 4]


def test_the_pml_peer_computes_the_reference_loss():
    """pml's defaults normalise the embeddings and average over non-zero losses: with them the peer timed a
    different loss. Built as the benchmark builds it, it must give the reference's value and gradient."""
    pytest.importorskip("pytorch_metric_learning")
    from bench import hard_mining
    inputs = hard_mining.make_inputs({"N": 32, "D": 16}, torch.float32, torch.device("cpu"), requires_grad=True)
    got = hard_mining.pml_provider().build(inputs)()
    (g_got,) = torch.autograd.grad(got, inputs["x"])
    want = hard_mining.reference(inputs)
    (g_want,) = torch.autograd.grad(want, inputs["x"])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


def test_plot_skips_other_lines_and_keeps_each_shapes_newest_run(tmp_path, capsys):
    """bench.plot crashed on bench.overhead's lines (no "time"), a later --large run hid the goal shapes'
    run, and the evaluation has a numpy baseline, not reference."""
    def rec(op, case, provider, ms, time, **extra):
        return {"op": op, "case": case, "dtype": "float32", "mode": "full", "provider": provider, "median_ms": ms,
                "p20_ms": ms, "p80_ms": ms, "peak_bytes": None, "time": time, "device": "GPU X", **extra}
    lines = [rec("hard_mining", {"N": 256}, "reference", 4.0, "t1"), rec("hard_mining", {"N": 256}, "native", 1.0, "t1"),
             rec("hard_mining", {"N": 65536}, "native", 9.0, "t2"),
             rec("hard_mining", {"N": 256}, "native", 0.1, "t3", cuda_graph=True),
             rec("sysu_evaluation", {"Q": 3}, "numpy", 10.0, "t1"), rec("sysu_evaluation", {"Q": 3}, "vtreid", 2.0, "t1"),
             {"op": "pairwise_distance", "provider": "native", "fwd_us": 13.2}]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    table = plot.speedups(plot.latest_run(plot.load([path])))
    assert table[("GPU X", "hard_mining", "float32", "full")] == {"N=256": {"reference": 1.0, "native": 4.0}}
    assert table[("GPU X", "sysu_evaluation", "float32", "full")] == {"Q=3": {"numpy": 1.0, "vtreid": 5.0}}
    plot.main([str(path), "--out-dir", str(tmp_path)])
    assert len(list(tmp_path.glob("*.png"))) == 2
