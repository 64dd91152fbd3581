"""Cross-modality batch samplers (METHODS.md), each reproducible from a seed and data-parallel ready.

Every sampler yields batches (lists of record indices) built from groups of identities. An epoch is a
seeded permutation of the eligible identities (seed and epoch shared by all ranks, so they agree), cut
into groups of ``group`` identities; rank r takes groups r, r + world, r + 2 world, ... so ranks never
share a group's identity within an epoch (TupleSampler's negatives may be any other identity). Which
identities are eligible depends on the sampler: the identity-balanced, pair and tuple samplers take only
identities with images in both modalities (so each of their groups holds both), the PK sampler any
identity with an image (a group may then lack a modality, as single-modality SphereReID batches do).
Epoch length, per rank: max(1, eligible identities // (group x world)) batches. When there are fewer
identities than one round of groups needs, the permutation is repeated (an identity may then appear twice
in an epoch, or in one batch: 64 pairs from 12 identities hold each about 5 times; the losses go by
label, so that is sound). ``set_epoch(e)`` reshuffles. Within an identity, images are drawn without
replacement when it has enough, else with replacement.

Batch layouts (the loader's collate splits each batch into its visible and infrared parts, keeping
order):
    IdentityBalancedSampler  L ids x (T visible, then T infrared)                 (HC / AGW style)
    PKSampler                P ids x K images, K split evenly over the modalities (SphereReID)
    PairSampler              B ids x (1 visible, 1 infrared): visible-thermal pairs  (HSME)
    TupleSampler             visible [anchors, positives, negatives], then infrared [anchors, positives,
                             negatives], N of each (expAT / LCCRF): the visible anchor's positive is
                             an infrared image of its identity that is not its pair, its negative an
                             infrared image of another identity; symmetrically for the infrared anchor.
"""
from __future__ import annotations

import abc
from collections import defaultdict

import numpy as np
from torch.utils.data import Sampler

from .records import INFRARED, VISIBLE, Record


class _IdentityGroups(Sampler, abc.ABC):
    def __init__(self, records: list[Record], group: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 min_per_modality: int = 1, need_both: bool = True):
        if group < 1:
            raise ValueError(f"the identities per batch must be at least 1, got {group}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
        self.by_id: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for i, r in enumerate(records):
            self.by_id[r.label][r.modality].append(i)
        def eligible(vis, ir):
            if need_both:
                return len(vis) >= min_per_modality and len(ir) >= min_per_modality
            return len(vis) + len(ir) > 0

        self.ids = sorted(pid for pid, (vis, ir) in self.by_id.items() if eligible(vis, ir))
        if not self.ids:
            raise ValueError(f"no identity has at least {min_per_modality} image(s) in "
                             f"{'each modality' if need_both else 'some modality'}")
        if world_size > 1 and len(self.ids) < group * world_size:
            raise ValueError(f"{len(self.ids)} eligible identities cannot give each of {world_size} ranks a group of "
                             f"{group} different identities in one step; use fewer ranks or smaller groups")
        self.group, self.seed, self.rank, self.world_size, self.epoch = group, seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.ids) // (self.group * self.world_size))

    def _my_groups(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        need = len(self) * self.group * self.world_size
        order = np.concatenate([rng.permutation(self.ids) for _ in range(-(-need // len(self.ids)))])[:need]
        groups = order.reshape(-1, self.group)
        return groups[self.rank::self.world_size], np.random.default_rng([self.seed, self.epoch, self.rank, 1])

    def __iter__(self):
        groups, rng = self._my_groups()
        for group in groups:
            yield self._batch([int(pid) for pid in group], rng)

    @abc.abstractmethod
    def _batch(self, ids, rng) -> list[int]:
        """The record indices of one batch for the identity group ``ids``."""


def _draw(pool: list[int], k: int, rng) -> list[int]:
    return [int(i) for i in rng.choice(pool, size=k, replace=len(pool) < k)]


class IdentityBalancedSampler(_IdentityGroups):
    """L identities x (T visible + T infrared) per batch (Hetero-Center: L = 4, T = 8)."""

    def __init__(self, records, identities: int = 4, per_modality: int = 8, **kw):
        super().__init__(records, identities, **kw)
        self.per_modality = per_modality

    def _batch(self, ids, rng):
        return [i for pid in ids for m in (VISIBLE, INFRARED) for i in _draw(self.by_id[pid][m], self.per_modality, rng)]


class PKSampler(_IdentityGroups):
    """P identities x K images (SphereReID: 16 x 4); K is split evenly over the modalities where an
    identity has both (visible takes the odd one), else all K come from the one it has."""

    def __init__(self, records, identities: int = 16, instances: int = 4, **kw):
        super().__init__(records, identities, need_both=False, **kw)
        self.instances = instances

    def _batch(self, ids, rng):
        batch = []
        for pid in ids:
            vis, ir = self.by_id[pid]
            k_vis = (self.instances + 1) // 2 if vis and ir else (self.instances if vis else 0)
            batch += _draw(vis, k_vis, rng) if k_vis else []
            batch += _draw(ir, self.instances - k_vis, rng) if self.instances - k_vis else []
        return batch


class PairSampler(_IdentityGroups):
    """B visible-thermal pairs of one identity each (HSME: 64 pairs): visible, infrared per identity."""

    def __init__(self, records, pairs: int = 64, **kw):
        super().__init__(records, pairs, **kw)

    def _batch(self, ids, rng):
        return [i for pid in ids for m in (VISIBLE, INFRARED) for i in _draw(self.by_id[pid][m], 1, rng)]


class TupleSampler(_IdentityGroups):
    """N tuples (expAT / LCCRF: N = 8), 6N images; identities need two images in each modality so a
    positive is never the anchor's own pair."""

    def __init__(self, records, tuples: int = 8, **kw):
        super().__init__(records, tuples, min_per_modality=2, **kw)
        self.all_with = {m: [pid for pid, pools in self.by_id.items() if pools[m]] for m in (VISIBLE, INFRARED)}

    def _negative(self, pid, modality, rng):
        others = [p for p in self.all_with[modality] if p != pid]
        if not others:
            raise ValueError("a negative needs a second identity with images of that modality")
        return _draw(self.by_id[int(rng.choice(others))][modality], 1, rng)[0]

    def _batch(self, ids, rng):
        parts = {key: [] for key in ("a_v", "p_v", "n_v", "a_i", "p_i", "n_i")}
        for pid in ids:
            vis, ir = self.by_id[pid]
            a_v, p_v = (int(i) for i in rng.choice(vis, size=2, replace=False))
            a_i, p_i = (int(i) for i in rng.choice(ir, size=2, replace=False))
            parts["a_v"].append(a_v)
            parts["a_i"].append(a_i)
            parts["p_i"].append(p_i)                    # the visible anchor's positive: not its pair a_i
            parts["p_v"].append(p_v)                    # the infrared anchor's positive: not its pair a_v
            parts["n_i"].append(self._negative(pid, INFRARED, rng))
            parts["n_v"].append(self._negative(pid, VISIBLE, rng))
        return [i for key in ("a_v", "p_v", "n_v", "a_i", "p_i", "n_i") for i in parts[key]]
