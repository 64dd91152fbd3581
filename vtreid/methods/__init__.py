"""The five methods, one file per paper, and their registry (METHODS.md).

    sphere       SphereReID's Sphere loss                       sphere.py
    hsme, dhsme  HSME and D-HSME (two stages, SVD between)      hsme.py
    hc           Hetero-Center loss with TSLFN (p = 6)          hetero_center.py
    hc_baseline  its p = 1 baseline (lambda = 1)
    lccrf        LCCRF's EAT + CMKD                             lccrf.py
    expat        expAT with CSBN                                expat.py

``get_method(name)`` returns the class; ``Method(cfg, num_classes)`` composes a run (see base.py).
Presets live in vtreid/presets/<name>/{sysu,regdb,synthetic}.yaml.
"""
from vtreid.training.config import ConfigError

from .base import Batch, Method
from .expat import ExpAT
from .hetero_center import HeteroCenter, HeteroCenterBaseline
from .hsme import DHSME, HSME
from .lccrf import LCCRF
from .sphere import Sphere

METHODS = {m.name: m for m in (Sphere, HSME, DHSME, HeteroCenter, HeteroCenterBaseline, LCCRF, ExpAT)}
VARIANTS = {name: m.variants for name, m in METHODS.items()}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {tuple(METHODS)}")
    return METHODS[name]


__all__ = ["Batch", "ConfigError", "METHODS", "Method", "VARIANTS", "get_method"]
