"""The README's "Looking at results" commands run as written on a tiny trained run (RUN substituted,
the second CMC run being the same run), and write what they say they write."""
import importlib
import re
import shlex
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_results_commands_run(trained_run, tmp_path, monkeypatch):
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "vtreid.extract" in b]
    assert len(blocks) == 1
    lines = [line.split("#")[0].strip() for line in blocks[0].splitlines()]
    assert lines[0].startswith("RUN=")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text((trained_run / "results.json").read_text())
    monkeypatch.chdir(tmp_path)
    commands = [line.replace("$RUN", str(trained_run)) for line in lines[1:] if line]
    assert len(commands) == 6
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == [".venv/bin/python", "-m"], command
        module = importlib.import_module(words[2])
        assert module.main(words[3:]) == 0, command
    assert len(list((tmp_path / "ranks").glob("*.png"))) == 5
    for name in ("feats.pt", "cmc.png", "curves.png", "model.onnx"):
        assert (tmp_path / name).stat().st_size > 0, name
