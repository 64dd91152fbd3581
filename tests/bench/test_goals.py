"""bench.goals: the targets judged from records, within one run only, the latest run of each."""
import json

import pytest

from bench import goals

H100 = "NVIDIA H100 80GB HBM3"


def rec(op, case, provider, ms, *, mode="full", dtype="float32", time="t1", device=H100, peak=None):
    return {"op": op, "case": case, "dtype": dtype, "mode": mode, "provider": provider, "median_ms": ms,
            "p20_ms": ms, "p80_ms": ms, "peak_bytes": peak, "time": time, "device": device}


MINE = {"N": 256, "D": 2048}


def verdicts_for(records, name):
    return [v for v in goals.judge(records) if v.target == name]


def test_speedup_passes_and_fails_per_provider():
    records = [rec("hard_mining", MINE, "reference", 10.0), rec("hard_mining", MINE, "triton", 0.5),
               rec("hard_mining", MINE, "native", 2.0)]
    got = {v.provider: v.status for v in verdicts_for(records, "mining full N=256 >= 10x eager")}
    assert got == {"triton": "PASS", "native": "FAIL"}          # 20x and 5x


def test_ratios_only_within_one_run_and_the_latest_run_is_judged():
    old_ref = rec("hard_mining", MINE, "reference", 100.0, time="t0")
    assert verdicts_for([old_ref, rec("hard_mining", MINE, "triton", 1.0)],
                        "mining full N=256 >= 10x eager")[0].status == "MISSING"
    runs = [rec("hard_mining", MINE, "reference", 100.0, time="t0"), rec("hard_mining", MINE, "triton", 1.0, time="t0"),
            rec("hard_mining", MINE, "reference", 10.0, time="t2"), rec("hard_mining", MINE, "triton", 5.0, time="t2")]
    (v,) = verdicts_for(runs, "mining full N=256 >= 10x eager")
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
    assert got == {("triton", "float16"): "PASS", ("native", "float16"): "FAIL"}
    large = {"N": 65536, "D": 2048}
    records = [rec("hard_mining", large, "triton", 9.0, mode="forward", dtype="float16", peak=goals.GIB // 2),
               rec("hard_mining", large, "native", 9.0, mode="forward", dtype="float16", peak=2 * goals.GIB)]
    got = {v.provider: v.status for v in verdicts_for(records, "mining --large peak < 1 GiB")}
    assert got == {"triton": "PASS", "native": "FAIL"}
    nce = {"N": 256, "D": 2048, "C": 100000}
    records = [rec("normalized_cross_entropy", nce, "reference", 9.0, dtype="bfloat16", peak=900),
               rec("normalized_cross_entropy", nce, "triton", 3.0, dtype="bfloat16", peak=300),
               rec("normalized_cross_entropy", nce, "liger", 2.9, dtype="bfloat16", peak=100)]
    assert verdicts_for(records, "normalized CE full C=1e5 bf16 peak <= eager / 3")[0].status == "PASS"
    assert verdicts_for(records, "normalized CE full C=1e5 bf16 >= 1.5x eager")[0].status == "PASS"
    assert verdicts_for(records, "normalized CE full C=1e5 bf16 not slower than Liger")[0].status == "FAIL"


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
