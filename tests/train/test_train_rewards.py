"""Rewards: hand-computed values for every built-in reward, the registry and the invalid rule."""

import math

import pytest
import torch

from vstar.core.errors import InputError
from vstar.train.rewards import (REWARDS, RewardContext, get_reward, item_value_reward,
                              prefix_partial_credit, rank_aware_penalty, rule_plus_rank_penalty,
                              rule_reward, semantic_similarity)

# Catalogue of 6 items, L = 3; item 5's SID collides with item 0's.
CODES = torch.tensor([[1, 2, 3],   # item 0 (the target below)
                      [1, 2, 4],   # item 1
                      [1, 7, 3],   # item 2
                      [9, 2, 3],   # item 3
                      [1, 2, 5],   # item 4
                      [1, 2, 3]])  # item 5 (collides with item 0)


def make_ctx(cand_items, target_items, valid=None, **kw):
    cand_items = torch.tensor(cand_items)
    target_items = torch.tensor(target_items)
    if valid is None:
        valid = cand_items >= 0
    else:
        valid = torch.tensor(valid)
    cand_codes = CODES[cand_items.clamp_min(0)]
    cand_codes[cand_items < 0] = -1
    return RewardContext(cand_items=cand_items, cand_codes=cand_codes, valid=valid,
                         target_items=target_items, target_codes=CODES[target_items], **kw)


def test_rule_reward_is_one_only_for_the_target_item():
    ctx = make_ctx([[3, 0, 5, -1]], [0])
    # item 5 has the target's SID but is a different item: no hit (evaluation is by item)
    assert rule_reward(ctx).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_rank_aware_penalty_by_hand_full_group():
    # target (item 0) at position 2 of G=4; 1/log2(k+2) for k=0..3 = 1, 0.63093, 0.5, 0.43068
    # j over all valid positions (here all 4): sum = 2.5616063
    # pos0: -1/2.5616063 = -0.39038005; pos1: -0.63093/2.5616 = -0.24630239;
    # pos2: target -> 0; pos3: -0.43068/2.5616 = -0.16812754
    ctx = make_ctx([[1, 2, 0, 3]], [0])
    expected = torch.tensor([[-0.39038005, -0.24630239, 0.0, -0.16812754]])
    assert torch.allclose(rank_aware_penalty(ctx), expected, atol=1e-6)
    # the default reward adds the rule reward: the target gets 1
    assert torch.allclose(rule_plus_rank_penalty(ctx), expected + torch.tensor([[0, 0, 1.0, 0]]),
                          atol=1e-6)


def test_rank_aware_penalty_sums_over_valid_positions_only():
    # position 3 is an empty slot: j ranges over positions 0..2 -> sum = 1 + 0.63093 + 0.5
    # = 2.1309298; pos0: -1/2.1309298 = -0.46927873; pos2: -0.5/2.1309298 = -0.23463936
    ctx = make_ctx([[1, 0, 2, -1]], [0])
    expected = torch.tensor([[-0.46927873, 0.0, -0.23463936, 0.0]])
    assert torch.allclose(rank_aware_penalty(ctx), expected, atol=1e-6)


def test_rank_aware_penalty_is_zero_when_target_missing_and_users_independent():
    # user 0: target 0 not in the group -> all 0; user 1: target 1 at position 0 -> others < 0
    ctx = make_ctx([[1, 2, 3, 4], [1, 2, 3, 4]], [0, 1])
    pen = rank_aware_penalty(ctx)
    assert pen[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    # j over 4 positions: pos1 -0.24630239, pos2 -0.19519002, pos3 -0.16812754
    assert torch.allclose(pen[1], torch.tensor([0.0, -0.24630239, -0.19519002, -0.16812754]),
                          atol=1e-6)


def test_prefix_partial_credit_default_weights():
    # target item 0 = (1,2,3): item 0 -> full 1.0; item 1 (1,2,4) -> two-level 0.1;
    # item 2 (1,7,3) -> one-level 0.01 (the matching 3rd code does not count after a mismatch);
    # item 3 (9,2,3) -> 0; item 5 (1,2,3) collides but is another item -> 0.1
    ctx = make_ctx([[0, 1, 2, 3, 5]], [0])
    r = prefix_partial_credit()(ctx)
    assert torch.allclose(r, torch.tensor([[1.0, 0.1, 0.01, 0.0, 0.1]]))


def test_prefix_partial_credit_custom_weights_and_invalid():
    # weights (1, 0.5): one-level matches get 0; the invalid candidate gets 0 even if it hits
    ctx = make_ctx([[0, 1, 2, 0]], [0], valid=[[True, True, True, False]])
    r = prefix_partial_credit((1.0, 0.5))(ctx)
    assert torch.allclose(r, torch.tensor([[1.0, 0.5, 0.0, 0.0]]))


def test_semantic_similarity_is_cosine_with_target_embedding():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0],
                        [1.0, 0.0]])
    ctx = make_ctx([[0, 1, 2, -1]], [2], item_emb=emb)
    # cos((1,0),(0.6,0.8)) = 0.6; cos((0,1),(0.6,0.8)) = 0.8; target itself 1; empty slot 0
    assert torch.allclose(semantic_similarity(ctx), torch.tensor([[0.6, 0.8, 1.0, 0.0]]))
    with pytest.raises(InputError, match="item_emb"):
        semantic_similarity(make_ctx([[0]], [2]))


def test_item_value_reward_pays_the_value_of_a_hit():
    values = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    ctx = make_ctx([[0, 1, 2], [0, 1, 2]], [1, 4], item_values=values)
    # user 0 hits item 1 (value 20) at position 1; user 1 misses
    assert item_value_reward(scale=0.5)(ctx).tolist() == [[0.0, 10.0, 0.0], [0.0, 0.0, 0.0]]
    assert REWARDS["hit_times_value"](ctx).tolist() == [[0.0, 20.0, 0.0], [0.0, 0.0, 0.0]]


def test_get_reward_by_name_custom_function_and_invalid_penalty():
    ctx = make_ctx([[0, 1, 2]], [0], valid=[[True, True, False]])
    assert get_reward("rule")(ctx).tolist() == [[1.0, 0.0, 0.0]]
    assert get_reward("rule", invalid_penalty=-1.0)(ctx).tolist() == [[1.0, 0.0, -1.0]]

    def always_two(c):  # a user-supplied reward with the same signature
        return torch.full(c.shape, 2.0)

    assert get_reward(always_two)(ctx).tolist() == [[2.0, 2.0, 0.0]]
    assert get_reward(always_two, invalid_penalty=-0.5)(ctx).tolist() == [[2.0, 2.0, -0.5]]
    with pytest.raises(InputError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(InputError, match=r"must return a tensor of shape \(1, 3\)"):
        get_reward(lambda c: torch.zeros(3))(ctx)


def test_every_registered_reward_returns_b_by_g():
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    ctx = make_ctx([[0, 1, -1], [3, 4, 5]], [0, 5], item_emb=emb, item_values=torch.ones(6))
    for name in REWARDS:
        r = get_reward(name)(ctx)
        assert r.shape == (2, 3), name
        assert r[0, 2] == 0.0, name  # empty slot
        assert math.isfinite(float(r.sum())), name


def test_context_rejects_bad_input():
    with pytest.raises(InputError, match="valid"):
        make_ctx([[0, -1]], [0], valid=[[True, True]])
    with pytest.raises(InputError, match="target_codes"):
        RewardContext(cand_items=torch.zeros(1, 2, dtype=torch.long),
                      cand_codes=torch.zeros(1, 2, 3, dtype=torch.long),
                      valid=torch.ones(1, 2, dtype=torch.bool),
                      target_items=torch.zeros(1, dtype=torch.long),
                      target_codes=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(InputError, match="item_values"):
        make_ctx([[0, 1]], [0], item_values=torch.ones(1))
