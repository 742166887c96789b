"""configs/paper_qwen2.5_1.5b.yaml: the paper's setting loads and validates here (no GPU needed),
holds the paper's hyper-parameters, and a missing model folder or GPU is a clear error."""

import math
from pathlib import Path

import pytest
import torch

from vstar.core.errors import InputError
from vstar.experiments.config import load_config
from vstar.experiments.pipeline import runtime

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "paper_qwen2.5_1.5b.yaml"
SCIENTIFIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "amazon18-scientific"


def test_the_paper_config_loads_with_the_paper_settings():
    cfg = load_config(CONFIG)
    assert (cfg.model.backbone, cfg.model.dtype, cfg.model.history) == ("hf", "bfloat16", "codes")
    assert (cfg.run.device, cfg.run.autocast) == ("cuda", "bf16")
    assert (cfg.sft.lr, cfg.rl.lr, cfg.rl.n_candidates, cfg.rl.kl_beta) == (3e-4, 1e-5, 16, 1e-3)
    assert (cfg.rl.users_per_step, cfg.data.max_history) == (64, 10)
    assert cfg.run.methods == ["sft", "grpo_beam", "vstar"]


def test_a_missing_model_folder_is_an_error_naming_the_field():
    cfg = load_config(CONFIG, ["run.device=cpu", "run.autocast=none"])
    with pytest.raises(InputError, match=r"/path/to/Qwen2.5-1.5B.*field 'model.hf_name_or_path'"):
        runtime(cfg, ["sft"])                       # checked before any data is read
    runtime(cfg, ["grpo_beam"])                     # RL starts from the SFT run's saved folder
    from vstar.model.hf import new_hf_model
    from vstar.model.vocab import SidVocab

    with pytest.raises(InputError, match=r"field 'model.hf_name_or_path'"):
        new_hf_model(cfg.model, SidVocab([256, 256, 256]), cfg.data.max_history)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_without_a_gpu_the_run_stops_at_run_device():
    with pytest.raises(InputError, match=r"field 'run.device'"):
        runtime(load_config(CONFIG))


@pytest.mark.skipif(not (SCIENTIFIC / "Scientific.inter.json").is_file(),
                    reason="needs ../shared/data/amazon18-scientific")
def test_rl_steps_are_two_epochs_over_the_training_users_at_64_per_step(monkeypatch):
    from vstar.experiments.pipeline import prepare_data

    monkeypatch.chdir(CONFIG.parents[1])            # the config's data paths are relative
    cfg = load_config(CONFIG)
    _, splits, _ = prepare_data(cfg)
    users = len(set(splits.train.users.tolist()))
    assert cfg.rl.steps == math.ceil(2 * users / cfg.rl.users_per_step) == 260
