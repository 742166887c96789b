"""TensorBoard curves of a real (toy) run, and ``vstar report`` of it: every section, numbers that
agree with the run folders, nothing fetched from the network."""

import json
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vstar.core.layout import RunLayout
from vstar.eval.paired import paired_comparison
from vstar.experiments.cli import main
from vstar.experiments.report import SECTIONS, ReportOptions, build_report, seed_band


def _scalars(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sft_and_rl_curves_are_in_tensorboard_under_the_run_folder(trained_toy):
    exp = trained_toy / "runs" / "toy"
    sft = _scalars(exp / "sft" / "seed0")
    history = json.loads((exp / "sft" / "seed0" / "sft_history.json").read_text())
    assert {"sft/loss", "sft/lr", "sft/epoch/train_loss", "sft/epoch/valid_nll",
            "sft/epoch/NDCG@10", "sft/epoch/HR@10"} <= set(sft)
    steps = len(sft["sft/loss"])
    assert steps % len(history) == 0 and [s for s, _ in sft["sft/loss"]] == list(range(1, steps + 1))
    per_epoch = steps // len(history)
    assert sft["sft/epoch/train_loss"] == [((e + 1) * per_epoch, pytest.approx(h["train_loss"]))
                                          for e, h in enumerate(history)]
    # the epoch's train loss is the mean of its steps' losses
    first = [v for s, v in sft["sft/loss"] if s <= per_epoch]
    assert np.mean(first) == pytest.approx(history[0]["train_loss"], rel=1e-5)
    # warm-up: step 1 runs at lr / warmup_steps (SFTConfig defaults, lr from the toy config)
    from vstar.train.config import SFTConfig

    assert sft["sft/lr"][0][1] == pytest.approx(SFTConfig().lr / SFTConfig().warmup_steps)

    for method in ("grpo_beam", "vstar"):
        log = [json.loads(line) for line in
               (exp / method / "seed0" / "rl_log.jsonl").read_text().splitlines()]
        rl = _scalars(exp / method / "seed0")
        assert set(rl) == {f"rl/{k}" for rec in log for k in rec if k != "step"}
        assert rl["rl/reward_mean"] == [(r["step"], pytest.approx(r["reward_mean"], rel=1e-6))
                                        for r in log]
    assert RunLayout(exp / "popularity" / "seed0").tensorboard_events() == []   # logs nothing


def test_tensorboard_off_writes_no_events_and_leaves_training_unchanged(trained_toy, tmp_path):
    cfg = trained_toy / "cfg.yaml"
    assert main(["sft", str(cfg), "run.tensorboard=false", f"run.out_dir={tmp_path}",
                 "run.seeds=[0]"]) == 0
    off, on = RunLayout(tmp_path / "toy" / "sft" / "seed0"), \
        RunLayout(trained_toy / "runs" / "toy" / "sft" / "seed0")
    assert off.tensorboard_events() == [] and on.tensorboard_events()
    assert np.array_equal(np.load(off.ranks("test")), np.load(on.ranks("test")))
    assert json.loads(off.sft_history.read_text())[-1]["train_loss"] == \
        json.loads(on.sft_history.read_text())[-1]["train_loss"]


def test_seed_band_is_mean_and_min_max_over_the_seeds_that_have_a_value():
    steps, mean, lo, hi = seed_band([{1: 1.0, 2: 2.0, 3: float("nan")}, {1: 3.0, 2: 6.0, 4: 5.0}])
    assert steps == [1, 2, 4]
    assert mean.tolist() == [2.0, 4.0, 5.0] and lo.tolist() == [1.0, 2.0, 5.0]
    assert hi.tolist() == [3.0, 6.0, 5.0]


@pytest.fixture(scope="module")
def report(trained_toy, tmp_path_factory):
    """The experiment's report, with a hand-written budget curve in vstar/seed0."""
    exp = trained_toy / "runs" / "toy"
    budget = {"dataset": "toy", "split": "test", "n_users": 50, "records": [
        {"decoder": "beam", "width": 4, "budget_per_user": 4, "HR@10": 0.1234,
         "decode_forward_tokens_per_user": 4.0, "wall_seconds_per_user": 0.001},
        {"decoder": "ved", "width": 4, "budget_per_user": 4, "HR@10": 0.2345,
         "decode_forward_tokens_per_user": 3.5, "wall_seconds_per_user": 0.002}]}
    extra = tmp_path_factory.mktemp("budget") / "budget.json"
    extra.write_text(json.dumps(budget))
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(exp), "-o", str(out), "--users", "2", "--budget-curve",
                 str(extra)]) == 0
    return out.read_text(encoding="utf-8"), exp


def test_report_has_every_section_and_nothing_from_the_network(report):
    page, _ = report
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)      # no remote resource
    assert page.count('src="data:image/png;base64,') == 4     # SFT, RL, budget, SID charts
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="tree"') == 4  # 2 users


def test_report_comparison_matches_the_runs_and_the_paired_test(report):
    page, exp = report
    for method in ("popularity", "sft", "grpo_beam", "vstar"):
        assert f"<tr><td>{method}</td><td>2</td><td>0, 1</td>" in page
    assert "(baseline)" in page
    res = paired_comparison(exp, "vstar", "sft", metric="NDCG@10", n_resamples=2000,
                            seeds=[0, 1])
    assert f'{res["diff"]:+.4f} [{res["ci_low"]:+.4f}, {res["ci_high"]:+.4f}]' in page
    sft0 = json.loads((exp / "sft" / "seed0" / "metrics.json").read_text())["metrics"]["HR@10"]
    sft1 = json.loads((exp / "sft" / "seed1" / "metrics.json").read_text())["metrics"]["HR@10"]
    assert f"{(sft0 + sft1) / 2:.4f} ± {np.std([sft0, sft1], ddof=1):.4f}" in page


def test_report_budget_trees_sids_and_runs(report):
    page, exp = report
    assert "<td>0.1234</td><td>0.2345</td>" in page                  # beam vs VED HR@10
    trees = page[page.index('<section id="trees">'):page.index('<section id="runs">')]
    assert trees.count('<div class="user">') == 2
    assert "vstar/seed0" in trees and "8 decode forward tokens per user" in trees  # (L-1) W
    assert trees.count('class="item target"') == trees.count('<td class="hit">')
    assert "items per code" not in trees and "collision rate before" in page
    runs = page[page.index('<section id="runs">'):]
    assert runs.count('<details class="run">') == 8                   # 4 methods x 2 seeds
    versions = json.loads((exp / "vstar" / "seed0" / "versions.json").read_text())
    assert versions["command"] and "vstar report" not in versions["command"]
    assert "config.yaml" in runs and "tensorboard: true" in runs


def test_report_of_one_run_folder_shows_it_and_its_baseline(trained_toy, tmp_path):
    run = trained_toy / "runs" / "toy" / "grpo_beam" / "seed1"
    path = build_report(run, tmp_path / "one.html",
                        ReportOptions(baseline="sft", users=1, tree_method="grpo_beam"))
    page = path.read_text()
    assert "<tr><td>grpo_beam</td><td>1</td><td>1</td>" in page
    assert "<tr><td>sft</td><td>1</td><td>1</td>" in page and "vstar</td>" not in page
    assert page.count('<div class="user">') == 1 and "grpo_beam/seed1" in page


def test_report_refuses_bad_options_and_folders_naming_them(trained_toy, tmp_path, capsys):
    exp = trained_toy / "runs" / "toy"
    assert main(["report", str(exp), "--users", "-1", "-o", str(tmp_path / "r.html")]) == 2
    assert "--users" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no run folders" in capsys.readouterr().err
    path = build_report(exp, tmp_path / "no_trees.html", ReportOptions(users=0))
    assert "no search trees asked for" in path.read_text()


def test_paired_cli_by_target_count_groups_every_test_row(trained_toy, capsys, tmp_path):
    exp = trained_toy / "runs" / "toy"
    out = tmp_path / "paired.json"
    assert main(["paired", str(exp), "vstar", "sft", "--by-target-count", "2", "5",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert sum(g["n_rows"] for g in res["groups"]) == res["n_rows"]
    assert "| group | rows |" in capsys.readouterr().out
    assert main(["paired", str(exp), "vstar", "sft", "--by-target-count", "0"]) == 2
    assert "increasing positive counts" in capsys.readouterr().err
