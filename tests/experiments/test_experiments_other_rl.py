"""The other RL methods (docs/method.md "Other RL methods") run through ``vstar rl --method``
on the tiny experiment: 2 RL steps each, every logged curve finite, each method's own curve
logged."""

import json
import math

import pytest

from vstar.experiments.cli import main

# method: (the curves it trades, logged in rl_log.jsonl, value warm-up steps before RL)
OWN_CURVES = {
    "gspo": (["gspo_seq_ratio_mean", "grpo_clip_frac", "loss_grpo"], 0),
    "dapo": (["dapo_kept_share", "grpo_clip_frac_low", "grpo_clip_frac_high", "loss_grpo"], 0),
    "grpo_beam_tree": (["adv_abs_l1", "adv_abs_l2", "loss_grpo"], 0),
    "hepo": (["hepo_process_reward_mean", "hepo_process_reward_nonzero", "adv_abs_l1",
              "loss_value", "loss_grpo"], 3),
    "hepo_vbeam": (["hepo_process_reward_mean", "value_beam_swapped", "adv_abs_l1",
                    "loss_value", "loss_grpo"], 3),
    "sdpo": (["loss_sdpo", "sdpo_margin", "sdpo_pos_logratio", "sdpo_neg_logratio",
              "sdpo_n_neg", "kl"], 0),
}
# undefined in some steps by construction (docs/method.md section 7): may be NaN
MAY_BE_NAN = {"sib_adv_share_on_target_path", "value_return_corr"}


@pytest.mark.parametrize("method", list(OWN_CURVES))
def test_each_other_rl_method_runs_two_steps_with_finite_curves(experiment_after_sft, method):
    cfg = str(experiment_after_sft / "cfg.yaml")
    assert main(["rl", cfg, "--method", method, "run.num_threads=1"]) == 0
    run = experiment_after_sft / "runs" / "toy" / method / "seed0"
    records = [json.loads(line) for line in (run / "rl_log.jsonl").read_text().splitlines()]
    own, warmup = OWN_CURVES[method]
    assert len(records) == 2 + warmup
    for rec in records[warmup:]:
        for key in own:
            assert key in rec, (method, key)
        for key, value in rec.items():
            if isinstance(value, float) and key not in MAY_BE_NAN:
                assert math.isfinite(value), (method, key, value)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == method and 0.0 <= metrics["metrics"]["HR@10"] <= 1.0
    if method == "dapo":
        assert all(0.0 <= r["dapo_kept_share"] <= 1.0 for r in records)


def test_a_config_override_of_a_preset_field_is_refused_not_dropped():
    from vstar.core.errors import InputError
    from vstar.experiments.methods import preset_rl_config
    from vstar.train.config import RLConfig

    preset = {"decoder": "beam", "kl_beta": 0.0, "clip_eps_high": 0.28}
    merged = preset_rl_config(RLConfig(), "dapo", preset)            # defaults: the preset wins
    assert merged.kl_beta == 0.0 and merged.decoder == "beam"
    same = preset_rl_config(RLConfig(kl_beta=0.0), "dapo", preset)    # agrees with the preset
    assert same.kl_beta == 0.0
    with pytest.raises(InputError, match=r"rl.kl_beta=0.002 conflicts with method 'dapo'"):
        preset_rl_config(RLConfig(kl_beta=2e-3), "dapo", preset)
