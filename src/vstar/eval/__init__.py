"""The evaluation stage: full-catalogue ranking metrics, statistics, metrics.json, tables, curves.

    metrics.py  target_ranks, HR@K / NDCG@K, coverage, ILD, long-tail share, invalid rate
    stats.py    paired bootstrap and Wilcoxon over users, mean +- std over seeds
    records.py  metrics.json: write_metrics / read_metrics
    compare.py  group runs by (dataset, protocol, split, method) into mean +- std tables
    paired.py   paired test of two methods of one experiment, user by user
    budget.py   accuracy vs decode budget, beam search against VED, and its plot
    trees.py    search trees of VED and beam search as node lists and SVG pictures
"""

from vstar.eval.compare import compare_runs, find_metrics_files, print_table, render_table
from vstar.eval.metrics import (
    coverage_at_k,
    evaluate_ranking,
    hit_at_k_per_row,
    hit_rate,
    intra_list_distance_at_k,
    invalid_rate,
    long_tail_items,
    long_tail_share_at_k,
    ndcg,
    ndcg_at_k_per_row,
    target_ranks,
)
from vstar.eval.records import METRICS_KEYS, read_metrics, write_metrics
from vstar.eval.stats import mean_std, paired_bootstrap, paired_wilcoxon

__all__ = [
    "METRICS_KEYS", "compare_runs", "coverage_at_k", "evaluate_ranking", "find_metrics_files",
    "hit_at_k_per_row", "hit_rate", "intra_list_distance_at_k", "invalid_rate",
    "long_tail_items", "long_tail_share_at_k", "mean_std", "ndcg", "ndcg_at_k_per_row",
    "paired_bootstrap", "paired_wilcoxon", "print_table", "read_metrics", "render_table",
    "target_ranks", "write_metrics",
]
