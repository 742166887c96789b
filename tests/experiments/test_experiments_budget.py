"""The budget curve of an RL run folder: loading its generator + value head, ``vstar budget``."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vstar.core import checkpoint
from vstar.core.errors import InputError
from vstar.decode import VEDConfig
from vstar.experiments.budget import load_rl_run
from vstar.experiments.cli import main
from vstar.experiments.config import load_config, to_container
from vstar.model import ModelConfig, SidGenerator, SidVocab, ValueHead, ValueHeadConfig
from vstar.model.generator import save_generator
from vstar.sid import save_index_json
from vstar.sid.types import SemanticIds
from vstar.testing import random_catalogue
from vstar.train.config import RLConfig

SIZES = (4, 5, 3)


def _catalogue(n_items=40, sizes=SIZES, seed=0):
    return random_catalogue(n_items, sizes, seed)


def _fake_rl_run(tmp_path, with_generator=True):
    """A tiny experiment: table data, SIDs in artifacts/, an RL run folder with its weights."""
    n_users, n_items, per_user = 10, 30, 6
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        for t in range(per_user):                    # every item is used: 3u + t covers 0..32
            lines.append(f"u{u},i{(3 * u + t) % n_items},{t}")
    csv = tmp_path / "inter.csv"
    csv.write_text("\n".join(lines) + "\n")
    exp = tmp_path / "runs" / "toy"
    run_dir = exp / "vstar" / "seed0"
    run_dir.mkdir(parents=True)
    cfg = load_config(None, ["data.format=table", f"data.path={csv}", "data.max_history=5",
                             "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.history=codes",
                             "run.name=toy", f"run.out_dir={tmp_path / 'runs'}",
                             "eval.ks=[1,5]", "eval.batch_size=4", "run.num_threads=1"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    codes = _catalogue(n_items=n_items)
    sids = SemanticIds(codes, list(SIZES))
    (exp / "artifacts").mkdir()
    save_index_json(exp / "artifacts" / "sid.index.json", sids, [f"i{i}" for i in range(n_items)])
    (exp / "artifacts" / "sid_report.json").write_text(json.dumps({"codebook_sizes": list(SIZES)}))
    vocab = SidVocab(list(SIZES))
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=32, dropout=0.0), vocab_size=vocab.size, block_size=1 + 6 * 3)
    head = ValueHead(32, ValueHeadConfig(hidden=16))
    rl_cfg = RLConfig(ved=VEDConfig(init_beam=2), value_head=ValueHeadConfig(hidden=16))
    checkpoint.save_rl_state(run_dir / "rl_state.safetensors", policy=model.state_dict(),
                             value_head=head.state_dict(), optimizer_state={},
                             sampler_rng=torch.Generator().get_state(), step=1,
                             numpy_rng=np.random.default_rng(0).bit_generator.state,
                             lr_schedule={}, config=dataclasses.asdict(rl_cfg))
    if with_generator:
        save_generator(run_dir / "generator.safetensors", model, vocab)
    return run_dir, model, head, vocab


def test_load_rl_run_restores_generator_value_head_and_config(tmp_path):
    run_dir, model, head, vocab = _fake_rl_run(tmp_path)
    loaded, loaded_head, rl_cfg = load_rl_run(run_dir, vocab)
    assert not loaded.training and not loaded_head.training
    assert loaded.cfg.n_layer == 1 and loaded.block_size == 19
    assert loaded_head.cfg.hidden == 16 and rl_cfg.ved.init_beam == 2
    x = torch.randn(3, 32)
    assert torch.equal(loaded_head(x), head.eval()(x))
    assert torch.equal(loaded.wte.weight, model.wte.weight)
    with pytest.raises(InputError, match="codebooks"):
        load_rl_run(run_dir, SidVocab([4, 5, 4]))
    with pytest.raises(InputError, match="no RL state"):
        load_rl_run(tmp_path, vocab)


def test_a_checkpoint_of_another_kind_is_a_clear_error(tmp_path):
    run_dir, model, head, vocab = _fake_rl_run(tmp_path)
    with pytest.raises(InputError, match="expected a 'generator' checkpoint, found a 'rl_state'"):
        checkpoint.load_generator(run_dir / "rl_state.safetensors")


def test_budget_command_writes_json_and_plot(tmp_path, capsys):
    run_dir, *_ = _fake_rl_run(tmp_path)
    out = tmp_path / "results"
    assert main(["budget", str(run_dir), "--widths", "2", "4", "--max-users", "6",
                 "--out-dir", str(out)]) == 0
    stem = "budget_curve_toy_vstar_seed0_test"
    payload = json.loads((out / f"{stem}.json").read_text())
    assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert payload["n_users"] == 6 and payload["widths"] == [2, 4]
    assert payload["ks"] == [1, 5, 10] and payload["ved"]["init_beam"] == 2
    assert payload["run_item_head"] == 0.0 and payload["item_head_fused"] is False
    assert [(r["decoder"], r["width"]) for r in payload["records"]] == \
        [("beam", 2), ("ved", 2), ("beam", 4), ("ved", 4)]
    assert all(r["max_forward_tokens_per_user"] <= r["budget_per_user"]
               for r in payload["records"])
    assert str(out / f"{stem}.json") in capsys.readouterr().out
    assert main(["budget", str(tmp_path), "--out-dir", str(out)]) == 2   # not a run folder


def test_budget_curve_of_a_run_ranked_with_the_item_head_says_it_is_not_fused(tmp_path, caplog):
    """The curve compares the code policy's decoders (beam against VED); a run whose metrics
    fuse the item head gets a warning and a payload that says so."""
    run_dir, *_ = _fake_rl_run(tmp_path)
    path = run_dir / "config.yaml"
    cfg = OmegaConf.load(path)
    cfg.sft.item_loss, cfg.eval.item_head = 1.0, 0.5
    path.write_text(OmegaConf.to_yaml(cfg))
    out = tmp_path / "results"
    assert main(["budget", str(run_dir), "--widths", "2", "--max-users", "4",
                 "--out-dir", str(out)]) == 0
    payload = json.loads((out / "budget_curve_toy_vstar_seed0_test.json").read_text())
    assert payload["run_item_head"] == 0.5 and payload["item_head_fused"] is False
    assert "ranks with the item head (eval.item_head=0.5)" in caplog.text
