"""CMC, mAP and mINP (PROTOCOLS.md) computed on the device in query chunks, and bounded-memory top-k.

rank_metrics is the one function tests, benchmarks and users call. Per chunk of queries it forms the
chunk's distances with vtreid.ops.pairwise_distance, sorts them stably (ties keep gallery order), and
reads every metric from cumulative sums over the ranked match mask; it never holds more than
chunk x gallery distances. With sysu_rules the SYSU-MM01 camera rule applies (a cam-3 query ignores
cam-2 gallery images) and the CMC counts each gallery identity once, as the official code does
(later repeats of an identity are dropped before the CMC is read); mAP and mINP use the full list.
"""
from __future__ import annotations

import torch

from vtreid.ops import pairwise_distance

DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _check(query_features, gallery_features, query_ids, gallery_ids, query_cams, gallery_cams, sysu_rules):
    for name, t in (("query_features", query_features), ("gallery_features", gallery_features)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor [count, dim]")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"query_features has dimension {query_features.shape[1]} but gallery_features has "
                         f"{gallery_features.shape[1]}")
    for name, t, n in (("query_ids", query_ids, len(query_features)), ("gallery_ids", gallery_ids, len(gallery_features)),
                       ("query_cams", query_cams, len(query_features)),
                       ("gallery_cams", gallery_cams, len(gallery_features))):
        if t is None:
            if sysu_rules and "cams" in name:
                raise ValueError(f"{name} is required with sysu_rules=True")
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (n,):
            raise ValueError(f"{name} must be a 1-D tensor of length {n}")
    if len(gallery_features) == 0:
        raise ValueError("gallery_features is empty")
    for name, t in (("query_features", query_features), ("gallery_features", gallery_features)):
        bad = int((~torch.isfinite(t).all(1)).sum()) if t.numel() else 0
        if bad:
            raise ValueError(f"{name} has {bad} row(s) holding NaN or inf; rankings of them would be meaningless")


def rank_metrics(query_features: torch.Tensor, gallery_features: torch.Tensor, query_ids: torch.Tensor,
                 gallery_ids: torch.Tensor, query_cams: torch.Tensor | None = None,
                 gallery_cams: torch.Tensor | None = None, *, metric: str = "euclidean", ranks=(1, 5, 10, 20),
                 sysu_rules: bool = False, chunk_size: int | None = None) -> dict:
    """Retrieval metrics of every query against the gallery.

    Returns a dict: ``cmc`` [max(ranks)] (CMC at ranks 1..max), ``rank{k}`` for each k in ranks, ``mAP``,
    ``mINP``, and per query ``ap``, ``inp``, ``first_match`` (1-based rank of the first correct match
    in the list the CMC reads, 0 when none) and ``valid`` (the query has a correct match; only valid
    queries enter the means). AP over the full ranked list; INP = matches / rank of the last match.
    """
    _check(query_features, gallery_features, query_ids, gallery_ids, query_cams, gallery_cams, sysu_rules)
    device = query_features.device
    num_q, num_g = len(query_features), len(gallery_features)
    max_rank = max(ranks)
    chunk = chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // num_g)
    gallery_ids = gallery_ids.to(device)
    query_ids = query_ids.to(device)
    if sysu_rules:
        gallery_cams, query_cams = gallery_cams.to(device), query_cams.to(device)
        _, gallery_slot = torch.unique(gallery_ids, return_inverse=True)
        num_slots = int(gallery_slot.max()) + 1
    positions = torch.arange(num_g, device=device)
    ap, inp, first = (torch.zeros(num_q, device=device) for _ in range(3))
    valid = torch.zeros(num_q, dtype=torch.bool, device=device)
    for start in range(0, num_q, chunk):
        end = min(num_q, start + chunk)
        dist = pairwise_distance(query_features[start:end], gallery_features, metric=metric).float()
        order = torch.sort(dist, dim=1, stable=True).indices
        del dist
        matches = gallery_ids[order] == query_ids[start:end, None]
        if sysu_rules:
            keep = ~((query_cams[start:end, None] == 3) & (gallery_cams[order] == 2))
        else:
            keep = torch.ones_like(matches)
        hits = matches & keep
        rank = torch.cumsum(keep, 1)                       # 1-based position among kept entries
        count = hits.sum(1)
        ap[start:end] = (torch.cumsum(hits, 1) / rank.clamp_min(1) * hits).sum(1) / count.clamp_min(1)
        inp[start:end] = count / (rank * hits).amax(1).clamp_min(1)
        if sysu_rules:
            slots = gallery_slot[order]
            never = torch.full((end - start, num_slots), num_g, device=device, dtype=torch.long)
            first_pos = never.scatter_reduce(1, slots, torch.where(keep, positions, num_g).expand_as(slots), "amin")
            first_occurrence = keep & (positions == first_pos.gather(1, slots))
            cmc_rank = torch.cumsum(first_occurrence, 1)
        else:
            cmc_rank = rank
        first[start:end] = torch.where(hits, cmc_rank, num_g + 1).amin(1).float()
        valid[start:end] = count > 0
    first = torch.where(valid, first, torch.zeros_like(first))
    n_valid = valid.sum().clamp_min(1)
    ks = torch.arange(1, max_rank + 1, device=device)
    cmc = ((first[valid, None] <= ks) & (first[valid, None] > 0)).float().sum(0) / n_valid
    result = {"cmc": cmc, "mAP": (ap * valid).sum() / n_valid, "mINP": (inp * valid).sum() / n_valid, "ap": ap,
              "inp": inp, "first_match": first.long(), "valid": valid}
    for k in ranks:
        result[f"rank{k}"] = cmc[k - 1]
    return result


def topk(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int, *, metric: str = "euclidean",
         query_chunk: int = 1024, gallery_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [Q, k], gallery indices [Q, k]) of the k nearest gallery rows of every query, ties to
    the lower index. Works in query_chunk x gallery_chunk tiles, merging running top-k lists, so memory
    stays near query_chunk x (gallery_chunk + k) distances whatever the gallery size."""
    num_q, num_g = len(query_features), len(gallery_features)
    k = min(k, num_g)
    out_d = torch.empty((num_q, k), device=query_features.device)
    out_i = torch.empty((num_q, k), dtype=torch.long, device=query_features.device)
    for qs in range(0, num_q, query_chunk):
        q = query_features[qs:qs + query_chunk]
        best_d = best_i = None
        for gs in range(0, num_g, gallery_chunk):
            d = pairwise_distance(q, gallery_features[gs:gs + gallery_chunk], metric=metric).float()
            idx = torch.arange(gs, gs + d.shape[1], device=d.device).expand_as(d)
            if best_d is not None:
                d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            # stable sort keeps the earlier (lower-index) entry first among equal distances
            top = torch.sort(d, dim=1, stable=True).indices[:, :k]
            best_d, best_i = d.gather(1, top), idx.gather(1, top)
        out_d[qs:qs + len(q)], out_i[qs:qs + len(q)] = best_d, best_i
    return out_d, out_i
