"""Policy losses: autograd checks of the GRPO / Sibling-GRPO gradients, clipping and the KL."""

import math

import pytest
import torch

from vstar.core.errors import InputError
from vstar.train.advantages import SiblingAdvantages, sibling_advantages
from vstar.train.losses import grpo_loss, kl_k3, sibling_loss

EPS = 1e-4


def test_kl_k3_by_hand():
    # new = log .5, ref = log .25: d = ref - new = log .5 -> exp(d) - d - 1 = .5 + .6931472 - 1
    new, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert torch.allclose(kl_k3(new, ref), torch.tensor([0.1931472]))
    assert kl_k3(ref, ref).item() == 0.0
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_grpo_gradient_is_minus_advantage_over_token_count_at_ratio_one():
    B, G, L = 2, 3, 2
    logp_old = torch.log(torch.rand(B, G, L) * 0.9 + 0.05)
    logp_new = logp_old.clone().requires_grad_(True)          # ratio = 1
    adv = torch.tensor([[1.0, -0.5, 0.25], [2.0, 0.0, -1.0]])
    valid = torch.ones(B, G, dtype=torch.bool)
    loss, stats = grpo_loss(logp_new, logp_old, logp_old, adv, valid, kl_beta=0.0)
    loss.backward()
    # loss = mean over 12 tokens of -ratio * A -> d loss / d logp_new = -A * ratio / 12
    expected = (-adv / (B * G * L)).unsqueeze(-1).expand(B, G, L)
    assert torch.allclose(logp_new.grad, expected)
    # value: -mean_tokens(A) = -(1 - .5 + .25 + 2 + 0 - 1) / 6 = -0.2916667
    assert torch.allclose(loss, torch.tensor(-1.75 / 6))
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_frac"] == 0.0
    assert stats["n_tokens"] == 12


def test_grpo_normalisation_per_candidate_then_per_user():
    # user 0 has 1 valid candidate, user 1 has 2: each user weighs 1/2, each of its candidates
    # 1/|C(x)|, each token 1/L -> grad = -A / (L * |C(x)| * 2)
    L = 2
    logp_old = torch.full((2, 2, L), -1.0)
    logp_new = logp_old.clone().requires_grad_(True)
    logp_new.data[0, 1] = float("-inf")                         # invalid slot: anything goes
    adv = torch.tensor([[1.0, 5.0], [1.0, -1.0]])
    valid = torch.tensor([[True, False], [True, True]])
    loss, _ = grpo_loss(logp_new, logp_old, logp_old, adv, valid, kl_beta=0.0)
    loss.backward()
    expected = torch.tensor([[-1.0 / (L * 1 * 2), 0.0], [-1.0 / (L * 2 * 2), 1.0 / (L * 2 * 2)]])
    assert torch.allclose(logp_new.grad, expected.unsqueeze(-1).expand(2, 2, L))
    assert torch.isfinite(loss)
    # loss = mean over users of (-A averaged over valid candidates) = (-1 + 0) / 2
    assert torch.allclose(loss, torch.tensor(-0.5))


def test_grpo_clipping_stops_the_gradient():
    clip = 0.2
    logp_old = torch.zeros(1, 4, 1)
    # ratios 1.5, 1.5, 0.5, 0.5 with advantages +1, -1, +1, -1
    logp_new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).view(1, 4, 1).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = grpo_loss(logp_new, logp_old, logp_old, adv, torch.ones(1, 4, dtype=torch.bool),
                            clip_eps=clip, kl_beta=0.0)
    loss.backward()
    g = logp_new.grad.view(4)
    # ratio 1.5 > 1.2 with A > 0: min(1.5, 1.2) * A is the clipped term -> no gradient
    assert g[0] == 0.0
    # ratio 1.5 with A < 0: min(-1.5, -1.2) = -1.5 is unclipped -> d(-ratio*A)/dlogp = ratio/4
    assert g[1] == pytest.approx(1.5 / 4)
    # ratio 0.5 with A > 0: min(0.5, 0.8) = 0.5 unclipped -> -ratio * A / 4 = -0.125
    assert g[2] == pytest.approx(-0.5 / 4)
    # ratio 0.5 < 0.8 with A < 0: min(-0.5, -0.8) = -0.8 is clipped -> no gradient
    assert g[3] == 0.0
    # loss = -(1.2 - 1.5 + 0.5 - 0.8) / 4 = 0.15
    assert loss.item() == pytest.approx(0.15)
    assert stats["clip_frac"] == 1.0 and stats["ratio_mean"] == pytest.approx(1.0)


def test_grpo_kl_penalty_value_and_gradient():
    # A = 0, ratio 1: loss = beta * k3; with new = log .5, ref = log .25: k3 = 0.1931472,
    # dk3/dnew = 1 - exp(ref - new) = 1 - .5 = 0.5
    beta = 0.1
    new = torch.full((1, 1, 1), math.log(0.5), requires_grad=True)
    ref = torch.full((1, 1, 1), math.log(0.25))
    loss, stats = grpo_loss(new, new.detach(), ref, torch.zeros(1, 1),
                            torch.ones(1, 1, dtype=torch.bool), kl_beta=beta)
    loss.backward()
    assert loss.item() == pytest.approx(beta * 0.1931472, rel=1e-5)
    assert new.grad.item() == pytest.approx(beta * 0.5, rel=1e-5)
    assert stats["kl_mean"] == pytest.approx(0.1931472, rel=1e-5)


def test_sibling_loss_on_hand_built_tree():
    # the tree of test_rl_advantages: (1,2,3),(1,2,4),(1,5,6),(7,8,9) with rewards (1,0,0,0)
    codes = torch.tensor([[[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 9]]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    sib = sibling_advantages(codes, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), valid)
    logp_old = torch.full((1, 4, 3), -0.7)
    logp_new = logp_old.clone().requires_grad_(True)
    loss, stats = sibling_loss(logp_new, logp_old, logp_old, sib, valid, kl_beta=0.0)
    loss.backward()
    # masked tokens carry +-a1 (depth 1: c0, c3), +-a2 (depth 2: c0, c2), +-a3 (depth 3: c0, c1):
    # each pair sums to 0 -> loss = -sum / |C(x)| = 0 at ratio 1
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # gradient = -A(h, v) / |C(x)| = -A / 4 at the masked tokens, 0 elsewhere
    a1, a2, a3 = (1 / 6) / (1 / 6 + EPS), 0.25 / (0.25 + EPS), 0.5 / (0.5 + EPS)
    expected = -torch.tensor([[[a1, a2, a3], [0, 0, -a3], [0, -a2, 0], [-a1, 0, 0]]]) / 4
    assert torch.allclose(logp_new.grad, expected)
    assert stats["n_tokens"] == 6


def test_sibling_loss_normalises_by_valid_candidates_and_users():
    # user 0: 2 valid candidates, one masked token with A = 1 -> -1 / 2;
    # user 1: 4 valid candidates, one masked token with A = -2 -> +2 / 4; loss = mean = 0
    # user 2: no valid candidate -> left out of the mean
    adv = torch.zeros(3, 4, 2)
    mask = torch.zeros(3, 4, 2, dtype=torch.bool)
    adv[0, 0, 1], mask[0, 0, 1] = 1.0, True
    adv[1, 3, 0], mask[1, 3, 0] = -2.0, True
    adv[1, 2, 0] = 5.0                                           # not masked: must not count
    sib = SiblingAdvantages(adv, mask, torch.tensor([1, 1, 0]))
    valid = torch.tensor([[True, True, False, False], [True] * 4, [False] * 4])
    logp_old = torch.full((3, 4, 2), -1.0)
    logp_new = logp_old.clone().requires_grad_(True)
    loss, _ = sibling_loss(logp_new, logp_old, logp_old, sib, valid, kl_beta=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # gradients: -A / (|C(x)| * 2 users)
    assert logp_new.grad[0, 0, 1].item() == pytest.approx(-1.0 / (2 * 2))
    assert logp_new.grad[1, 3, 0].item() == pytest.approx(2.0 / (4 * 2))
    assert logp_new.grad.abs().sum().item() == pytest.approx(0.25 + 0.25)
    # ratio 2 at user 0's token with A > 0: clipped at 1.2 -> loss = (-1.2/2 + 2/4) / 2 = -0.05
    logp_new2 = logp_old.clone()
    logp_new2[0, 0, 1] += math.log(2.0)
    loss2, stats = sibling_loss(logp_new2, logp_old, logp_old, sib, valid, kl_beta=0.0)
    assert loss2.item() == pytest.approx(-0.05)
    assert stats["clip_frac"] == 0.5


def test_losses_reject_mismatched_shapes():
    x = torch.zeros(1, 2, 3)
    valid = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(InputError, match="adv"):
        grpo_loss(x, x, x, torch.zeros(1, 3), valid)
    with pytest.raises(InputError, match="logp_ref"):
        grpo_loss(x, x, torch.zeros(1, 2, 2), torch.zeros(1, 2), valid)
