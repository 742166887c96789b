"""``sft.rl_holdout``: SFT leaves each user's last training rows out, RL draws only from them,
and an RL run refuses a generator trained with another hold-out (docs/method.md, "RL rows held
out from SFT")."""

import json
import logging

from vstar.data.splits import hold_out_last
from vstar.experiments.cli import main
from vstar.experiments.config import load_config
from vstar.experiments.pipeline import prepare_data


def test_rl_draws_only_rows_sft_never_saw(experiment, caplog, capsys):
    cfg = str(experiment / "cfg.yaml")
    splits = prepare_data(load_config(cfg))[1]
    sft_rows, held = hold_out_last(splits.train, 1)
    assert 0 < len(held) < len(splits.train)
    with caplog.at_level(logging.INFO, logger="vstar.experiments.methods"):
        assert main(["run", cfg, "run.methods=[sft]", "sft.rl_holdout=1",
                     "run.num_threads=1"]) == 0
    assert (f"sft.rl_holdout=1: {len(sft_rows)} training rows for SFT, {len(held)} held out "
            "for RL") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vstar.experiments.methods"):
        assert main(["rl", cfg, "--method", "grpo_beam", "sft.rl_holdout=1", "rl.steps=1",
                     "run.num_threads=1"]) == 0
    assert f"RL draws from the {len(held)} training rows held out from SFT" in caplog.text
    # the generator was trained with rl_holdout=1: RL over every training row is refused
    assert main(["rl", cfg, "--method", "grpo_beam", "rl.steps=1", "run.num_threads=1",
                 "run.overwrite=true"]) == 2
    assert "sft.rl_holdout" in capsys.readouterr().err


def test_as_names_the_run_folder_and_results_of_a_variant(experiment, capsys):
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft]", "run.num_threads=1"]) == 0
    assert main(["rl", cfg, "--method", "grpo_beam", "--as", "grpo_beam_lr1e-3", "rl.lr=1e-3",
                 "rl.steps=1", "run.num_threads=1"]) == 0
    runs = experiment / "runs" / "toy"
    assert not (runs / "grpo_beam").exists()
    run = runs / "grpo_beam_lr1e-3" / "seed0"
    record = json.loads(next(run.glob("**/metrics.json")).read_text())
    assert record["method"] == "grpo_beam_lr1e-3" and record["extra"]["recipe"] == "grpo_beam"
    assert json.loads((run / "rl_config.json").read_text())["lr"] == 1e-3
    for bad, why in ((["--method", "grpo_beam", "vstar", "--as", "x"], "one run folder"),
                     (["--method", "grpo_beam", "--as", "vstar"], "another method"),
                     (["--method", "grpo_beam", "--as", "a/b"], "folder name")):
        assert main(["rl", cfg, *bad, "rl.steps=1"]) == 2
        assert why in capsys.readouterr().err
