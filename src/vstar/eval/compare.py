"""Comparison tables: runs grouped by (dataset, protocol, split, method), mean +- std over seeds.

    rows = compare_runs([Path("runs")])          # finds every metrics.json below runs/
    print(render_table(rows))                    # markdown
    print_table(rows)                            # rich table in the terminal
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from vstar.core.errors import InputError
from vstar.core.layout import METRICS_FILE
from vstar.eval.records import read_metrics
from vstar.eval.stats import mean_std

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")
GROUP_KEYS = ("dataset", "protocol", "split", "method")


def find_metrics_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every metrics.json at or below the given paths (files or folders), sorted, no duplicates."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.add(p.resolve())
        elif p.is_dir():
            found.update(f.resolve() for f in p.rglob(METRICS_FILE) if f.is_file())
        else:
            raise InputError("run folder or metrics file not found", file=str(p))
    return sorted(found)


def _lookup(record: dict, name: str) -> float | None:
    """A metric by name: a key of "metrics", "invalid_rate", or a dotted path ("cost.<key>",
    "extra.rl_summary.<key>")."""
    if name in record["metrics"]:
        return record["metrics"][name]
    if name == "invalid_rate":
        return record["invalid_rate"]
    if "." in name:                      # a path into the record: cost.<key>, extra.rl_summary.<key>
        value: Any = record
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def compare_runs(run_dirs: Sequence[str | os.PathLike],
                 metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (dataset, protocol, split, method) over all runs found under ``run_dirs``.

    Each row: dataset, protocol, split, method, n (runs), seeds (sorted), metrics (the names, in
    order; default DEFAULT_METRICS; a name given that no run has is an InputError), mean / std / count (dicts by metric name; std has ddof=1, 0 for one run; a metric
    missing or null in every run of the group has mean and std None and count 0). Rows are
    sorted by the group keys.
    """
    files = find_metrics_files(run_dirs)
    if not files:
        raise InputError("no metrics.json found", file=", ".join(str(p) for p in run_dirs))
    groups: dict[tuple[str, ...], list[dict]] = {}
    for f in files:
        record = read_metrics(f)
        groups.setdefault(tuple(str(record[k]) for k in GROUP_KEYS), []).append(record)
    records = [r for group in groups.values() for r in group]
    # names asked for (not the defaults) must exist in some run; a dotted path may be absent
    unknown = [n for n in metrics or () if "." not in n and not any(
        n in r["metrics"] or _lookup(r, n) is not None for r in records)]
    metrics = list(metrics or DEFAULT_METRICS)
    if unknown:
        known = sorted({k for r in records for k in r["metrics"]})
        raise InputError(f"unknown metric(s) {unknown}: no run has them; metrics are {known}, "
                         "invalid_rate, or dotted paths like cost.train_seconds",
                         field="--metrics")
    rows = []
    for key in sorted(groups):
        records = groups[key]
        seeds = [r["seed"] for r in records]
        if len(set(map(str, seeds))) < len(seeds):
            log.warning("group %s has repeated seeds %s: runs are counted separately", key, seeds)
        row: dict[str, Any] = dict(zip(GROUP_KEYS, key))
        row.update(n=len(records), seeds=sorted(seeds, key=str), metrics=list(metrics),
                   mean={}, std={}, count={})
        for name in metrics:
            values = [v for v in (_lookup(r, name) for r in records)
                      if v is not None and math.isfinite(v)]        # NaN counts as missing
            mean, std = mean_std(values) if values else (None, None)
            row["mean"][name], row["std"][name], row["count"][name] = mean, std, len(values)
        rows.append(row)
    return rows


def _cell(row: dict, name: str, digits: int) -> str:
    mean, std, count = row["mean"][name], row["std"][name], row["count"][name]
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text if count == row["n"] else f"{text} (n={count})"


def render_table(rows: Sequence[dict[str, Any]], digits: int = 4) -> str:
    """Markdown table: group keys, n seeds, then "mean ± std" per metric ("(n=c)" if partial)."""
    if not rows:
        return ""
    names = rows[0]["metrics"]
    header = [*GROUP_KEYS, "n", *names]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(GROUP_KEYS) + ["--:"] * (1 + len(names))) + "|"]
    for row in rows:
        cells = [str(row[k]) for k in GROUP_KEYS] + [str(row["n"])]
        cells += [_cell(row, name, digits) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: Sequence[dict[str, Any]], digits: int = 4, console: Any = None) -> None:
    """Print the rows as a rich table (to ``console`` if given, else a new rich Console)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mean ± std over seeds")
    names = rows[0]["metrics"] if rows else []
    for k in GROUP_KEYS:
        table.add_column(k)
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*[str(row[k]) for k in GROUP_KEYS], str(row["n"]),
                      *[_cell(row, name, digits) for name in names])
    (console or Console()).print(table)
