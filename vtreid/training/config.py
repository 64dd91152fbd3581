"""Run configuration: the method's preset for the dataset, then ``--config FILE``, then ``KEY=VALUE``.

A preset is a YAML file shipped in ``vtreid/presets/<method>/<dataset>.yaml``. A file may start from
another with ``_base_: <path relative to it>``; its keys then replace the base's, section by section,
so ``dhsme/sysu.yaml`` is HSME's preset plus what D-HSME changes, and every ``synthetic.yaml`` is the
paper preset scaled down for a CPU. The resolved preset is also the schema: a key the preset does not
have, or a value of another type, is an error naming the key and what is allowed, before any work.

Variants (``variant: [name, ...]``) are named sets of settings a method declares; they apply on top of
the preset and under the user's own settings, so an explicit ``KEY=VALUE`` always wins.
"""
from __future__ import annotations

import copy
import math
import os
import re
from importlib import resources
from pathlib import Path

import yaml

from vtreid.eval.protocols import GALLERY_SOURCES

DATASETS = ("synthetic", "sysu", "regdb")
DEFAULT_METHOD = "hc"   # what `python -m vtreid.train` with no argument trains
CHOICES = {
    "dataset.name": DATASETS,
    "dataset.train_ids": ("trainval", "train"),
    "optim.name": ("sgd", "adam"),
    "schedule.unit": ("step", "epoch"),
    "train.amp": ("off", "bf16", "fp16"),
    "train.backend": ("auto", "reference", "triton", "native"),
    "eval.metric": ("euclidean", "cosine"),
    "eval.mode": ("all", "indoor"),
    "eval.shots": (1, 10),
    "dataset.trial": tuple(range(1, 11)),   # RegDB's ten trial lists
    "eval.galleries": GALLERY_SOURCES,
}


#: settings whose default does not tell their kind (often null), as (kind, whether null is allowed); a
#: null for any other setting whose default is not null is an error
KINDS = {
    "dataset.root": ("path", True),
    "model.pretrained": ("path", True),
    "train.max_steps": ("count", True),
    "train.epoch_steps": ("count", True),
    "input.size": ("size", False),
    "input.resize": ("size", True),
    "input.test_size": ("size", True),
    "optim.betas": ("betas", False),
    "schedule.milestones": ("milestones", False),
    "variant": ("names", False),
}
#: least values of whole-number settings (a log_every of 0 divided by zero after the first step)
AT_LEAST = {"train.length": 1, "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 0,
            "train.workers": 0, "eval.trials_during": 1, "eval.trials_final": 1, "eval.batch_size": 1}


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: PyYAML (YAML 1.1) reads 3e-4 and 1e5, without a dot, as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A configuration the run cannot start with; the message names the setting and the choices."""


def presets_root() -> Path:
    return Path(str(resources.files("vtreid") / "presets"))


def available_methods() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in presets_root().iterdir() if p.is_dir() and not p.name.startswith("_")))


def preset_path(method: str, dataset: str) -> Path:
    methods = available_methods()
    if method not in methods:
        raise ConfigError(f"unknown method {method!r}; choose one of {methods}")
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    return presets_root() / method / f"{dataset}.yaml"


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s keys replacing its own; nested dicts merge key by key."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | os.PathLike, _seen=()) -> dict:
    """A YAML mapping, with its ``_base_`` chain merged in."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return merge(load_yaml(path.parent / base, (*_seen, path)), data)


def parse_override(text: str) -> dict:
    """``a.b.c=VALUE`` -> {"a": {"b": {"c": VALUE}}}, VALUE read as YAML (numbers, lists, null, ...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must be KEY=VALUE with a dotted key, e.g. optim.lr=3e-4")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot read the value ({exc})") from exc
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_against(schema: dict, update: dict, where: str, prefix: str = "") -> None:
    """Every key of ``update`` exists in ``schema`` with a value of the same kind."""
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(sorted(schema))
            raise ConfigError(f"{where}: unknown setting {name!r}; valid keys here: {valid}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {name!r} is a section ({', '.join(sorted(default))}), not a value")
            check_against(default, value, where, f"{name}.")
        elif isinstance(value, dict):
            raise ConfigError(f"{where}: {name!r} takes a value, not a section")
        elif value is None and default is not None and not KINDS.get(name, (None, False))[1]:
            raise ConfigError(f"{where}: {name!r} cannot be null (it takes a {type(default).__name__} like {default!r})")
        elif not _type_ok(default, value):
            raise ConfigError(f"{where}: {name!r} must be a {type(default).__name__} like {default!r}, got {value!r}")


def get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _kind_error(kind: str, value) -> str | None:
    """What is wrong with ``value`` as a setting of ``kind`` (KINDS), or None."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1
    if kind == "path":
        return None if isinstance(value, str) and value else "a path"
    if kind == "count":
        return None if count(value) else "a whole number of at least 1"
    if kind == "size":
        return None if isinstance(value, list) and len(value) == 2 and all(map(count, value)) \
            else "[height, width], two whole numbers of at least 1"
    if kind == "betas":
        return None if isinstance(value, list) and len(value) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value) \
            else "two numbers in [0, 1)"
    if kind == "milestones":
        return None if isinstance(value, list) and all(count(m) for m in value) and value == sorted(value) \
            else "an increasing list of whole numbers of at least 1"
    return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of names"


def check_values(cfg: dict) -> None:
    """The values a kind check cannot see: choices, the settings of KINDS, least values, finite numbers."""
    for key, choices in CHOICES.items():
        value = get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
    for key, (kind, nullable) in KINDS.items():
        try:
            value = get(cfg, key)
        except KeyError:   # a model setting of another method's network
            continue
        if value is None and nullable:
            continue
        wrong = _kind_error(kind, value)
        if wrong:
            raise ConfigError(f"{key} must be {wrong}{' or null' if nullable else ''}, got {value!r}")
    for key, least in AT_LEAST.items():
        value = get(cfg, key)
        if value < least:
            raise ConfigError(f"{key} must be at least {least}, got {value!r}")
    for key, value in leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")


def leaves(settings: dict, prefix: str = ""):
    """(dotted key, value) of every setting in a nested dict."""
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def resolve(method: str | None = None, dataset: str | None = None, config_file: str | None = None,
            overrides: list[str] = (), variants: dict[str, dict[str, dict]] | None = None,
            extra: dict | None = None) -> dict:
    """The resolved configuration of a run (see the module docstring).

    method / dataset: from the arguments, else from the config file, else DEFAULT_METHOD on the
    synthetic data. ``variants`` maps a method name to its named variants (vtreid.methods supplies it);
    ``extra`` holds settings from command-line flags, applied with the overrides.
    """
    user = load_yaml(config_file) if config_file else {}
    for text in overrides:
        user = merge(user, parse_override(text))
    user = merge(user, extra or {})
    method = method or user.get("method") or DEFAULT_METHOD
    dataset = dataset or (user.get("dataset") or {}).get("name") or "synthetic"
    preset = load_yaml(preset_path(method, dataset))
    if preset.get("method") != method:
        raise ConfigError(f"preset {preset_path(method, dataset)} is for method {preset.get('method')!r}")
    user = merge(user, {"method": method, "dataset": {"name": dataset}})
    check_against(preset, user, "configuration")
    cfg = preset
    known = (variants or {}).get(method, {})
    for name in user.get("variant", preset.get("variant", [])):
        if name not in known:
            raise ConfigError(f"unknown variant {name!r} of method {method!r}; variants: {tuple(known) or 'none'}")
        check_against(preset, known[name], f"variant {name!r}")
        cfg = merge(cfg, known[name])
    cfg = merge(cfg, user)
    check_values(cfg)
    return cfg


def complete(cfg: dict, variants: dict[str, dict[str, dict]]) -> dict:
    """A checkpoint's configuration with the settings added since it was written: each takes the value its
    preset and the run's variants give it (``variants``: vtreid.methods.VARIANTS)."""
    base = load_yaml(preset_path(cfg["method"], cfg["dataset"]["name"]))
    for name in cfg.get("variant", []):
        base = merge(base, variants.get(cfg["method"], {}).get(name, {}))
    return merge(base, cfg)


def run_identity(cfg: dict) -> dict:
    """What a results file says of the run it holds: method, dataset and, for RegDB, the trial list
    (the trainer's results.json and evaluate --checkpoint's write it alike; evaluate --combine reads it)."""
    about = {"method": cfg["method"], "dataset": cfg["dataset"]["name"]}
    if cfg["dataset"]["name"] == "regdb":
        about["trial"] = cfg["dataset"]["trial"]
    return about


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
