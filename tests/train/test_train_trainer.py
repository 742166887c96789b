import dataclasses
import math

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.decode.ved import value_guided_decode
from vstar.train.advantages import grpo_advantages

from vstar.data.types import SplitRows
from vstar.decode import SidTrie
from vstar.decode.scoring import score_candidates
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.train.rl import RLBatch, RLConfig, RLTrainer
from vstar.decode.ved import VEDConfig
from vstar.model import ValueHead, ValueHeadConfig
from vstar.model.value import state_log_probs


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
                   value_warmup_steps=1, value_diag_every=1, ved=VEDConfig(init_beam=2))
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    warm = trainer.step()                              # value warm-up: the value loss only
    assert warm["value_warmup"] == 1.0 and "loss_value" in warm and "loss_grpo" not in warm
    assert warm["grad_norm_policy"] == 0.0 and warm["grad_norm_value"] > 0
    rec = trainer.step()
    for key in ("reward_mean", "reward_std", "adv_std", "sibling_groups_with_signal", "kl",
                "loss_value", "unique_items_per_G", "unique_codes_l1", "target_in_group",
                "decode_forward_tokens_per_user", "step_seconds", "loss_sib",
                "grad_norm_policy", "grad_norm_value", "sib_adv_mass",
                "sib_adv_mass_on_target_path", "sib_adv_share_on_target_path", "value_in_ved",
                "value_return_corr", "vdiag_pct_v", "vdiag_pct_logp", "vdiag_rank_v_l1",
                "vdiag_rank_logp_l2", "vdiag_children_l1"):
        assert key in rec, key
    assert rec["value_warmup"] == 0.0 and rec["grad_norm_policy"] > 0
    assert rec["decode_forward_tokens_per_user"] <= (vocab.n_levels - 1) * 8
    assert 0 < rec["unique_items_per_G"] <= 1
    assert 1 <= rec["vdiag_rank_v_l1"] <= rec["vdiag_children_l1"]
    assert 0 <= rec["vdiag_pct_logp"] <= 1
    assert ("root_widenings_per_user" in rec) == (decoder == "ved")    # VEDResult.root_widenings


def test_grpo_with_beam_candidates_raises_the_logged_items_probability():
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder="sample", n_candidates=16, steps=40, users_per_step=40, lr=3e-3,
                   warmup_steps=1, schedule="constant", sibling=True, value_loss=True,
                   reward="rule", kl_beta=0.0, value_warmup_steps=0)
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
                        users_per_step=6, value_warmup_steps=0), max_history=5, item_emb=emb)
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


# --------------------------------------------------------------------------- issue 8 (parts 2-4)


def _one_batch(trainer, n_users=8):
    """propose + rewards + advantages of one step, as ``RLTrainer.step`` computes them."""
    b = trainer.propose(np.arange(n_users))
    rewards = trainer.rewards(b)
    adv = grpo_advantages(rewards, b.valid, trainer.cfg.adv_eps)
    sib = trainer.sibling_advantages(b, rewards)
    return b, adv, sib, trainer._dense(b.codes, b.valid, b)


def _policy_grads(trainer, batch, drop=()):
    terms, _, _ = trainer.losses(*batch, None)
    terms = {k: v for k, v in terms.items() if k not in drop}
    norms = trainer.backward(terms)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for p in trainer.policy.parameters()]
    head = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in trainer.value_head.parameters()]
    return grads, head, norms


def _norm(grads):
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


@pytest.mark.parametrize("to_backbone", [False, True])
def test_a_huge_value_loss_does_not_scale_the_policy_gradient(to_backbone):
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder="sample", n_candidates=8, value_warmup_steps=0,
                   reward="prefix_partial_credit", value_grad_to_backbone=to_backbone)
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    batch = _one_batch(trainer)
    pi_only, _, (norm_p0, _) = _policy_grads(trainer, batch, drop=("value",))
    assert norm_p0 > 0
    cfg.w_value = 1e6                                     # the value loss's gradient x 1e6
    huge, head, (norm_p, norm_v) = _policy_grads(trainer, batch)
    assert norm_v > 1e3 * cfg.value_grad_clip             # far above its clip ...
    assert _norm(head) <= cfg.value_grad_clip * (1 + 1e-4)  # ... and clipped on its own
    assert abs(norm_p - norm_p0) < 1e-6 * max(1.0, norm_p0)
    if not to_backbone:                                   # the policy's gradient is untouched
        for a, b in zip(pi_only, huge):
            assert torch.allclose(a, b, atol=1e-8)
    else:    # the backbone gets the policy's clipped gradient + at most value_grad_clip more
        diff = _norm([b - a for a, b in zip(pi_only, huge)])
        assert 1e-6 < diff <= cfg.value_grad_clip * (1 + 1e-4)
    # a joint clip (the old behaviour) would have shrunk the policy's share by about 1e-6
    assert norm_p0 > cfg.grad_clip * 1e-3


@pytest.mark.parametrize("to_backbone", [False, True])
def test_the_value_gradient_reaches_the_backbone_only_when_asked(to_backbone):
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder="ved", n_candidates=8, value_warmup_steps=0, value_gate="always",
                   reward="prefix_partial_credit", value_grad_to_backbone=to_backbone,
                   ved=VEDConfig(init_beam=2))
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    batch = _one_batch(trainer)
    without, _, _ = _policy_grads(trainer, batch, drop=("value",))
    with_value, _, _ = _policy_grads(trainer, batch)
    changed = any(not torch.allclose(a, b, atol=1e-9) for a, b in zip(without, with_value))
    assert changed == to_backbone
    # a full step moves the backbone through the value loss alone when asked: with zero
    # advantages and pi == pi_ref the policy loss has no gradient
    cfg2 = RLConfig(decoder="beam", n_candidates=4, value_warmup_steps=0, sibling=False,
                    value_grad_to_backbone=to_backbone, value_updates_per_step=1,
                    value_gate="always")
    _, _, model2, _, _ = _toy()
    tr2 = RLTrainer(model2, vocab, trie, rows, cfg2, max_history=5, item_emb=emb,
                    reward_fn=lambda ctx: torch.zeros(ctx.shape))
    before = [p.detach().clone() for p in tr2.policy.parameters()]
    rec = tr2.step()
    moved = any(not torch.equal(a, p) for a, p in zip(before, tr2.policy.parameters()))
    assert moved == to_backbone and (rec["grad_norm_value"] > 0)


def _planted(seed=0):
    """_toy, but each user's target sits under a first code that is a function of the user's
    last history item, so a value head can only rank it by reading the history and the code."""
    vocab, trie, model, rows, emb = _toy(seed)
    codes = trie.codes.numpy()
    targets = []
    for h in rows.histories:
        pool = np.flatnonzero(codes[:, 0] == (codes[h[-1], 0] + 1) % 4)
        targets.append(pool[(h[-1] * 7) % len(pool)])
    return vocab, trie, model, SplitRows(rows.users, rows.histories, np.asarray(targets)), emb


@pytest.mark.parametrize("value_lr", [1e-3, 0.0])
def test_the_value_head_learns_a_planted_problem_and_only_then_steers_ved(value_lr):
    """Default settings except the warm-up length: the diagnostic's rank of the target's prefix
    by V must improve well beyond chance, and VED must switch V in only after that. A head that
    never learns (value_lr 0) fails both, so the check can fail."""
    vocab, trie, model, rows, emb = _planted()
    cfg = RLConfig(steps=1, value_warmup_steps=40, value_lr=value_lr)
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    trainer.train(progress=False)
    diags = [h for h in trainer.history if "vdiag_pct_v" in h]
    assert [h["step"] for h in diags] == [1, 11, 21, 31, 41]   # before the updates 0, 10, ...
    first, last = diags[0]["vdiag_pct_v"], diags[-1]["vdiag_pct_v"]
    assert abs(first - 0.5) < 0.05                       # untrained: about chance
    assert all(h["value_in_ved"] == 0.0 for h in trainer.history[:40])   # warm-up: V not used
    learned = last < first - 0.1 and last < 0.5 - cfg.value_gate_margin
    assert learned == (value_lr > 0), (first, last)
    assert trainer.history[-1]["value_in_ved"] == float(value_lr > 0)
    assert trainer.value_in_ved_since == (40 if value_lr > 0 else -1)   # 0-based step index
    # every step trained V on the tree's extra paths too (value_targets "tree")
    assert all(h["value_paths_tree_per_user"] > 0 for h in trainer.history)


def test_ved_decodes_with_a_zero_value_until_the_gate_opens():
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(n_candidates=8, value_warmup_steps=0, ved=VEDConfig(init_beam=2))
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    with torch.no_grad():
        for p in trainer.value_head.parameters():
            p.normal_(0, 1.0)                            # a value with opinions
    idx = np.arange(8)
    tokens, mask = trainer._encode(idx)
    zero = value_guided_decode(model, lambda h: torch.zeros(h.shape[:-1]), vocab, trie,
                               tokens, mask, 8, cfg.ved)
    with_v = value_guided_decode(model, trainer.value_head, vocab, trie, tokens, mask, 8,
                                 cfg.ved)
    assert not torch.equal(zero.items, with_v.items)
    assert not trainer.value_in_ved and torch.equal(trainer.propose(idx).items, zero.items)
    trainer.value_in_ved_since = 0
    assert torch.equal(trainer.propose(idx).items, with_v.items)


def test_the_value_gate_survives_a_checkpoint(tmp_path):
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(decoder="sample", n_candidates=4, value_warmup_steps=0)
    a = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    a.value_in_ved_since = 7
    a.save(tmp_path / "s.safetensors")
    _, _, model_b, _, _ = _toy()
    b = RLTrainer(model_b, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    assert b.value_in_ved_since == -1
    b.load(tmp_path / "s.safetensors")
    assert b.value_in_ved_since == 7


@pytest.mark.parametrize("field, value", [
    ("sibling_reward", "nope"), ("sibling_std_floor", -1.0), ("value_targets", "all"),
    ("value_gate", "sometimes"), ("grad_clip", 0.0), ("value_grad_clip", -1.0),
    ("value_warmup_steps", -1), ("value_updates_per_step", 0), ("value_diag_every", 0)])
def test_bad_rl_settings_name_their_field(field, value):
    vocab, trie, model, rows, emb = _toy()
    cfg = dataclasses.replace(RLConfig(), **{field: value})
    with pytest.raises(InputError, match=f"rl.{field}"):
        RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)


# --------------------------------------------------------------------------- sibling rewards

# Catalogue of a hand-built tree: target T = (0,0,0); in decoder order the group holds
# A = (0,0,1) (T's sibling), T, (0,1,0), then two items under the off-path parent (1,0).
SIB_CODES = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1]])
SIB_GROUP = [1, 0, 2, 3, 4]                     # items in decoder order (position 0 = best)


def _sibling_trainer(**overrides):
    sizes = [2, 2, 2]
    vocab, trie = SidVocab(sizes), SidTrie(SIB_CODES, sizes)
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16,
                                     dropout=0.0), vocab_size=vocab.size, block_size=32)
    rows = SplitRows(np.arange(1), [np.array([2])], np.array([0]))
    cfg = RLConfig(**overrides)            # default reward: rule + rank-aware penalty
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5)
    items = torch.tensor([SIB_GROUP])
    codes = trie.codes[items]
    tokens, mask = trainer._encode(np.arange(1))
    b = RLBatch(tokens, mask, items, codes, torch.ones(1, 5, dtype=torch.bool),
                torch.tensor([0]), trie.codes[torch.tensor([0])], 0)
    return trainer, b


def test_sibling_advantages_follow_the_target_at_default_settings():
    trainer, b = _sibling_trainer()
    rewards = trainer.rewards(b)
    # rule + rank penalty: T = 1; the wrong ones get -(1/log2(k+2)) / Z at position k
    z = sum(1 / math.log2(k + 2) for k in range(5))
    assert torch.allclose(rewards[0, [3, 4]],
                          torch.tensor([-1 / math.log2(5) / z, -1 / math.log2(6) / z]))
    sib = trainer.sibling_advantages(b, rewards)
    a = sib.adv[0]                                         # [G, L] in decoder order
    # depth 1 (root): first code 0 (T's path) > first code 1
    assert a[1, 0] > 0.9 and a[3, 0] < -0.9
    # depth 2, parent (0): (0,0) holds T -> positive; (0,1) negative
    assert a[1, 1] > 0.9 and a[2, 1] < -0.9
    # depth 3, parent (0,0): T gets the positive advantage, its sibling A the negative one
    assert a[1, 2] > 0.9 and a[0, 2] < -0.9
    # off-path parent (1,0): near-equal rewards (rank noise) -> near-zero advantages
    assert sib.mask[0, 3, 2] and sib.mask[0, 4, 2]       # still a branching decision
    assert a[3, 2].abs() < 0.05 and a[4, 2].abs() < 0.05
    # the logged share: all of the mass sits on the target's path
    rec = trainer._step_record(b, rewards, grpo_advantages(rewards, b.valid), sib, {}, 0.0, 0.0)
    assert rec["sib_adv_share_on_target_path"] == pytest.approx(1.0)


def test_sibling_advantages_on_the_step_reward_turn_rank_noise_into_plus_minus_one():
    """The paper's choice, kept as the ablation ``sibling_reward: same``."""
    trainer, b = _sibling_trainer(sibling_reward="same")
    rewards = trainer.rewards(b)
    sib = trainer.sibling_advantages(b, rewards)
    a = sib.adv[0]
    # parent (1,0): a gap of 0.015 between two non-targets becomes about +-1, and the
    # higher-ranked sibling (position 3) gets the negative advantage
    assert a[3, 2] < -0.95 and a[4, 2] > 0.95
    rec = trainer._step_record(b, rewards, grpo_advantages(rewards, b.valid), sib, {}, 0.0, 0.0)
    assert rec["sib_adv_share_on_target_path"] < 0.85
    # a floor on the sibling std shrinks the same gap to about gap / (2 * floor)
    trainer, b = _sibling_trainer(sibling_reward="same", sibling_std_floor=0.1)
    a = trainer.sibling_advantages(b, trainer.rewards(b)).adv[0]
    assert 0 < a[4, 2] < 0.1 and -0.1 < a[3, 2] < 0


@pytest.mark.parametrize("gate, pct_v, pct_logp, opens", [
    ("chance", 0.39, 0.05, True), ("chance", 0.41, 0.05, False),
    ("logp", 0.39, 0.05, False), ("logp", 0.04, 0.15, True)])
def test_the_value_gate_compares_v_with_chance_or_log_pi_by_the_margin(gate, pct_v, pct_logp,
                                                                       opens):
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(value_warmup_steps=2, value_gate=gate)          # margin 0.1
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    diag = {"vdiag_pct_v": pct_v, "vdiag_pct_logp": pct_logp}
    trainer._update_gate(diag)
    assert trainer.value_in_ved_since == -1            # never during the value warm-up
    trainer.step_idx = 2
    trainer._update_gate(diag)
    assert trainer.value_in_ved == opens and trainer.value_in_ved_since == (2 if opens else -1)
    always = RLTrainer(model, vocab, trie, rows, dataclasses.replace(cfg, value_gate="always"),
                       max_history=5, item_emb=emb)
    assert always.value_in_ved                         # the paper: V in VED from the start


def test_every_node_ved_evaluated_gets_a_value_target(monkeypatch):
    import vstar.train.rl as rl_module
    seen = {}

    def spy(*args, **kwargs):
        seen["res"] = value_guided_decode(*args, **kwargs)
        return seen["res"]

    monkeypatch.setattr(rl_module, "value_guided_decode", spy)
    vocab, trie, model, rows, emb = _toy()
    trainer = RLTrainer(model, vocab, trie, rows, RLConfig(), max_history=5, item_emb=emb)
    b = trainer.propose(np.arange(12))
    tree = seen["res"].tree
    paths = torch.cat([b.codes, b.tree_codes], 1)                     # [B, G + P, L]
    live = torch.cat([b.valid, b.tree_valid], 1)
    n_nodes = 0
    for u in range(paths.shape[0]):
        for m in range(int(tree.n_nodes[u])):
            d = int(tree.depth[u, m])
            if not tree.evaluated[u, m] or d == 0:
                continue
            prefix = tree.codes[u, m, :d]
            through = (paths[u, :, :d] == prefix).all(1) & live[u]
            assert through.any(), (u, prefix.tolist())
            n_nodes += 1
    assert b.tree_valid.sum() > 0 and n_nodes > b.valid.sum()   # more states than candidates
    # and those paths reach the TD loss
    batch = (b, grpo_advantages(trainer.rewards(b), b.valid), trainer.sibling_advantages(
        b, trainer.rewards(b)), trainer._dense(b.codes, b.valid, b))
    _, stats, _ = trainer.losses(*batch, None)
    assert stats["value_paths_tree_per_user"] == float(b.tree_valid.sum()) / 12


def test_the_policy_prior_makes_v_rank_like_log_pi_before_training():
    # rl.value_head.prior=policy: V(s) = w * pi(prefix) + MLP(h) with the MLP's last layer at 0,
    # so the untrained head ranks the target's prefix among its siblings exactly where log pi
    # does (the diagnostic): the gate then opens as soon as log pi beats chance by the margin
    vocab, trie, model, rows, emb = _toy()
    cfg = RLConfig(n_candidates=8, value_warmup_steps=0, ved=VEDConfig(init_beam=2),
                   value_head=ValueHeadConfig(prior="policy", init_std=0.0))
    trainer = RLTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb)
    diag = trainer.value_diagnostic(np.arange(16))
    for d in (1, 2):
        assert diag[f"vdiag_pct_v_l{d}"] == pytest.approx(diag[f"vdiag_pct_logp_l{d}"], abs=1e-9)
    # without the prior the same untrained head ranks by its MLP alone, not by log pi
    plain = RLTrainer(model, vocab, trie, rows,
                      dataclasses.replace(cfg, value_head=ValueHeadConfig(init_std=0.1)),
                      max_history=5, item_emb=emb)
    other = plain.value_diagnostic(np.arange(16))
    assert other["vdiag_pct_v"] != pytest.approx(other["vdiag_pct_logp"], abs=1e-3)


def test_the_value_prior_reads_the_prefix_probability_and_vED_passes_it():
    head = ValueHead(8, ValueHeadConfig(prior="policy", init_std=0.0))
    h = torch.randn(5, 8)
    lp = torch.log(torch.tensor([1.0, 0.5, 0.25, 0.1, 0.01]))
    assert torch.allclose(head(h, lp), lp.exp(), atol=1e-6)     # MLP output 0: V = pi(prefix)
    with pytest.raises(ValueError, match="log_prob"):
        head(h)
    lp_grad = lp.clone().requires_grad_(True)
    head(h, lp_grad).sum().backward()
    assert lp_grad.grad is None and head.prior_scale.grad is not None   # the policy is not moved
    # state log-probs: s_1 = 0, s_l = the first l-1 levels
    assert state_log_probs(torch.tensor([[-1.0, -2.0, -3.0]])).tolist() == [[0.0, -1.0, -3.0]]
    # VED hands each node's prefix log-probability to such a head: V = pi(prefix) exactly
    vocab, trie, model, rows, emb = _toy()
    seen = []

    class Probe(torch.nn.Module):
        reads_log_prob = True

        def forward(self, hidden, log_prob):
            seen.append(log_prob.clone())
            return log_prob.exp()

    trainer = RLTrainer(model, vocab, trie, rows, RLConfig(n_candidates=8), max_history=5,
                        item_emb=emb)
    tokens, mask = trainer._encode(np.arange(4))
    res = value_guided_decode(model, Probe(), vocab, trie, tokens, mask, 8, VEDConfig(init_beam=2))
    assert seen[0].tolist() == [0.0] * 4                          # the roots: empty prefix
    assert all((x <= 0).all() for x in seen) and any((x < 0).any() for x in seen[1:])
    assert res.items.shape == (4, 8)
