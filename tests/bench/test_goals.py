"""bench.goals: the targets judged from records, within one run only, the latest run of each."""
import json

import pytest

from bench import goals

H100 = "NVIDIA H100 80GB HBM3"


def rec(op, case, provider, ms, *, mode="full", dtype="float32", time="t1", device=H100, peak=None):
    return {"op": op, "case": case, "dtype": dtype, "mode": mode, "provider": provider, "median_ms": ms,
            "p20_ms": ms, "p80_ms": ms, "peak_bytes": peak, "time": time, "device": device}


MINE = {"N": 256, "D": 2048}


def verdicts_for(records, name, provider=None):
    return [v for v in goals.judge(records) if v.target == name and provider in (None, v.provider)]


def test_speedup_passes_and_fails_per_provider():
    records = [rec("hard_mining", MINE, "reference", 10.0), rec("hard_mining", MINE, "triton", 0.5),
               rec("hard_mining", MINE, "native", 2.0)]
    got = {v.provider: v.status for v in verdicts_for(records, "mining full N=256 >= 10x eager")}
    assert got == {"triton": "PASS", "native": "FAIL"}          # 20x and 5x


def test_ratios_only_within_one_run_and_the_latest_run_is_judged():
    old_ref = rec("hard_mining", MINE, "reference", 100.0, time="t0")
    assert {v.status for v in verdicts_for([old_ref, rec("hard_mining", MINE, "triton", 1.0)],
                                           "mining full N=256 >= 10x eager")} == {"MISSING"}
    runs = [rec("hard_mining", MINE, "reference", 100.0, time="t0"), rec("hard_mining", MINE, "triton", 1.0, time="t0"),
            rec("hard_mining", MINE, "reference", 10.0, time="t2"), rec("hard_mining", MINE, "triton", 5.0, time="t2")]
    (v,) = verdicts_for(runs, "mining full N=256 >= 10x eager", "triton")
    assert v.status == "FAIL" and v.measured.startswith("2.00x")


def test_cuda_graph_runs_are_not_judged():
    """A --cuda-graph run times the device alone: a later one does not replace the eager run's verdict."""
    eager = [rec("hard_mining", MINE, "reference", 10.0), rec("hard_mining", MINE, "triton", 5.0)]
    graphed = [{**r, "time": "t9", "cuda_graph": True} for r in
               (rec("hard_mining", MINE, "reference", 10.0), rec("hard_mining", MINE, "triton", 0.1))]
    (v,) = verdicts_for(eager + graphed, "mining full N=256 >= 10x eager", "triton")
    assert v.status == "FAIL" and v.measured.startswith("2.00x")


def test_other_shapes_devices_and_variants_do_not_count():
    records = [rec("hard_mining", {**MINE, "rules": "cross-cross"}, "reference", 10.0),
               rec("hard_mining", {**MINE, "rules": "cross-cross"}, "triton", 0.1),
               rec("hard_mining", MINE, "reference", 10.0, device="CPU x"),
               rec("hard_mining", MINE, "triton", 0.1, device="CPU x")]
    assert verdicts_for(records, "mining full N=256 >= 10x eager")[0].status == "MISSING"


def test_slowdown_bound_and_peak_memory_targets():
    case = {"N": 8192, "M": 8192, "D": 2048}
    records = [rec("pairwise_distance", case, "matmul", 4.0, mode="forward", dtype="float16"),
               rec("pairwise_distance", case, "triton", 4.8, mode="forward", dtype="float16"),
               rec("pairwise_distance", case, "native", 5.2, mode="forward", dtype="float16"),
               rec("pairwise_distance", case, "triton", 1.0, mode="forward", dtype="float32")]  # not a target dtype
    got = {(v.provider, v.dtype): v.status for v in verdicts_for(records, "pairwise forward 8192^2 x 2048 <= 1.25x mm")}
    assert got == {("triton", "float16"): "PASS", ("native", "float16"): "FAIL",     # bfloat16: a target dtype
                   ("triton", "bfloat16"): "MISSING", ("native", "bfloat16"): "MISSING"}
    large = {"N": 65536, "D": 2048}
    records = [rec("hard_mining", large, "triton", 9.0, mode="forward", dtype="float16", peak=goals.GIB // 2),
               rec("hard_mining", large, "native", 9.0, mode="forward", dtype="float16", peak=2 * goals.GIB)]
    got = {v.provider: v.status for v in verdicts_for(records, "mining --large peak < 1 GiB")}
    assert got == {"triton": "PASS", "native": "FAIL"}
    nce = {"N": 256, "D": 2048, "C": 100000}
    records = [rec("normalized_cross_entropy", nce, "reference", 9.0, dtype="bfloat16", peak=900),
               rec("normalized_cross_entropy", nce, "triton", 3.0, dtype="bfloat16", peak=300),
               rec("normalized_cross_entropy", nce, "liger", 2.9, dtype="bfloat16", peak=100)]
    assert verdicts_for(records, "normalized CE full C=1e5 bf16 peak <= eager / 3", "triton")[0].status == "PASS"
    assert verdicts_for(records, "normalized CE full C=1e5 bf16 >= 1.5x eager", "triton")[0].status == "PASS"
    assert verdicts_for(records, "normalized CE full C=1e5 bf16 not slower than Liger", "triton")[0].status == "FAIL"


def test_command_line_exit_status_and_errors(tmp_path, capsys):
    path = tmp_path / "gpu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [rec("hard_mining", MINE, "reference", 10.0),
                                                      rec("hard_mining", MINE, "triton", 2.0)]) + "\n")
    assert goals.main([str(path), "--gpu-only"]) == 1                       # 5x < 10x: a failure
    out = capsys.readouterr().out
    assert "FAIL" in out and "MISSING" in out and "CPU " not in out
    path.write_text(json.dumps(rec("hard_mining", MINE, "reference", 10.0)) + "\n")
    assert goals.main([str(path)]) == 0                                     # nothing measured fails
    with pytest.raises(SystemExit):
        goals.main([str(tmp_path / "absent.jsonl")])
    path.write_text("{not json\n")
    with pytest.raises(SystemExit, match="gpu.jsonl:1: not a JSON line"):
        goals.main([str(path)])


def test_a_later_partial_run_does_not_hide_an_earlier_pairing():
    records = [rec("hard_mining", MINE, "reference", 10.0, time="t1"), rec("hard_mining", MINE, "triton", 0.5, time="t1"),
               rec("hard_mining", MINE, "triton", 0.4, time="t2")]                # --providers triton alone, later
    (v,) = verdicts_for(records, "mining full N=256 >= 10x eager", "triton")
    assert v.status == "STALE" and v.run == "t1" and v.measured.startswith("20.00x")   # shown, not counted


def test_a_target_without_the_measure_it_needs_is_missing_not_dropped():
    large = {"N": 65536, "D": 2048}
    records = [rec("hard_mining", large, "triton", 9.0, mode="forward", dtype="float16", peak=None),
               {"op": "pairwise_distance", "provider": "native", "fwd_us": 13.2}]       # a bench.overhead line
    assert [v.status for v in goals.judge(records) if v.target == "mining --large peak < 1 GiB"] == ["MISSING"] * 2


def test_every_expected_provider_and_dtype_is_listed_missing_when_absent():
    """Only triton bfloat16 measured: fp32 and native were dropped silently, and the run read "0 fail"."""
    case = {"N": 256, "M": 256, "D": 2048}
    records = [rec("pairwise_distance", case, "reference", 3.0, dtype="bfloat16"),
               rec("pairwise_distance", case, "triton", 0.5, dtype="bfloat16")]
    got = {(v.provider, v.dtype): v.status for v in verdicts_for(records, "pairwise full 256^2 x 2048 >= 3x eager")}
    assert got == {("triton", "bfloat16"): "PASS", ("native", "bfloat16"): "MISSING",
                   ("triton", "float32"): "MISSING", ("native", "float32"): "MISSING"}


def test_a_pass_of_an_older_run_is_stale_when_the_newest_run_lacks_it():
    """The newest run's triton failed (no record): the older run's PASS must not stand for it."""
    old = [rec("hard_mining", MINE, "reference", 10.0, time="t1"), rec("hard_mining", MINE, "triton", 0.5, time="t1"),
           rec("hard_mining", MINE, "native", 5.0, time="t1")]
    new = [{**rec("hard_mining", MINE, "reference", 10.0, time="t2"), "tree": "abc123"},
           {**rec("hard_mining", MINE, "native", 0.9, time="t2"), "tree": "abc123"}]
    got = {v.provider: (v.status, v.run, v.tree) for v in verdicts_for(old + new, "mining full N=256 >= 10x eager")}
    assert got == {"triton": ("STALE", "t1", "-"), "native": ("PASS", "t2", "abc123")}


@pytest.mark.parametrize("target", [t for t in goals.TARGETS if t.gpu], ids=lambda t: t.name)
def test_every_gpu_target_is_a_shape_the_gpu_benchmark_measures(target):
    """Each GPU target's case is in its benchmark's GPU case list (the full sweep or --large); computed from
    the benchmarks' own case functions, which need no GPU."""
    import torch
    from bench import evaluation, hard_mining, hetero_center, normalized_softmax, pairwise_distance
    cuda = torch.device("cuda")
    gpu_cases = {
        "pairwise_distance": pairwise_distance.cases(cuda, False),
        "hard_mining": hard_mining.cases(cuda, False, False) + hard_mining.cases(cuda, False, True),
        "hetero_center_loss": hetero_center.cases(cuda, False),
        "normalized_cross_entropy": normalized_softmax.cases(cuda, False),
        "sysu_evaluation": [{"Q": 3803, "G": 301, "D": 2048, "trials": 10}, {"Q": 10000, "G": 1_000_000, "D": 512, "K": 100}],
    }[target.op]
    assert any(target.case(c) for c in gpu_cases), (target.name, gpu_cases)


def test_goals_flag_selects_only_what_the_targets_judge(tmp_path, capsys):
    """--goals on a GPU sweep: pairwise keeps 8192^2 forward in fp16 / bf16 and 256^2 full in fp32 / bf16, nothing
    else of the product; on CPU it measures the CPU target and nothing else (run here)."""
    import argparse

    import torch
    from bench import harness, pairwise_distance
    cuda = torch.device("cuda")
    cases, dtypes, modes, keep = harness.goal_selection(
        argparse.ArgumentParser(), "pairwise_distance", cuda, pairwise_distance.cases(cuda, False),
        [torch.float32, torch.bfloat16, torch.float16], list(harness.MODES))
    chosen = {(c["N"], d, m) for c in cases for d in ("float32", "bfloat16", "float16") for m in modes if keep(c, d, m)}
    assert chosen == {(8192, "float16", "forward"), (8192, "bfloat16", "forward"),
                      (256, "float32", "full"), (256, "bfloat16", "full")}
    # and of the providers, ours and the targets' counterparts there: torch.compile and cdist cost GPU time
    # for no verdict
    big = next(c for c in cases if c["N"] == 8192)
    assert {p for p in ("reference", "compiled", "matmul", "cdist", "triton", "native")
            if keep(big, "float16", "forward", p)} == {"matmul", "triton", "native"}
    out = tmp_path / "cpu.jsonl"
    pairwise_distance.main(["--device", "cpu", "--goals", "--providers", "reference,native", "--min-run-time", "0.001",
                            "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["case"]["N"], r["dtype"], r["mode"]) for r in records} == {(256, "float32", "full")}
    assert [v.status for v in goals.judge(records) if v.target.startswith("CPU pairwise")] in (["PASS"], ["FAIL"])
