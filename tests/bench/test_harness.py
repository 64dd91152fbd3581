"""The benchmark harness runs end to end on CPU, writes well-formed JSON lines, and plots them."""
import json

import pytest

from bench import pairwise_distance, plot


def test_pairwise_benchmark_records_and_plot(tmp_path):
    out = tmp_path / "cpu.jsonl"
    pairwise_distance.main(["--device", "cpu", "--quick", "--providers", "reference,native,matmul",
                            "--min-run-time", "0.01", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    providers = {r["provider"] for r in records}
    assert {"reference", "matmul"} <= providers
    assert {r["mode"] for r in records} == {"forward", "backward", "full"}
    for r in records:
        assert r["device"].startswith("CPU") and r["commit"] and r["torch"]
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["case"] == {"N": 256, "M": 256, "D": 2048}
    pngs = list(tmp_path.glob("*.png"))
    assert not pngs
    plot.main([str(out), "--out-dir", str(tmp_path)])
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_unknown_provider_is_rejected():
    with pytest.raises(SystemExit, match="unknown providers"):
        pairwise_distance.main(["--device", "cpu", "--quick", "--providers", "nope"])


def test_hard_mining_benchmark_runs(tmp_path):
    from bench import hard_mining
    out = tmp_path / "cpu.jsonl"
    hard_mining.main(["--device", "cpu", "--quick", "--providers", "reference,native,pml", "--modes", "full",
                      "--min-run-time", "0.01", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["provider"] for r in records} >= {"reference", "native"}
    assert all(r["op"] == "hard_mining" and r["mode"] == "full" for r in records)


def test_hetero_center_benchmark_runs(tmp_path):
    from bench import hetero_center
    out = tmp_path / "cpu.jsonl"
    hetero_center.main(["--device", "cpu", "--quick", "--providers", "reference,native", "--modes", "full",
                        "--min-run-time", "0.01", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["provider"] for r in records} == {"reference", "native"}
    assert records[0]["case"] == {"N": 64, "D": 512, "S": 6}


def test_normalized_softmax_benchmark_runs(tmp_path):
    from bench import normalized_softmax
    out = tmp_path / "cpu.jsonl"
    normalized_softmax.main(["--device", "cpu", "--quick", "--providers", "reference,native,liger", "--modes",
                             "full", "--min-run-time", "0.01", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["provider"] for r in records} == {"reference", "native"}  # liger: CUDA only, reported as skipped


def test_evaluation_benchmark_runs(tmp_path):
    from bench import evaluation
    out = tmp_path / "cpu.jsonl"
    evaluation.main(["--device", "cpu", "--quick", "--min-run-time", "0.01", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["provider"] for r in records} == {"numpy", "vtreid"}
    assert records[0]["case"] == {"Q": 3803, "G": 301, "D": 2048, "trials": 2}
