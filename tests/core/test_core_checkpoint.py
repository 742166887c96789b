"""Checkpoints: one writer and one reader per kind, safetensors only, kind checked on read."""

import numpy as np
import pytest
import torch

from vstar.core import checkpoint
from vstar.core.errors import InputError


def test_generator_round_trip_with_metadata_and_tied_weights(tmp_path):
    emb = torch.randn(5, 3)
    state = {"wte.weight": emb, "lm_head.weight": emb, "step": torch.tensor(42)}  # tied
    path = checkpoint.save_generator(tmp_path / "ckpt" / "generator.safetensors", state,
                                     model_config={"n_layer": 1}, vocab_size=5, block_size=7,
                                     codebook_sizes=[2, 1])
    ckpt = checkpoint.load_generator(path)
    assert (ckpt.model_config, ckpt.vocab_size, ckpt.block_size, ckpt.codebook_sizes) == \
        ({"n_layer": 1}, 5, 7, [2, 1])
    assert torch.equal(ckpt.state_dict["wte.weight"], emb)
    assert torch.equal(ckpt.state_dict["lm_head.weight"], emb)
    assert ckpt.state_dict["step"].item() == 42
    assert [p.name for p in path.parent.iterdir()] == ["generator.safetensors"]  # no temp file


def test_rl_state_round_trip_keeps_sections_apart(tmp_path):
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(5)
    path = checkpoint.save_rl_state(
        tmp_path / "rl_state.safetensors", policy={"w": torch.ones(2)},
        value_head={"w": torch.zeros(3)}, optimizer_state={0: {"exp_avg": torch.full((2,), 0.5)}},
        sampler_rng=gen.get_state(), step=7, numpy_rng=rng.bit_generator.state,
        lr_schedule={"last_epoch": 7}, config={"lr": 1e-4})
    state = checkpoint.load_rl_state(path)
    assert torch.equal(state.policy["w"], torch.ones(2))
    assert torch.equal(state.value_head["w"], torch.zeros(3))
    assert torch.equal(state.optimizer_state[0]["exp_avg"], torch.full((2,), 0.5))
    assert torch.equal(state.sampler_rng, gen.get_state())
    assert (state.step, state.numpy_rng, state.lr_schedule, state.config) == \
        (7, rng.bit_generator.state, {"last_epoch": 7}, {"lr": 1e-4})


def test_embeddings_round_trip(tmp_path):
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    checkpoint.save_embeddings(tmp_path / "e.safetensors", emb, model="m")
    back, model = checkpoint.load_embeddings(tmp_path / "e.safetensors")
    np.testing.assert_array_equal(back, emb)
    assert model == "m"


def test_a_checkpoint_of_another_kind_or_no_kind_is_refused(tmp_path):
    from safetensors.torch import save_file

    checkpoint.save_sasrec(tmp_path / "s.safetensors", {"w": torch.ones(1)}, n_items=3,
                           config={})
    with pytest.raises(InputError, match="expected a 'generator' checkpoint, found a 'sasrec'"):
        checkpoint.load_generator(tmp_path / "s.safetensors")
    assert checkpoint.checkpoint_kind(tmp_path / "s.safetensors") == "sasrec"
    save_file({"w": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(InputError, match="not a vstar checkpoint"):
        checkpoint.load_sasrec(tmp_path / "plain.safetensors")


def test_non_safetensors_and_missing_files_are_clear_errors(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"\x80\x04 pickled junk")
    with pytest.raises(InputError, match="model.pt"):
        checkpoint.load_generator(fake)
    with pytest.raises(InputError, match="not found"):
        checkpoint.load_generator(tmp_path / "missing.safetensors")
