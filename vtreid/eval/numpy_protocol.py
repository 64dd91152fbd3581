"""The straightforward per-query numpy loop of the SYSU-MM01 / RegDB protocols, as the AGW baseline's
eval_metrics.py computes them. It is the oracle the tests check vtreid.eval.rank_metrics against and
the baseline bench/evaluation.py times; it is not used for evaluation itself."""
from __future__ import annotations

import numpy as np


def evaluate(distmat: np.ndarray, q_pids, g_pids, q_camids=None, g_camids=None, max_rank: int = 20,
             sysu_rules: bool = False):
    """(cmc [max_rank], mAP, mINP) over the queries with at least one valid match."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred_label = g_pids[indices]
    matches = (pred_label == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = indices[q]
        if sysu_rules:
            remove = (q_camids[q] == 3) & (np.asarray(g_camids)[order] == 2)
        else:
            remove = np.zeros(num_g, dtype=bool)
        keep = ~remove
        raw = matches[q][keep]
        if not raw.any():
            continue
        if sysu_rules:
            # the official CMC counts each gallery identity once: later repeats are dropped
            labels = pred_label[q][keep]
            _, first = np.unique(labels, return_index=True)
            deduped = (labels[np.sort(first)] == q_pids[q]).astype(np.int32)
            cmc = deduped.cumsum()
        else:
            cmc = raw.cumsum()
        cmc = (cmc >= 1).astype(np.float64)
        cmc = np.concatenate([cmc, np.full(max(0, max_rank - len(cmc)), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        positions = np.where(raw == 1)[0]
        all_inp.append(raw.sum() / (positions.max() + 1.0))
        precision = raw.cumsum() / (np.arange(len(raw)) + 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    if not all_cmc:
        raise ValueError("no query has a valid match in the gallery")
    return np.mean(all_cmc, axis=0), float(np.mean(all_ap)), float(np.mean(all_inp))
