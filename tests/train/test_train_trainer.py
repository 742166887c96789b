import numpy as np
import pytest
import torch

from vstar.data.types import SplitRows
from vstar.decode import SidTrie
from vstar.decode.scoring import score_candidates
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.train.rl import RLConfig, RLTrainer
from vstar.decode.ved import VEDConfig


def _toy(seed=0, n_items=30, sizes=(4, 4, 4)):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, 3)
    codes = grid[rng.choice(len(grid), n_items, replace=False)]
    vocab = SidVocab(list(sizes))
    trie = SidTrie(codes, list(sizes))
    torch.manual_seed(seed)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=32, dropout=0.0), vocab_size=vocab.size, block_size=64)
    hist = [rng.integers(0, n_items, size=rng.integers(1, 5)) for _ in range(40)]
    # the logged next item is a fixed function of the last history item
    rows = SplitRows(np.arange(40), hist, np.asarray([(h[-1] * 7 + 3) % n_items for h in hist]))
    emb = rng.normal(size=(n_items, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return vocab, trie, model, rows, emb


def _target_logp(trainer, rows):
    tokens, mask = trainer.vocab.encode_histories(rows.histories, trainer.trie.codes)
    codes = trainer.trie.codes[torch.as_tensor(rows.targets)][:, None, :]
    with torch.no_grad():
        return score_candidates(trainer.policy.eval(), trainer.vocab, trainer.trie, tokens, mask,
                                codes).log_probs.sum(-1).mean().item()


@pytest.mark.parametrize("decoder", ["beam", "sample", "ved"])
def test_rl_step_logs_every_named_curve_and_respects_the_budget(decoder):
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder=decoder, n_candidates=8, steps=2, users_per_step=6, log_every=1,
                   ved=VEDConfig(init_beam=2))
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    rec = trainer.step()
    for key in ("reward_mean", "reward_std", "adv_std", "sibling_groups_with_signal", "kl",
                "loss_value", "unique_items_per_G", "unique_codes_l1", "target_in_group",
                "decode_forward_tokens_per_user", "step_seconds", "loss_sib"):
        assert key in rec, key
    assert rec["decode_forward_tokens_per_user"] <= (vocab.n_levels - 1) * 8
    assert 0 < rec["unique_items_per_G"] <= 1
    assert ("root_widenings_per_user" in rec) == (decoder == "ved")    # VEDResult.root_widenings


def test_grpo_with_beam_candidates_raises_the_logged_items_probability():
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder="sample", n_candidates=16, steps=40, users_per_step=40, lr=3e-3,
                   warmup_steps=1, schedule="constant", sibling=True, value_loss=True,
                   reward="rule", kl_beta=0.0)
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    before = _target_logp(trainer, rows)
    trainer.train(progress=False)
    after = _target_logp(trainer, rows)
    assert after > before + 0.4, (before, after)
    assert trainer.history[-1]["reward_mean"] > trainer.history[0]["reward_mean"] + 0.2


def test_checkpoint_resume_continues_exactly(tmp_path):
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder="sample", n_candidates=4, steps=4, users_per_step=5, lr=1e-3)
    a = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    a.train(progress=False)
    _, _, model_b, _, _ = _toy()
    b = RLTrainer(model_b, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    b.step()
    b.step()                                              # interrupted after 2 of 4 steps
    b.save(tmp_path / "state.safetensors")
    _, _, model_c, _, _ = _toy()
    c = RLTrainer(model_c, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    c.load(tmp_path / "state.safetensors")
    c.train(progress=False)
    for (k, pa), pc in zip(a.policy.state_dict().items(), c.policy.state_dict().values()):
        assert torch.allclose(pa, pc, atol=1e-6), k


def test_first_step_starts_on_policy_even_with_dropout():
    vocab, trie, _, rows, emb = _toy()
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=32, dropout=0.3), vocab_size=vocab.size, block_size=64)
    trainer = RLTrainer(model, vocab, trie, rows, RLConfig(decoder="beam", n_candidates=4,
                        users_per_step=6), max_history=5, item_emb=emb)
    rec = trainer.step()
    assert rec["kl"] < 1e-6                    # pi == pi_ref before the first update
    assert abs(rec["grpo_ratio_mean"] - 1.0) < 1e-6


def test_value_head_trains_on_id_only_data_with_code_overlap():
    vocab, trie, model, rows, _ = _toy()
    cfg = RLConfig(decoder="ved", n_candidates=8, steps=3, users_per_step=8, value_lr=1e-2,
                   ved=VEDConfig(init_beam=2))
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=None)
    losses = [trainer.step()["loss_value"] for _ in range(3)]
    assert trainer.prefix_emb is None and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
