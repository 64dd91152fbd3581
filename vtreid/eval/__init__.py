"""Evaluation: SYSU-MM01 and RegDB protocols, CMC / mAP / mINP on the device, bounded-memory top-k.

    rank_metrics(query_features, gallery_features, query_ids, gallery_ids, query_cams=None,
                 gallery_cams=None, *, metric="euclidean", ranks=(1, 5, 10, 20), sysu_rules=False,
                 chunk_size=None) -> dict
    python -m vtreid.evaluate --features FILE --protocol sysu|regdb ...
"""
from .metrics import rank_metrics, topk
from .protocols import evaluate_regdb, evaluate_sysu, format_table, load_rand_perm, sysu_gallery

__all__ = ["evaluate_regdb", "evaluate_sysu", "format_table", "load_rand_perm", "rank_metrics", "sysu_gallery", "topk"]
