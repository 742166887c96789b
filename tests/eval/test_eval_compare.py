"""Comparison tables over fake run folders."""

import pytest
from rich.console import Console

from vstar.core.errors import InputError
from vstar.eval.compare import compare_runs, print_table, render_table
from vstar.eval.records import write_metrics


def fake_run(folder, method, seed, metrics, dataset="scientific", split="test", tokens=100):
    write_metrics(folder, dataset=dataset, protocol="loo", method=method, seed=seed, split=split,
                  metrics=metrics, invalid_rate=0.0, cost={"tokens": tokens})


@pytest.fixture
def runs(tmp_path):
    # method "vstar": 3 seeds in a nested sweep folder; "sft": 1 seed; "sft" on valid: separate row
    for seed, hr in zip((0, 1, 2), (0.1, 0.2, 0.3)):
        fake_run(tmp_path / "sweep" / f"vstar-s{seed}", "vstar", seed,
                 {"HR@1": hr, "NDCG@10": 0.5}, tokens=100 * (seed + 1))
    fake_run(tmp_path / "sft-s0", "sft", 0, {"HR@1": 0.05})
    fake_run(tmp_path / "sft-valid-s0", "sft", 0, {"HR@1": 0.07}, split="valid")
    (tmp_path / "not-a-run").mkdir()
    return tmp_path


def test_groups_and_mean_std(runs):
    rows = compare_runs([runs], metrics=("HR@1", "NDCG@10", "cost.tokens"))
    keys = [(r["split"], r["method"], r["n"]) for r in rows]
    assert keys == [("test", "sft", 1), ("test", "vstar", 3), ("valid", "sft", 1)]
    vstar = rows[1]
    # HR@1 over seeds: 0.1 0.2 0.3 -> mean 0.2, std (ddof=1) sqrt((0.01+0+0.01)/2) = 0.1
    assert vstar["mean"]["HR@1"] == pytest.approx(0.2)
    assert vstar["std"]["HR@1"] == pytest.approx(0.1)
    assert vstar["mean"]["cost.tokens"] == pytest.approx(200.0)  # (100+200+300)/3
    assert vstar["seeds"] == [0, 1, 2]
    sft = rows[0]
    assert sft["std"]["HR@1"] == 0.0                             # one seed -> std 0
    assert sft["mean"]["NDCG@10"] is None and sft["count"]["NDCG@10"] == 0


def test_render_table_markdown(runs):
    text = render_table(compare_runs([runs], metrics=("HR@1", "NDCG@10")))
    lines = text.strip().splitlines()
    assert lines[0] == "| dataset | protocol | split | method | n | HR@1 | NDCG@10 |"
    assert lines[3] == ("| scientific | loo | test | vstar | 3 | 0.2000 ± 0.1000 "
                        "| 0.5000 ± 0.0000 |")
    assert "| 0.0500 ± 0.0000 | n/a |" in lines[2]
    assert len(lines) == 2 + 3


def test_partial_metric_shows_count(tmp_path):
    fake_run(tmp_path / "a", "m", 0, {"HR@1": 0.1, "NDCG@10": 0.2})
    fake_run(tmp_path / "b", "m", 1, {"HR@1": 0.3})
    row = compare_runs([tmp_path / "a", tmp_path / "b" / "metrics.json"], metrics=("NDCG@10",))[0]
    assert row["n"] == 2 and row["count"]["NDCG@10"] == 1
    assert "0.2000 ± 0.0000 (n=1)" in render_table([row])


def test_print_table_rich(runs):
    console = Console(record=True, width=200)
    print_table(compare_runs([runs]), console=console)
    out = console.export_text()
    assert "vstar" in out and "0.2000 ± 0.1000" in out and "NDCG@10" in out


def test_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        compare_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no metrics.json"):
        compare_runs([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text('{"dataset": "d"}')
    with pytest.raises(InputError, match="bad"):
        compare_runs([tmp_path / "bad"])


def test_dotted_paths_reach_cost_and_extra(tmp_path):
    for seed, steps in ((0, 0.5), (1, 1.5)):
        write_metrics(tmp_path / f"vstar/seed{seed}", dataset="d", protocol="p", method="vstar",
                      seed=seed, split="test", metrics={"HR@10": 0.1}, invalid_rate=0.0,
                      cost={"seconds_per_rl_step": steps},
                      extra={"rl_summary": {"unique_items_per_G": 0.5 + seed / 4}})
    (row,) = compare_runs([tmp_path], ["cost.seconds_per_rl_step",
                                       "extra.rl_summary.unique_items_per_G", "extra.missing"])
    assert row["mean"]["cost.seconds_per_rl_step"] == pytest.approx(1.0)
    assert row["mean"]["extra.rl_summary.unique_items_per_G"] == pytest.approx(0.625)
    assert row["count"]["extra.missing"] == 0


def test_rl_summary_table_leaves_out_curves_no_method_logged():
    from vstar.experiments.rl_summary import render_rl_summary
    nan = float("nan")
    rows = [{"method": "grpo_beam", "n": 2, "mean": {"kl": 0.01, "root_widenings_per_user": nan,
                                                     "value_in_ved": nan},
             "std": {"kl": 0.0, "root_widenings_per_user": nan, "value_in_ved": nan}},
            {"method": "vstar", "n": 2, "mean": {"kl": 0.02, "root_widenings_per_user": 3.0,
                                                 "value_in_ved": nan},
             "std": {"kl": 0.0, "root_widenings_per_user": 0.1, "value_in_ved": nan}}]
    header = render_rl_summary(rows).splitlines()[0]
    assert "kl" in header and "root_widenings_per_user" in header
    assert "value_in_ved" not in header
    assert "nan ± nan" in render_rl_summary(rows)       # grpo_beam's widenings: not logged
