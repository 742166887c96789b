"""Other RL methods (docs/method.md "Other RL methods"): GSPO's sequence ratio, DAPO's filter and
asymmetric clip, the TreeRL-style tree advantage, HEPO's process rewards and GAE, S-DPO. Every
value below is computed by hand in the comments."""

import math

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.decode.scoring import score_candidates
from vstar.train.advantages import (gae_advantages, grpo_advantages, hepo_advantages,
                                    hepo_process_rewards, tree_advantages, zero_variance_keep)
from vstar.train.losses import grpo_loss, sdpo_loss
from vstar.train.rl import RLConfig, RLTrainer
from vstar.testing import toy_rl_world

# --------------------------------------------------------------------------- GSPO


def test_gspo_ratio_is_the_geometric_mean_of_the_token_ratios_and_clips_per_item():
    # two candidates of one user, L = 3; log ratios (0.1, -0.2, 0.4) -> mean 0.1 and (.3,.3,.3)
    old = torch.zeros(1, 2, 3)
    new = torch.tensor([[[0.1, -0.2, 0.4], [0.3, 0.3, 0.3]]]).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = grpo_loss(new, old, old, adv, valid, clip_eps=0.2, kl_beta=0.0,
                            ratio_level="sequence")
    s0, s1 = math.exp(0.1), math.exp(0.3)
    assert stats["ratio_mean"] == pytest.approx((s0 + s1) / 2, rel=1e-6)
    # cand 0: A = 1, s0 = 1.105 inside [0.8, 1.2] -> -s0; cand 1: A = -1, min(-s1, -1.2) = -s1
    assert loss.item() == pytest.approx((-s0 + s1) / 2, rel=1e-6)
    loss.backward()
    # d/d new_l of -s0 * A / 2 = -s0 / (3 * 2) for every token of cand 0 (the geometric mean
    # spreads the gradient evenly); cand 1 is unclipped on the pessimistic side: +s1 / 6
    assert torch.allclose(new.grad[0, 0], torch.full((3,), -s0 / 6))
    assert torch.allclose(new.grad[0, 1], torch.full((3,), s1 / 6))


def test_a_sequence_ratio_outside_the_range_stops_the_whole_item_unlike_token_ratios():
    # log ratios (0.9, 0, 0): one token far out, mean 0.3 -> s = 1.35 > 1.2 with A > 0
    old = torch.zeros(1, 1, 3)
    adv, valid = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    grads = {}
    for level in ("token", "sequence"):
        new = torch.tensor([[[0.9, 0.0, 0.0]]]).requires_grad_(True)
        loss, stats = grpo_loss(new, old, old, adv, valid, 0.2, 0.0, ratio_level=level)
        loss.backward()
        grads[level] = new.grad[0, 0]
    assert torch.allclose(grads["token"], torch.tensor([0.0, -1 / 3, -1 / 3]))  # 2 tokens live
    assert torch.equal(grads["sequence"], torch.zeros(3))                         # all clipped


# --------------------------------------------------------------------------- DAPO


def test_zero_variance_groups_are_dropped_and_the_kept_share_is_right():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0],     # spread: kept
                            [0.0, 0.0, 0.0, 0.0],     # all tie: dropped
                            [0.5, 0.5, 9.0, 0.0],     # ties among the valid ones: dropped
                            [1.0, 0.0, 0.0, 0.0]])    # one valid candidate: dropped
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False],
                          [True, False, False, False]])
    keep = zero_variance_keep(rewards, valid)
    assert keep.tolist() == [True, False, False, False]
    assert float(keep.sum()) / 4 == 0.25
    # a dropped user has zero advantage; in the loss it only diluted the mean over users
    adv = grpo_advantages(rewards, valid)
    old = torch.full((4, 4, 2), -1.0)
    kept_loss, _ = grpo_loss(old.clone(), old, old, adv, valid & keep[:, None], kl_beta=0.0)
    all_loss, _ = grpo_loss(old.clone(), old, old, adv, valid, kl_beta=0.0)
    alone, _ = grpo_loss(old[:1].clone(), old[:1], old[:1], adv[:1], valid[:1], kl_beta=0.0)
    assert kept_loss.item() == pytest.approx(alone.item())
    assert all_loss.item() == pytest.approx(alone.item() / 4)


def test_asymmetric_clip_lets_a_positive_ratio_grow_further():
    # ratio 1.25 with A = +1: clipped by [0.8, 1.2], not by [0.8, 1.28];
    # ratio 0.75 with A = -1: clipped at 0.8 by both (the low side is unchanged)
    old = torch.zeros(1, 2, 1)
    adv = torch.tensor([[1.0, -1.0]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    out = {}
    for high in (None, 0.28):
        new = torch.log(torch.tensor([[[1.25], [0.75]]])).requires_grad_(True)
        loss, stats = grpo_loss(new, old, old, adv, valid, 0.2, 0.0, clip_eps_high=high)
        loss.backward()
        out[high] = (new.grad.flatten().tolist(), stats)
    assert out[None][0] == [0.0, 0.0]
    assert out[0.28][0][0] == pytest.approx(-1.25 / 2) and out[0.28][0][1] == 0.0
    assert out[None][1]["clip_frac_high"] == 0.5 and out[None][1]["clip_frac_low"] == 0.5
    assert out[0.28][1]["clip_frac_high"] == 0.0 and out[0.28][1]["clip_frac"] == 0.5


# --------------------------------------------------------------------------- TreeRL


def test_tree_advantages_on_a_hand_built_four_candidate_tree():
    # L = 2. a = (0,0): 1, b = (0,1): 0, c = (0,2): 0.5, d = (1,0): 0, e = invalid (ignored).
    # V(root) = 1.5 / 4 = .375; V(0) = 1.5 / 3 = .5 (3 leaves); V(1) = 0 (1 leaf).
    codes = torch.tensor([[[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]])
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.0, 7.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    # a second user with the same codes and other rewards: its own tree
    adv = tree_advantages(torch.cat([codes, codes]), torch.cat([rewards, 1 - rewards]),
                          torch.cat([valid, valid]))
    depth1_0 = ((0.5 - 0.375) + (0.5 - 0.375)) / math.sqrt(3)
    depth1_1 = (0 - 0.375) + (0 - 0.375)
    expected = torch.tensor([[depth1_0, (1 - .5) + (1 - .375)],
                             [depth1_0, (0 - .5) + (0 - .375)],
                             [depth1_0, (.5 - .5) + (.5 - .375)],
                             [depth1_1, (0 - 0) + (0 - .375)],
                             [0.0, 0.0]])
    assert torch.allclose(adv[0], expected, atol=1e-6)
    # user 1: rewards 1 - r -> every advantage of a valid candidate flips its sign
    assert torch.allclose(adv[1], -expected, atol=1e-6)


# --------------------------------------------------------------------------- HEPO


def _hepo_case():
    """One user, K = 3 codes per level, L = 3; history (0,0,0) (0,0,1) (0,1,0) (1,2,0) plus a
    padded slot; candidates (0,0,2), (1,2,0), (0,1,0)."""
    cand = torch.tensor([[[0, 0, 2], [1, 2, 0], [0, 1, 0]]])
    hist = torch.tensor([[[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 2, 0], [0, 0, 0]]])
    hist_valid = torch.tensor([[True, True, True, True, False]])
    allowed = torch.zeros(1, 3, 3, 3, dtype=torch.bool)
    allowed[0, :, 0] = True                                  # root: codes 0, 1, 2
    allowed[0, 0, 1, :2] = True                              # under (0): codes 0, 1
    allowed[0, 2, 1, :2] = True
    allowed[0, 1, 1, 2] = True                               # under (1): code 2 only
    allowed[0, :, 2, :] = True                               # last level: unused
    return cand, hist, hist_valid, allowed


def test_hepo_process_rewards_by_hand():
    cand, hist, hist_valid, allowed = _hepo_case()
    r = hepo_process_rewards(cand, torch.ones(1, 3, dtype=torch.bool), hist, hist_valid,
                             allowed, alpha=0.1)
    # (0,0,2): level 1 P(0) = 3/4 against mean(3/4, 1/4, 0) = 1/3 -> .1 * 5/12;
    #          level 2 P(0,0) = 2/4 against mean over {0, 1} of (2/4, 1/4) = 3/8 -> .1 * 1/8
    # (1,2,0): level 1 1/4 < 1/3 -> 0; level 2 P(1,2) = 1/4 = its only sibling's -> 0
    # (0,1,0): level 1 as the first; level 2 P(0,1) = 1/4 < 3/8 -> 0. Last level: always 0.
    expected = torch.tensor([[[0.1 * 5 / 12, 0.1 / 8, 0.0], [0.0, 0.0, 0.0],
                              [0.1 * 5 / 12, 0.0, 0.0]]])
    assert torch.allclose(r, expected, atol=1e-7)
    # an invalid candidate and a user without history get nothing
    r2 = hepo_process_rewards(cand, torch.tensor([[False, True, True]]), hist,
                              torch.zeros_like(hist_valid), allowed)
    assert torch.equal(r2, torch.zeros_like(r2))


def test_hepo_gae_over_levels_and_the_group_z_score_at_the_last_level():
    # gamma = lam = .5; level rewards (1/24, 1/80, R = 1); V = (.2, .4, .6)
    # delta_3 = 1 - .6 = .4; delta_2 = 1/80 + .5 * .6 - .4 = -.0875; delta_1 = 1/24 + .2 - .2
    # A_3 = .4; A_2 = -.0875 + .25 * .4 = .0125; A_1 = 1/24 + .25 * .0125
    r = torch.tensor([[1 / 24, 1 / 80, 1.0]])
    v = torch.tensor([[0.2, 0.4, 0.6]])
    gae = gae_advantages(r, v, gamma=0.5, lam=0.5)
    assert torch.allclose(gae, torch.tensor([[1 / 24 + 0.25 * 0.0125, 0.0125, 0.4]]))
    # in HEPO the last level is the z-score of R over the group: R = (1, 0, 0) -> 2/3 / sqrt(2/9)
    process = torch.tensor([[[1 / 24, 1 / 80, 0.0], [0.0, 0.0, 0.0], [1 / 24, 0.0, 0.0]]])
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    values = torch.tensor([[[0.2, 0.4, 0.6], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    adv, level_r = hepo_advantages(process, rewards, values, valid, gamma=0.5, lam=0.5, eps=0.0)
    assert torch.allclose(adv[0, 0, :2], gae[0, :2])
    z = (2 / 3) / math.sqrt(2 / 9)
    assert torch.allclose(adv[0, :, 2], torch.tensor([z, -z / 2, -z / 2]), atol=1e-6)
    assert torch.allclose(level_r[0, :, 2], rewards[0])          # what V is trained towards
    assert torch.allclose(level_r[0, :, :2], process[0, :, :2])


def test_hepo_level_weights_scale_each_levels_surrogate():
    # at ratio 1: d loss / d logp_l = -c_l * A_l / (L * G * B)
    old = torch.zeros(1, 1, 3)
    new = old.clone().requires_grad_(True)
    adv = torch.tensor([[[1.0, 2.0, 3.0]]])
    c = torch.tensor([1 / 3, 2 / 3, 1.0])
    loss, _ = grpo_loss(new, old, old, adv, torch.ones(1, 1, dtype=torch.bool), kl_beta=0.0,
                        level_weights=c)
    loss.backward()
    assert torch.allclose(new.grad[0, 0], -c * adv[0, 0] / 3)
    assert loss.item() == pytest.approx(-(1 / 3 + 4 / 3 + 3) / 3)


# --------------------------------------------------------------------------- S-DPO


def _sdpo_inputs():
    # h+ = (-1 + 1.5) + 0 = .5; h(neg 0) = -1; h(neg 1) = .5; neg 2 invalid (-inf log-probs)
    pos_new = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    pos_ref = torch.tensor([[-1.5, -1.0]])
    neg_new = torch.tensor([[[-2.0, -1.0], [-1.0, -1.0], [-math.inf, -math.inf]]],
                           requires_grad=True)
    neg_ref = torch.tensor([[[-1.0, -1.0], [-1.0, -1.5], [-1.0, -1.0]]])
    neg_valid = torch.tensor([[True, True, False]])
    return pos_new, pos_ref, neg_new, neg_ref, neg_valid


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_sdpo_loss_equals_the_hand_computation(beta):
    pos_new, pos_ref, neg_new, neg_ref, neg_valid = _sdpo_inputs()
    loss, stats = sdpo_loss(pos_new, pos_ref, neg_new, neg_ref, neg_valid, beta)
    z = math.log(math.exp(beta * (-1 - 0.5)) + math.exp(beta * (0.5 - 0.5)))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(z)), rel=1e-6)  # -log sigmoid(-z)
    assert stats["margin"] == pytest.approx(0.0) and stats["acc"] == 0.0
    assert stats["n_neg"] == 2 and stats["pos_logratio"] == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(neg_new.grad).all() and torch.equal(neg_new.grad[0, 2],
                                                              torch.zeros(2))
    assert (pos_new.grad < 0).all()                 # raising the positive lowers the loss
    assert (neg_new.grad[0, :2] > 0).all()          # raising a negative raises it


def test_sdpo_loss_decreases_when_the_positive_log_ratio_rises_and_skips_users_without_negatives():
    pos_new, pos_ref, neg_new, neg_ref, neg_valid = _sdpo_inputs()
    base, _ = sdpo_loss(pos_new, pos_ref, neg_new, neg_ref, neg_valid)
    losses = [sdpo_loss(pos_new + d, pos_ref, neg_new, neg_ref, neg_valid)[0].item()
              for d in (0.1, 0.5, 2.0)]
    assert base.item() > losses[0] > losses[1] > losses[2] > 0
    # a second user whose beam holds no negative: left out of the mean
    two, _ = sdpo_loss(torch.cat([pos_new, pos_new]), torch.cat([pos_ref, pos_ref]),
                       torch.cat([neg_new, neg_new]), torch.cat([neg_ref, neg_ref]),
                       torch.cat([neg_valid, torch.zeros_like(neg_valid)]))
    assert two.item() == pytest.approx(base.item())


# --------------------------------------------------------------------------- in the trainer


def _toy():
    return toy_rl_world(n_embd=32)


def _trainer(**kw):
    vocab, trie, model, rows = _toy()
    cfg = RLConfig(**{"decoder": "beam", "n_candidates": 6, "sibling": False,
                      "value_loss": False, "users_per_step": 8, "value_warmup_steps": 0, **kw})
    return RLTrainer(model, vocab, trie, rows, cfg, max_history=5)


def _policy_grad(trainer, idx):
    b = trainer.propose(idx)
    rewards = trainer.rewards(b)
    adv = grpo_advantages(rewards, b.valid, trainer.cfg.adv_eps)
    adv, dense, stats = trainer.other_advantages(idx, b, rewards, adv, None)
    terms, _, _ = trainer.losses(b, adv, None, dense, None)
    trainer.backward(terms)
    return torch.cat([p.grad.flatten() for p in trainer.policy.parameters()
                      if p.grad is not None]), b, rewards, stats


def test_gspo_with_one_update_per_batch_has_grpos_gradient():
    """At ratio 1 the sequence ratio's gradient is the mean of the token ratios' gradients."""
    idx = np.arange(8)
    g_token, *_ = _policy_grad(_trainer(reward="prefix_partial_credit"), idx)
    g_seq, *_ = _policy_grad(_trainer(reward="prefix_partial_credit", ratio_level="sequence"),
                             idx)
    assert g_token.abs().max() > 0
    assert torch.allclose(g_token, g_seq, atol=1e-6)
    # on a reused batch (logp_old = logp - delta) the trainer's ratio is exp(mean_l delta)
    tr = _trainer(reward="prefix_partial_credit", ratio_level="sequence")
    b = tr.propose(idx)
    adv = grpo_advantages(tr.rewards(b), b.valid)
    with torch.no_grad():
        logp = score_candidates(tr.policy, tr.vocab, tr.trie, b.tokens, b.pad_mask,
                                b.codes).log_probs
    delta = 0.3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(0))
    _, stats, _ = tr.losses(b, adv, None, None, logp - delta)
    seq = torch.exp(delta.mean(-1))[b.valid]                   # per candidate
    assert stats["grpo_ratio_mean"] == pytest.approx(float(seq.mean()), rel=1e-5)
    assert stats["grpo_ratio_mean"] != pytest.approx(float(torch.exp(delta)[b.valid].mean()),
                                                     rel=1e-5)


def test_the_trainer_logs_the_kept_share_of_its_groups():
    tr = _trainer(reward="prefix_partial_credit", filter_zero_variance=True)
    _, b, rewards, stats = _policy_grad(tr, np.arange(8))
    spread = [len(set(rewards[i][b.valid[i]].tolist())) > 1 for i in range(8)]
    assert stats["dapo_kept_share"] == pytest.approx(sum(spread) / 8)
    assert b.keep_users.tolist() == spread


def test_hepo_sibling_codes_are_the_tries_children_and_the_critic_reads_the_level_rewards():
    tr = _trainer(advantage="hepo", value_loss=True, value_gate="always", value_diag_every=0,
                  reward="rule")
    b = tr.propose(np.arange(8))
    allowed = tr._sibling_codes(b.codes)                       # [B, G, L, K]
    cat = tr.trie.codes
    for bi, g, l in [(0, 0, 0), (3, 2, 1), (7, 5, 2)]:
        prefix = b.codes[bi, g, :l]
        under = cat[(cat[:, :l] == prefix).all(1)]
        assert allowed[bi, g, l].nonzero().flatten().tolist() == sorted(
            set(under[:, l].tolist()))
    rewards = tr.rewards(b)
    adv, dense, stats = tr.other_advantages(np.arange(8), b, rewards, None, None)
    assert adv.shape == b.codes.shape and torch.isfinite(adv).all()
    assert torch.equal(dense[..., -1][b.valid], rewards[b.valid])   # r_L = R for the critic
    assert tr.hepo_level_weights.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert 0 <= stats["hepo_process_reward_nonzero"] <= 1


def test_sdpo_raises_the_logged_items_log_ratio():
    tr = _trainer(policy_loss="sdpo", lr=3e-3, warmup_steps=1, schedule="constant", steps=15,
                  users_per_step=40)
    tokens, mask = tr.vocab.encode_histories(tr.rows.histories, tr.trie.codes)
    target = tr.trie.codes[torch.as_tensor(tr.rows.targets)][:, None, :]

    def target_logp():
        with torch.no_grad():
            return score_candidates(tr.policy, tr.vocab, tr.trie, tokens, mask,
                                    target).log_probs.sum(-1).mean().item()
    before = target_logp()
    tr.train(progress=False)
    assert target_logp() > before + 0.3
    first, last = tr.history[0], tr.history[-1]
    # the positive's log-ratio pulls away from the mean negative's (0 and 0 before the update)
    assert last["sdpo_pos_logratio"] - last["sdpo_neg_logratio"] > 0.2
    assert last["loss_sdpo"] < first["loss_sdpo"]
    assert last["target_in_group"] > first["target_in_group"]
    assert "loss_sdpo" in tr.history[0] and "loss_grpo" not in tr.history[0]


@pytest.mark.parametrize("overrides, field", [
    ({"advantage": "hepo", "value_loss": False}, "rl.value_loss"),
    ({"advantage": "tree"}, "rl.advantage"),
    ({"ratio_level": "item"}, "rl.ratio_level"),
    ({"policy_loss": "dpo"}, "rl.policy_loss"),
])
def test_bad_other_method_settings_name_their_field(overrides, field):
    vocab, trie, model, rows = _toy()
    with pytest.raises(InputError, match=field):
        RLTrainer(model, vocab, trie, rows, RLConfig(**overrides), max_history=5)
    with pytest.raises(InputError, match=field):
        RLConfig(**overrides).validate()


def test_hepo_level_weights_must_match_the_sid_depth():
    vocab, trie, model, rows = _toy()
    with pytest.raises(InputError, match="rl.hepo_level_weights"):
        RLTrainer(model, vocab, trie, rows, RLConfig(advantage="hepo", decoder="beam",
                                                     hepo_level_weights=[1.0, 1.0]),
                  max_history=5)
