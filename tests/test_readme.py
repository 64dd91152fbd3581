"""The README's commands and snippets run as written on a machine without a GPU (the synthetic dataset
smaller than the README's 40 identities, to stay fast), and the features file its snippet writes lines
up each row's identity, camera and modality with the image it came from."""
import importlib
import os
import re
import shlex
from pathlib import Path

import torch

from vtreid.data import records as data_records

MAINS = {"vtreid.data": "vtreid.data.__main__", "vtreid.evaluate": "vtreid.evaluate"}
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block(language: str, containing: str) -> str:
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", README, re.S) if containing in b]
    assert len(found) == 1, f"README: expected one {language} block containing {containing!r}"
    return found[0]


def test_ops_snippet_runs_on_cpu():
    code = block("python", "import torch, vtreid.ops as ops")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert namespace["x"].grad is not None and torch.isfinite(namespace["loss"])


def test_data_commands_and_features_snippet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    commands = [line.split("#")[0].strip() for line in block("bash", "vtreid.data synth").splitlines() if line.strip()]
    assert len(commands) == 4 and "--ids 40" in commands[0]
    commands[0] = commands[0].replace("--ids 40", "--ids 6")

    def run(command):
        """`.venv/bin/python -m MODULE ARGS` in this process (the shell's ~ expanded), its exit status."""
        words = [os.path.expanduser(w) for w in shlex.split(command)]
        assert words[:2] == [".venv/bin/python", "-m"], command
        return importlib.import_module(MAINS[words[2]]).main(words[3:])

    for command in commands[:2]:
        assert run(command) == 0, command
    assert (tmp_path / "data" / "SYSU-MM01-synth" / "exp" / "test_id.txt").is_file()

    exec(compile(block("python", "build_model"), "README.md", "exec"), {})
    feats = torch.load(tmp_path / "feats.pt", weights_only=True)
    n = len(feats["paths"])
    assert n == 3 * 3 * 6 and feats["features"].shape[0] == n   # 3 test ids, 3 images, 6 cameras
    for i, path in enumerate(feats["paths"]):   # e.g. .../cam3/0005/0002.jpg
        cam, pid = int(Path(path).parts[-3][3:]), int(Path(path).parts[-2])
        assert (int(feats["ids"][i]), int(feats["cams"][i])) == (pid, cam)
        assert int(feats["modalities"][i]) == (data_records.INFRARED if cam in (3, 6) else data_records.VISIBLE)

    for command in commands[2:]:
        assert run(command) == 0, command
        assert "rank1" in capsys.readouterr().out


def test_readme_points_at_the_projects_own_docs():
    assert "DESIGN.md" not in README   # ../shared/DESIGN.md is not in a user's clone
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert "docs/ops.md" in links
    for link in links:
        assert (Path(__file__).resolve().parents[1] / link).is_file(), link
