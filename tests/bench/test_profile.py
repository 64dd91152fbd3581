"""bench/profile.py: per-call wall time, ATen ops and the costliest host ops of each provider."""
import json

from bench import profile
from support import require_backend


def test_profile_records_each_provider_of_an_op(tmp_path):
    require_backend("native", "cpu")
    out = tmp_path / "profile.jsonl"
    assert profile.main(["--ops", "hetero_center_loss", "--backends", "reference", "native", "--iters", "2",
                         "--device", "cpu", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["op"], r["provider"], r["dtype"]) for r in rows] == [
        ("hetero_center_loss", "reference", "float32"), ("hetero_center_loss", "native", "float32")]
    for row in rows:
        assert row["wall_us"] > 0 and row["aten_ops"] > 0 and row["top"] and row["device_us"] is None
        assert row["case"] == {"N": 64, "D": 512, "S": 6} and row["iters"] == 2 and row["device"]
    # the fused path is a handful of ops where the reference runs dozens; its own ops are named
    assert rows[1]["aten_ops"] < rows[0]["aten_ops"] / 2
    assert any(name == "vtreid::hetero_center_fwd" for name, _ in rows[1]["top"])
