"""Datasets (SYSU-MM01, RegDB, synthetic), tensor transforms, cross-modality samplers, loaders.

    python -m vtreid.data check --dataset sysu|regdb --root PATH
    python -m vtreid.data synth --layout sysu|regdb --out DIR [--ids N --images K --height H --width W --seed S]
"""
from . import regdb, sysu, synthetic
from .loader import ReIDDataset, build_loader, collate
from .records import INFRARED, VISIBLE, Record, Split, load_image
from .samplers import IdentityBalancedSampler, PairSampler, PKSampler, TupleSampler
from .transforms import Transform

__all__ = ["INFRARED", "IdentityBalancedSampler", "PKSampler", "PairSampler", "ReIDDataset", "Record", "Split",
           "Transform", "TupleSampler", "VISIBLE", "build_loader", "collate", "load_image", "regdb", "synthetic",
           "sysu"]
