import json
import math

import numpy as np
import pytest

from vstar.experiments.cli import main
from vstar.core.errors import InputError
from vstar.eval.paired import paired_comparison, parse_metric, render_paired


def _write(exp, method, seed, ranks, split="test"):
    folder = exp / method / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"ranks_{split}.npy", np.asarray(ranks, dtype=np.int64))
    return folder


def _small(tmp_path):
    """A: two seeds with known ranks; B: never finds the target (all 0)."""
    exp = tmp_path / "exp"
    _write(exp, "A", 0, [1, 2, 0, 11])
    _write(exp, "A", 1, [1, 0, 0, 3])
    _write(exp, "B", 0, [0, 0, 0, 0])
    _write(exp, "B", 1, [0, 0, 0, 0])
    return exp


def test_means_are_per_user_seed_averages(tmp_path):
    exp = _small(tmp_path)
    res = paired_comparison(exp, "A", "B", metric="NDCG@10", n_resamples=200)
    # per-row NDCG@10, seed 0: [1, 1/log2(3), 0, 0 (rank 11 > 10)], seed 1: [1, 0, 0, 1/log2(4)]
    expected_a = (1.0 + 0.5 / math.log2(3) + 0.0 + 0.5 * 0.5) / 4
    assert res["mean_a"] == pytest.approx(expected_a)
    assert res["mean_b"] == 0.0
    assert res["diff"] == pytest.approx(expected_a)
    assert res["n_rows"] == 4 and res["seeds"] == [0, 1]
    assert res["ci_low"] <= res["diff"] <= res["ci_high"]
    seed0 = res["per_seed"][0]
    assert seed0["seed"] == 0 and seed0["mean_a"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert res["per_seed"][1]["diff"] == pytest.approx(1.5 / 4)

    hr = paired_comparison(exp, "A", "B", metric="HR@10", n_resamples=200)
    assert hr["mean_a"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)    # seed-averaged hits
    assert [s["mean_a"] for s in hr["per_seed"]] == [0.5, 0.5]
    hr1 = paired_comparison(exp, "A", "B", metric="HR@1", n_resamples=200)
    assert hr1["mean_a"] == pytest.approx(0.25)
    assert hr1["n_nonzero"] == 1                                      # only row 0 differs


def test_clearly_better_method_has_small_p_and_swapping_flips_the_sign(tmp_path):
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    for s in range(2):
        u = rng.random(300)
        _write(exp, "good", s, np.where(u < 0.8, 1, 0))
        _write(exp, "bad", s, np.where(u < 0.2, 1, 0))
    res = paired_comparison(exp, "good", "bad", metric="HR@10", n_resamples=2000)
    assert res["diff"] > 0.5 and res["ci_low"] > 0.4
    assert res["p_bootstrap"] < 0.01 and res["p_wilcoxon"] < 1e-6
    rev = paired_comparison(exp, "bad", "good", metric="HR@10", n_resamples=2000)
    assert rev["diff"] == pytest.approx(-res["diff"])
    assert rev["ci_high"] < 0


def test_identical_methods_give_zero_diff_and_p_one(tmp_path):
    exp = tmp_path / "exp"
    for m in ("A", "B"):
        _write(exp, m, 0, [1, 3, 0, 7, 2])
    res = paired_comparison(exp, "A", "B", n_resamples=500)
    assert res["diff"] == 0.0 and res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    assert res["p_bootstrap"] == 1.0 and res["p_wilcoxon"] == 1.0
    assert res["n_nonzero"] == 0


def test_missing_seed_or_row_mismatch_names_the_folder(tmp_path):
    exp = _small(tmp_path)
    _write(exp, "A", 2, [1, 1, 1, 1])
    with pytest.raises(InputError, match=r"B[/\\]seed2.*seed 2"):
        paired_comparison(exp, "A", "B")
    res = paired_comparison(exp, "A", "B", seeds=[0, 1], n_resamples=100)  # explicit seeds: fine
    assert res["seeds"] == [0, 1]
    _write(exp, "B", 2, [0, 0, 0])                                   # 3 rows instead of 4
    with pytest.raises(InputError, match=r"B[/\\]seed2[/\\]ranks_test.npy.*3 rows"):
        paired_comparison(exp, "A", "B")
    with pytest.raises(InputError, match="method folder not found"):
        paired_comparison(exp, "A", "nope")
    with pytest.raises(InputError, match="no valid ranks in any seed folder"):
        paired_comparison(exp, "A", "B", split="valid")


def test_metric_names():
    assert parse_metric("NDCG@10") == ("NDCG", 10)
    assert parse_metric("HR@5") == ("HR", 5)
    for bad in ("coverage@10", "NDCG", "NDCG@0", "ndcg@10"):
        with pytest.raises(InputError, match="metric"):
            parse_metric(bad)


def test_render_and_cli(tmp_path, capsys):
    exp = _small(tmp_path)
    res = paired_comparison(exp, "A", "B", metric="HR@10", n_resamples=100)
    text = render_paired(res)
    assert "A vs B: HR@10 on test (4 rows, seeds 0, 1" in text
    assert "| 0.5000 | 0.0000 | +0.5000 |" in text
    assert "| 1 | 0.5000 | 0.0000 | +0.5000 |" in text           # seed 1 row

    out_json = tmp_path / "paired.json"
    assert main(["paired", str(exp), "A", "B", "--metric", "HR@10", "--n-resamples", "100",
                 "--json", str(out_json)]) == 0
    assert "| 0.5000 | 0.0000 | +0.5000 |" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["mean_a"] == pytest.approx(0.5)
    assert main(["paired", str(exp), "A", "B", "--metric", "HR@10", "--n-resamples", "100",
                 "--seeds", "1", "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["seeds"] == [1]
    assert "(4 rows, seeds 1;" in capsys.readouterr().out
    assert main(["paired", str(exp), "A", "missing"]) == 2          # InputError -> exit code 2
    assert "method folder not found" in capsys.readouterr().err


def test_target_count_groups_by_training_frequency():
    from vstar.eval.paired import target_count_groups
    train_targets = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2])      # counts: 3, 1, 5, 0 (item 3)
    groups = target_count_groups(train_targets, np.array([0, 1, 2, 3, 2]), 4, [2, 5])
    assert list(groups) == ["target seen 0-1 times", "target seen 2-4 times",
                            "target seen >= 5 times"]
    assert groups["target seen 0-1 times"].tolist() == [False, True, False, True, False]
    assert groups["target seen 2-4 times"].tolist() == [True, False, False, False, False]
    assert groups["target seen >= 5 times"].tolist() == [False, False, True, False, True]
    with pytest.raises(InputError, match="increasing positive"):
        target_count_groups(train_targets, np.array([0]), 4, [5, 2])


def test_paired_within_groups_restricts_the_rows(tmp_path):
    exp = _small(tmp_path)
    groups = {"first two": np.array([True, True, False, False]),
              "last two": np.array([False, False, True, True]),
              "none": np.zeros(4, dtype=bool)}
    res = paired_comparison(exp, "A", "B", metric="HR@10", n_resamples=200, groups=groups)
    by = {g["label"]: g for g in res["groups"]}
    assert set(by) == {"first two", "last two"}                 # empty groups are left out
    assert by["first two"]["n_rows"] == 2
    assert by["first two"]["mean_a"] == pytest.approx((1 + 0.5) / 2)  # rows 0, 1 of A
    assert by["last two"]["mean_a"] == pytest.approx(0.25)
    assert by["last two"]["mean_b"] == 0.0
    assert "| first two | 2 |" in render_paired(res)
    with pytest.raises(InputError, match="one entry per test row"):
        paired_comparison(exp, "A", "B", groups={"bad": np.ones(3, dtype=bool)})
