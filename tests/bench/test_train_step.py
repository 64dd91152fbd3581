"""bench.train_step's quick run on CPU: it runs, prints the table and appends JSON lines."""
import json

from bench import train_step


def test_quick_run_records_step_and_loss_times(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    train_step.main(["--quick", "--device", "cpu", "--methods", "hc", "--min-run-time", "0.05", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["provider"], r["mode"]) for r in records} == {(p, m) for p in ("reference", "native") for m in ("step", "loss")}
    assert all(r["op"] == "train_step" and r["median_ms"] > 0 for r in records)
    assert "loss share" in capsys.readouterr().out
