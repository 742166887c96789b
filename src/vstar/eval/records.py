"""metrics.json: the one record of an evaluated run that every table and test reads.

    write_metrics(run_dir, dataset="scientific", protocol="leave_one_out", method="sft", seed=0,
                  split="test", metrics={"HR@10": 0.08}, invalid_rate=0.0, cost={...})
    record = read_metrics(run_dir)          # validated: every key of METRICS_KEYS present

Keys: dataset, protocol, method, seed, split, metrics (numbers or null), invalid_rate, cost
(decode tokens, seconds; docs/protocol.md "Cost"), extra (method-specific), created (UTC time).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json, to_jsonable
from vstar.core.layout import METRICS_FILE
from vstar.core.repro import utc_now

METRICS_KEYS = ("dataset", "protocol", "method", "seed", "split", "metrics", "invalid_rate",
                "cost", "extra", "created")


def write_metrics(run_dir: str | os.PathLike, *, dataset: str, protocol: str,
                  method: str, seed: int, split: str, metrics: Mapping[str, float],
                  invalid_rate: float, cost: Mapping[str, Any],
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically; returns its path.

    Top-level keys are exactly METRICS_KEYS. Metric values must be numbers; NaN (e.g. ILD with
    no list of 2 items) is stored as null.
    """
    path = Path(run_dir) / METRICS_FILE
    clean_metrics = to_jsonable(dict(metrics), "metrics")
    for key, value in clean_metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise InputError(f"metric values must be numbers, got {value!r}",
                             field=f"metrics.{key}")
    record = {
        "dataset": str(dataset), "protocol": str(protocol), "method": str(method),
        "seed": to_jsonable(seed, "seed"), "split": str(split),
        "metrics": clean_metrics,
        "invalid_rate": to_jsonable(invalid_rate, "invalid_rate"),
        "cost": to_jsonable(dict(cost), "cost"),
        "extra": to_jsonable(dict(extra or {}), "extra"),
        "created": utc_now(),
    }
    atomic_write_json(path, record)
    return path


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a metrics.json (or the one inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("metrics file not found", file=str(path)) from None
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON: {err.msg}", file=str(path), line=err.lineno) from None
    if not isinstance(record, dict):
        raise InputError("expected a JSON object", file=str(path))
    for key in METRICS_KEYS:
        if key not in record:
            raise InputError("missing key", file=str(path), field=key)
    for key in ("metrics", "cost", "extra"):
        if not isinstance(record[key], dict):
            raise InputError("expected a JSON object", file=str(path), field=key)
    for key, value in record["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"expected a number or null, got {value!r}", file=str(path),
                             field=f"metrics.{key}")
    return record
