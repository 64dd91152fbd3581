"""The README's "Looking at results" commands run as written on a tiny trained run (RUN substituted,
the second CMC run being the same run), and write what they say they write. A command whose optional extra
is not installed (a GPU image without matplotlib or onnx) must say which one to install instead."""
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


#: The optional module each command needs (the plot and export extras), by its module and first argument.
EXTRAS = {("vtreid.visualize", "cmc"): ("matplotlib", "plot"), ("vtreid.visualize", "curves"): ("matplotlib", "plot"),
          ("vtreid.export", "--checkpoint"): ("onnx", "export")}


@pytest.mark.parametrize("hide_extras", [False, True], ids=["as-installed", "extras-missing"])
def test_results_commands_run(trained_run, tmp_path, monkeypatch, capsys, hide_extras):
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "vtreid.extract" in b]
    assert len(blocks) == 1
    lines = [line.split("#")[0].strip() for line in blocks[0].splitlines()]
    assert lines[0].startswith("RUN=")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text((trained_run / "results.json").read_text())
    monkeypatch.chdir(tmp_path)
    missing = {needs for needs, _ in EXTRAS.values() if importlib.util.find_spec(needs) is None}
    if hide_extras:  # as on a machine without them (the GPU image): an import of these raises ImportError
        missing = {needs for needs, _ in EXTRAS.values()}
        for name in missing:
            monkeypatch.setitem(sys.modules, name, None)
    commands = [line.replace("$RUN", str(trained_run)) for line in lines[1:] if line]
    assert len(commands) == 6
    outputs = {"feats.pt"}
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == [".venv/bin/python", "-m"], command
        module = importlib.import_module(words[2])
        needs, extra = EXTRAS.get((words[2], words[3]), (None, None))
        if needs in missing:
            capsys.readouterr()
            assert module.main(words[3:]) == 2, command
            assert f"vtreid[{extra}]" in capsys.readouterr().err, command
            continue
        assert module.main(words[3:]) == 0, command
        outputs.update(w for w in words if w.endswith((".png", ".onnx")))
    assert len(list((tmp_path / "ranks").glob("*.png"))) == 5
    assert outputs <= {"feats.pt", "cmc.png", "curves.png", "model.onnx"}
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
