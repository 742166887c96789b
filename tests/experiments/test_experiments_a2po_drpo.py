"""A2PO and DRPO registry entries end to end (2 steps each) on a tiny rated dataset: every
entry runs through ``vstar run``, logs finite curves and writes its extras."""

import json
import math

import numpy as np
import pytest

from vstar.experiments.cli import main
from vstar.experiments.registry import get_method

A2PO = ("a2po", "a2po_reward_sum", "a2po_adv_sum")
DRPO = ("drpo", "drpo_naive", "drpo_positive", "drpo_soft")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a2po_drpo")
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 40
    lines = ["user_id,item_id,timestamp,rating"]
    for u in range(n_users):
        start = rng.integers(0, n_items)
        lines += [f"u{u},i{(start + 2 * t) % n_items},{t},{rng.integers(1, 6)}" for t in range(8)]
    (tmp / "inter.csv").write_text("\n".join(lines) + "\n")
    (tmp / "items.csv").write_text("item_id,price\n" + "".join(
        f"i{i},{1 + i % 3}\n" for i in range(n_items)))
    np.save(tmp / "vectors.npy", rng.normal(size=(n_items, 8)).astype(np.float32))
    (tmp / "cfg.yaml").write_text(f"""
data: {{format: table, path: {tmp / 'inter.csv'}, item_path: {tmp / 'items.csv'},
        name: toy, max_history: 5, value_cols: [price]}}
sid: {{method: rkmeans, codebook_sizes: [4, 4], collisions: reassign,
       vectors_path: {tmp / 'vectors.npy'}}}
model: {{n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}}
sft: {{max_epochs: 1, val_beam: 5, batch_size: 16}}
sasrec: {{max_epochs: 2, hidden: 16, batch_size: 16}}
rl: {{steps: 2, users_per_step: 8, n_candidates: 4, semantic_train_steps: 10,
     item_value_column: price, semantic_fraction: 0.5}}
eval: {{beam_width: 10, ks: [1, 5, 10], batch_size: 16}}
run: {{name: toy, out_dir: {tmp / 'runs'}, cache_dir: {tmp / 'cache'}, seeds: [0],
      methods: [sft, {', '.join(A2PO + DRPO)}], progress: false}}
""")
    assert main(["run", str(tmp / "cfg.yaml")]) == 0
    return tmp / "runs" / "toy"


def _log(run):
    return [json.loads(line) for line in (run / "rl_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", A2PO)
def test_a2po_entries_log_both_rewards_and_report_their_top_k_rewards(runs, method):
    run = runs / method / "seed0"
    log = _log(run)
    assert len(log) == 2
    for rec in log:
        for key in ("reward_biz_mean", "reward_sem_mean", "loss_grpo", "adv_std"):
            assert math.isfinite(rec[key]), (key, rec[key])
        assert rec["semantic_groups"] == 0.5
    record = json.loads((run / "metrics.json").read_text())
    topk = record["extra"]["a2po_topk"]
    assert topk["k"] == 10 and math.isfinite(topk["reward_biz_mean"])
    assert math.isfinite(topk["reward_sem_mean"])
    assert record["extra"]["rl"]["a2po"] == get_method(method).preset["a2po"]
    assert (run / "semantic_scorer.safetensors").is_file()
    assert record["extra"]["semantic_judge"]["trained"] is True


@pytest.mark.parametrize("method", DRPO)
def test_drpo_entries_train_offline_and_log_the_collapse_diagnostics(runs, method):
    run = runs / method / "seed0"
    log = _log(run)
    assert [r["step"] for r in log] == [1, 2]
    for rec in log:
        for key in ("loss_drpo", "max_token_nll", "entropy", "grad_norm", "grad_norm_neg",
                    "grad_norm_pos", "weight_mean", "kept_share"):
            assert math.isfinite(rec[key]), (key, rec[key])
    record = json.loads((run / "metrics.json").read_text())
    info = record["extra"]["offline_log"]
    assert info["with_ratings"] is True and info["injected"] > 0
    assert record["extra"]["rl"]["drpo_mode"] == get_method(method).preset["drpo_mode"]
    assert 0.0 <= record["metrics"]["HR@10"] <= 1.0 and record["invalid_rate"] == 0.0
    if method == "drpo":                      # hard filter: negatives never get a gradient
        assert all(rec["grad_norm_neg"] == 0.0 for rec in log)


def test_a2po_refuses_a_missing_value_column(runs, capsys):
    cfg = runs.parents[1] / "cfg.yaml"
    assert main(["rl", str(cfg), "--method", "a2po", "rl.item_value_column=margin",
                 "run.overwrite=true"]) == 2
    assert "rl.item_value_column" in capsys.readouterr().err
