"""Statistics for comparing methods: paired tests over test users, mean +- std over seeds.

Paired tests take two per-user score vectors of the same users in the same order, e.g.
``ndcg_at_k_per_row(ranks_a, 10)`` and ``ndcg_at_k_per_row(ranks_b, 10)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vstar.core.errors import InputError
from vstar.eval.metrics import _to_numpy


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _to_numpy(a).astype(np.float64).ravel()
    b = _to_numpy(b).astype(np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired scores must have the same length, got {a.size} and {b.size}",
                         field="b")
    if a.size == 0:
        raise InputError("paired scores are empty", field="a")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("paired scores contain NaN or infinity", field="a")
    return a, b


def paired_bootstrap(a: Any, b: Any, n_resamples: int = 10000, seed: int = 0, *,
                     confidence: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of mean(a - b), resampling users with replacement.

    Returns mean_diff, the percentile confidence interval (ci_low, ci_high) and a two-sided
    p-value for H0: mean difference = 0, computed from the bootstrap distribution shifted to
    mean 0: p = (1 + #{|boot_mean - mean_diff| >= |mean_diff|}) / (n_resamples + 1).
    """
    a, b = _paired(a, b)
    if n_resamples < 1:
        raise InputError(f"n_resamples must be >= 1, got {n_resamples}", field="n_resamples")
    diff = a - b                                                # [R]
    n = diff.size
    mean_diff = float(diff.mean())
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)                              # bounded memory: chunk * R ints
    boot = np.empty(n_resamples)                                # [B] resampled mean differences
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))        # [b, R]
        boot[start:stop] = diff[idx].mean(axis=1)
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    extreme = np.abs(boot - mean_diff) >= abs(mean_diff) - 1e-12
    p_value = (1 + int(extreme.sum())) / (n_resamples + 1)
    return {"mean_diff": mean_diff, "ci_low": float(ci_low), "ci_high": float(ci_high),
            "p_value": float(min(1.0, p_value))}


def paired_wilcoxon(a: Any, b: Any) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of a vs b (scipy.stats.wilcoxon, zero diffs dropped).

    Returns statistic, p_value, n (pairs) and n_nonzero (pairs with a - b != 0). When every
    difference is zero the test is undefined; we return statistic 0.0 and p_value 1.0.
    """
    from scipy.stats import wilcoxon

    a, b = _paired(a, b)
    n_nonzero = int(np.count_nonzero(a - b))
    if n_nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n": int(a.size), "n_nonzero": 0}
    res = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n": int(a.size),
            "n_nonzero": n_nonzero}


def mean_std(values: Sequence[float] | Any) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of seed-level values; std is 0.0 for a single value."""
    v = _to_numpy(values).astype(np.float64).ravel()
    if v.size == 0:
        raise InputError("mean_std needs at least one value", field="values")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), std
