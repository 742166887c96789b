"""Paired comparison of two methods of one experiment, user by user (docs/protocol.md "Statistics").

    res = paired_comparison("runs/scientific", "vstar", "sft", metric="NDCG@10")
    print(render_paired(res))

Both methods were evaluated on the same split rows in the same order (every run folder of one
config writes its ranks file, ``vstar.core.layout.RunLayout.ranks``: the 1-based rank of each
row's target, 0 = not in the list).
For each seed the ranks become per-row NDCG@K or HR@K; each row's value is averaged over the seeds
(so a user counts once, with less seed noise), and the two methods' per-row vectors go through the
paired bootstrap and the Wilcoxon signed-rank test of ``vstar.eval.stats``. The per-seed mean
differences are reported beside them, so a reader sees whether every seed agrees.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vstar.core.errors import InputError
from vstar.core.layout import ExperimentLayout
from vstar.eval.metrics import hit_at_k_per_row, ndcg_at_k_per_row
from vstar.eval.stats import paired_bootstrap, paired_wilcoxon

PER_ROW_METRICS = {"NDCG": ndcg_at_k_per_row, "HR": hit_at_k_per_row,
                   "Recall": hit_at_k_per_row}   # one target per row: Recall@K = HR@K
_METRIC_RE = re.compile(r"^(NDCG|HR|Recall)@(\d+)$")


def parse_metric(metric: str) -> tuple[str, int]:
    """``"NDCG@10" -> ("NDCG", 10)``; only per-row metrics (NDCG@K, HR@K, Recall@K) are paired."""
    m = _METRIC_RE.match(metric.strip())
    if m is None or int(m.group(2)) < 1:
        raise InputError(f"expected a per-row metric like 'NDCG@10' or 'HR@10', got {metric!r}",
                         field="metric")
    return m.group(1), int(m.group(2))


def _seed_folders(experiment: ExperimentLayout, method: str, split: str) -> dict[int, Path]:
    """seed -> ranks file, for every seed folder of ``method`` that holds the split's ranks."""
    return {seed: run.ranks(split) for seed, run in experiment.seed_runs(method).items()
            if run.ranks(split).is_file()}


def _load_ranks(path: Path) -> np.ndarray:
    try:
        ranks = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"not a readable .npy file of ranks ({err})", file=str(path)) from None
    if ranks.ndim != 1 or not np.issubdtype(ranks.dtype, np.integer) or ranks.size == 0:
        raise InputError(f"expected a non-empty 1-D integer array of target ranks, got shape "
                         f"{ranks.shape} dtype {ranks.dtype}", file=str(path))
    if ranks.min() < 0:
        raise InputError("target ranks must be >= 0 (0 = target not in the list)", file=str(path))
    return ranks.astype(np.int64)


def paired_comparison(experiment_dir: str | os.PathLike, method_a: str, method_b: str,
                      metric: str = "NDCG@10", split: str = "test", n_resamples: int = 10000,
                      seed: int = 0, seeds: Sequence[int] | None = None,
                      confidence: float = 0.95,
                      groups: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Paired test of ``method_a`` vs ``method_b`` on ``metric`` over the split's rows.

    Reads the ranks file of ``split`` (``RunLayout.ranks``) of every seed found for either
    method (or only ``seeds`` if given); a seed present for one method but not the other, or
    rank files of different lengths, is an InputError naming the folder. Per-row values are
    averaged over the seeds, then compared with ``paired_bootstrap`` (``n_resamples``, ``seed``)
    and ``paired_wilcoxon``.

    Returns method_a, method_b, metric, split, seeds, n_rows, mean_a, mean_b, diff (= mean_a -
    mean_b), ci_low, ci_high, confidence, p_bootstrap, p_wilcoxon, wilcoxon_statistic,
    n_nonzero (rows whose seed-averaged values differ), n_resamples, per_seed (a list of
    {seed, mean_a, mean_b, diff}) and files (the rank files read, per method).

    ``groups`` (label -> boolean mask over the split's rows, e.g. ``target_count_groups``):
    the same test within each group as well, returned under "groups" as a list of {label,
    n_rows, mean_a, mean_b, diff, ci_low, ci_high, p_bootstrap, p_wilcoxon}.
    """
    name, k = parse_metric(metric)
    per_row = PER_ROW_METRICS[name]
    experiment = ExperimentLayout(Path(experiment_dir))
    root = experiment.root
    folders = {m: _seed_folders(experiment, m, split) for m in (method_a, method_b)}
    wanted = sorted(set(folders[method_a]) | set(folders[method_b])) if seeds is None \
        else sorted({int(s) for s in seeds})
    if not wanted:
        raise InputError(f"no {split} ranks in any seed folder of {method_a!r} or "
                         f"{method_b!r}", file=str(root))
    for m in (method_a, method_b):
        for s in wanted:
            if s not in folders[m]:
                raise InputError(f"seed {s} has no {split} ranks for method {m!r} (the paired "
                                 f"test needs every seed for both methods)",
                                 file=str(experiment.run(m, s).ranks(split)))

    values: dict[str, list[np.ndarray]] = {method_a: [], method_b: []}   # per method: [S] x [R]
    files: dict[str, list[str]] = {method_a: [], method_b: []}
    n_rows, first_file = None, None
    for m in (method_a, method_b):
        for s in wanted:
            path = folders[m][s]
            ranks = _load_ranks(path)                                   # [R]
            if n_rows is None:
                n_rows, first_file = ranks.size, path
            elif ranks.size != n_rows:
                raise InputError(f"{ranks.size} rows, but {first_file} has {n_rows}: paired "
                                 f"runs must rank the same split rows", file=str(path))
            values[m].append(per_row(ranks, k))
            files[m].append(str(path))

    a_seeds = np.stack(values[method_a])                                # [S, R]
    b_seeds = np.stack(values[method_b])                                # [S, R]
    a, b = a_seeds.mean(0), b_seeds.mean(0)                             # [R] per-user seed mean
    per_seed = [{"seed": s, "mean_a": float(a_seeds[i].mean()), "mean_b": float(b_seeds[i].mean()),
                 "diff": float(a_seeds[i].mean() - b_seeds[i].mean())}
                for i, s in enumerate(wanted)]
    by_group = []
    for label, mask in (groups or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n_rows,):
            raise InputError(f"group {label!r} has a mask of shape {mask.shape}, expected "
                             f"({n_rows},): one entry per {split} row", field="groups")
        if mask.any():
            by_group.append({"label": label, "n_rows": int(mask.sum()),
                             **_test(a[mask], b[mask], n_resamples, seed, confidence)})
    return {"method_a": method_a, "method_b": method_b, "metric": f"{name}@{k}", "split": split,
            "seeds": wanted, "n_rows": int(n_rows),
            **_test(a, b, n_resamples, seed, confidence), "confidence": confidence,
            "n_resamples": n_resamples, "per_seed": per_seed, "files": files,
            **({"groups": by_group} if groups is not None else {})}


def _test(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int, confidence: float
          ) -> dict[str, Any]:
    """Paired bootstrap and Wilcoxon of per-row values a vs b."""
    boot = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed, confidence=confidence)
    wil = paired_wilcoxon(a, b)
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": boot["mean_diff"],
            "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
            "p_bootstrap": boot["p_value"], "p_wilcoxon": wil["p_value"],
            "wilcoxon_statistic": wil["statistic"], "n_nonzero": wil["n_nonzero"]}


def target_count_groups(train_targets: np.ndarray, split_targets: np.ndarray, n_items: int,
                        edges: Sequence[int]) -> dict[str, np.ndarray]:
    """Rows of a split grouped by how often their target item is a training target: with
    edges e_1 < ... < e_m the groups are [0, e_1), [e_1, e_2), ..., [e_m, inf), labelled
    "seen 0-4 times" style. Generators and ID models differ most on rarely seen targets."""
    edges = [int(e) for e in edges]
    if not edges or any(e <= 0 for e in edges) or sorted(set(edges)) != edges:
        raise InputError(f"expected increasing positive counts, got {edges}",
                         field="by_target_count")
    counts = np.bincount(np.asarray(train_targets, dtype=np.int64), minlength=n_items)
    seen = counts[np.asarray(split_targets, dtype=np.int64)]
    bounds = [0] + edges + [None]
    return {(f"target seen {lo}-{hi - 1} times" if hi is not None else
             f"target seen >= {lo} times"): (seen >= lo) & (True if hi is None else seen < hi)
            for lo, hi in zip(bounds[:-1], bounds[1:])}


def render_paired(result: dict[str, Any], digits: int = 4) -> str:
    """A markdown summary of ``paired_comparison``'s result: one table, then per-seed rows."""
    r, d = result, digits
    a, b, metric = r["method_a"], r["method_b"], r["metric"]
    lines = [
        f"### {a} vs {b}: {metric} on {r['split']} ({r['n_rows']} rows, seeds "
        f"{', '.join(map(str, r['seeds']))}; per-row values averaged over seeds)",
        "",
        f"| {a} | {b} | diff ({a} - {b}) | {round(100 * r['confidence'])}% CI | "
        f"p (bootstrap) | p (Wilcoxon) | rows differing |",
        "|--:|--:|--:|--:|--:|--:|--:|",
        f"| {r['mean_a']:.{d}f} | {r['mean_b']:.{d}f} | {r['diff']:+.{d}f} | "
        f"[{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}] | {r['p_bootstrap']:.{d}g} | "
        f"{r['p_wilcoxon']:.{d}g} | {r['n_nonzero']} |",
        "",
        f"| seed | {a} | {b} | diff |",
        "|--:|--:|--:|--:|",
    ]
    for s in r["per_seed"]:
        lines.append(f"| {s['seed']} | {s['mean_a']:.{d}f} | {s['mean_b']:.{d}f} | "
                     f"{s['diff']:+.{d}f} |")
    if r.get("groups"):
        lines += ["", f"| group | rows | {a} | {b} | diff | CI | p (bootstrap) | p (Wilcoxon) |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for g in r["groups"]:
            lines.append(f"| {g['label']} | {g['n_rows']} | {g['mean_a']:.{d}f} | "
                         f"{g['mean_b']:.{d}f} | {g['diff']:+.{d}f} | [{g['ci_low']:+.{d}f}, "
                         f"{g['ci_high']:+.{d}f}] | {g['p_bootstrap']:.{d}g} | "
                         f"{g['p_wilcoxon']:.{d}g} |")
    return "\n".join(lines) + "\n"
