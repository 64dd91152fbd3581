"""Evaluation: SYSU-MM01 and RegDB protocols, CMC / mAP / mINP on the device, bounded-memory top-k.

    rank_metrics(query_features, gallery_features, query_ids, gallery_ids, query_cams=None,
                 gallery_cams=None, *, metric="euclidean", ranks=(1, 5, 10, 20), sysu_rules=False,
                 chunk_size=None) -> dict
    python -m vtreid.evaluate --features FILE --protocol sysu|regdb ...
    python -m vtreid.evaluate --combine RUN1/results.json RUN2/results.json ...   (e.g. RegDB's ten trials)
"""
from .metrics import rank_metrics, topk
from .protocols import (GALLERY_SOURCES, Galleries, combine_summaries, evaluate_regdb, evaluate_sysu, format_table,
                        load_rand_perm, sysu_galleries, sysu_gallery, sysu_setting)

__all__ = ["GALLERY_SOURCES", "Galleries", "combine_summaries", "evaluate_regdb", "evaluate_sysu", "format_table",
           "load_rand_perm", "rank_metrics", "sysu_galleries", "sysu_gallery", "sysu_setting", "topk"]
