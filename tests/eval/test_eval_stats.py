"""Paired tests over users and mean +- std over seeds."""

import math

import numpy as np
import pytest

from vstar.core.errors import InputError
from vstar.eval.stats import mean_std, paired_bootstrap, paired_wilcoxon


def test_mean_std_hand_computed():
    # mean 2.5; squared deviations 2.25+0.25+0.25+2.25 = 5; ddof=1 -> sqrt(5/3)
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([0.3]) == (0.3, 0.0)
    with pytest.raises(InputError):
        mean_std([])


def test_bootstrap_identical_methods_is_not_significant():
    a = np.random.default_rng(0).random(50)
    out = paired_bootstrap(a, a.copy(), n_resamples=2000)
    assert out == {"mean_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_bootstrap_clear_difference_and_ci_width():
    rng = np.random.default_rng(1)
    b = rng.random(400)
    a = b + 0.3 + rng.normal(0, 0.1, 400)           # a beats b on every user by ~0.3
    out = paired_bootstrap(a, b, n_resamples=5000, seed=3)
    diff = a - b
    assert out["mean_diff"] == pytest.approx(diff.mean())
    assert out["p_value"] == pytest.approx(1 / 5001)  # no resample is as extreme under H0
    # the 95% interval is about mean +- 1.96 * sd / sqrt(n) (normal theory), within 15%
    half = 1.96 * diff.std(ddof=1) / math.sqrt(400)
    assert out["ci_low"] < diff.mean() < out["ci_high"]
    assert (out["ci_high"] - out["ci_low"]) / 2 == pytest.approx(half, rel=0.15)
    assert paired_bootstrap(a, b, n_resamples=5000, seed=3) == out   # deterministic per seed


def test_bootstrap_p_value_agrees_with_paired_t_test():
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(300)          # same distribution, independent noise
    out = paired_bootstrap(a, b, n_resamples=3000)
    # paired t-test on these data (scipy.stats.ttest_rel): t = -1.389, p = 0.1658.
    # With 300 users the bootstrap p should be close to it, and the interval should hold 0.
    assert out["p_value"] == pytest.approx(0.1658, abs=0.03)
    assert out["ci_low"] < 0 < out["ci_high"]


def test_wilcoxon_hand_computed_and_all_zero():
    # differences 1..5 all positive: W- = 0; exact two-sided p = 2 * (1 / 2**5) = 0.0625
    out = paired_wilcoxon([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert out["statistic"] == 0.0 and out["p_value"] == pytest.approx(0.0625)
    assert out["n"] == 5 and out["n_nonzero"] == 5
    assert paired_wilcoxon([0.1, 0.2], [0.1, 0.2]) == {"statistic": 0.0, "p_value": 1.0, "n": 2,
                                                       "n_nonzero": 0}


def test_paired_inputs_must_match():
    with pytest.raises(InputError, match="same length"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="NaN"):
        paired_wilcoxon([1, float("nan")], [1, 2])
