"""The mean over RL steps of every logged curve, per method and seed (``vstar rl-summary``).

    rows = rl_summary("runs/scientific", ["grpo_beam", "vstar"])
    print(render_rl_summary(rows))

Reads each run's ``rl_log.jsonl`` (``vstar.core.layout.RunLayout.rl_log``); a method's row holds
the mean over its seeds of each seed's mean over its RL steps (value warm-up steps and NaN
entries left out), ± the std over seeds (ddof=1; 0 for one
seed) and the number of seeds n.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vstar.core.errors import InputError
from vstar.core.layout import ExperimentLayout

CURVES = ("target_in_group", "root_widenings_per_user", "unique_items_per_G", "unique_codes_l1",
          "unique_codes_l2",
          "unique_codes_l3", "sibling_groups_with_signal", "reward_std", "adv_std",
          "sib_adv_std", "kl", "loss_value", "decode_forward_tokens_per_user", "step_seconds",
          "sib_adv_share_on_target_path", "value_return_corr", "vdiag_pct_v", "vdiag_pct_logp",
          "value_in_ved", "value_beam_swapped")


def _mean(values: list) -> float:
    """Mean of the finite entries (a curve may be undefined, NaN, in some steps); NaN if none."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _read_log(path: Path) -> list[dict]:
    steps = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            steps.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(f"not a JSON line ({err.msg})", file=str(path), line=lineno) from None
    return steps


def rl_summary(experiment_dir: str | os.PathLike, methods: Sequence[str],
               curves: Sequence[str] = CURVES) -> list[dict]:
    """One row per method: {method, n, mean: {curve: ...}, std: {curve: ...}} (NaN when a curve
    was never logged, e.g. loss_value for a method without the value loss)."""
    experiment = ExperimentLayout(Path(experiment_dir))
    rows = []
    for method in methods:
        per_seed = []
        for run in experiment.seed_runs(method).values():
            if not run.rl_log.is_file():
                continue
            steps = [s for s in _read_log(run.rl_log) if not s.get("value_warmup")]
            per_seed.append([_mean([s[k] for s in steps if k in s]) for k in curves])
        if not per_seed:
            raise InputError(f"no RL log in any seed folder of {method!r}",
                             file=str(experiment.method_dir(method)))
        arr = np.asarray(per_seed, dtype=float)                    # [seeds, curves]
        std = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
        rows.append({"method": method, "n": len(arr), "mean": dict(zip(curves, arr.mean(0))),
                     "std": dict(zip(curves, std))})
    return rows


def render_rl_summary(rows: Sequence[dict], digits: int = 3) -> str:
    """Markdown: one row per method, "mean ± std" per curve; a curve no method logged (NaN in
    every row, e.g. VED's root widenings in a table of beam recipes) gets no column."""
    curves = [c for c in (rows[0]["mean"] if rows else [])
              if any(np.isfinite(r["mean"][c]) for r in rows)]
    lines = ["| method | n | " + " | ".join(curves) + " |",
             "|---|--:|" + "--:|" * len(curves)]
    for r in rows:
        cells = [f"{r['mean'][c]:.{digits}f} ± {r['std'][c]:.{digits}f}" for c in curves]
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
