"""Advantages and value targets: hand-built candidate trees with the arithmetic in comments."""

import math

import pytest
import torch

from vstar.core.errors import InputError
from vstar.train.advantages import (PrefixEmbeddings, code_overlap_similarity,
                                 default_level_weights, dense_value_rewards, grpo_advantages,
                                 rank_percentile, return_to_go, sibling_advantages,
                                 sibling_mass_on_target_path, td_targets, tree_value_paths,
                                 value_loss, within_user_correlation)

EPS = 1e-4


# --------------------------------------------------------------------------- GRPO


def test_grpo_advantages_by_hand():
    # rewards (1,0,0,0): mean 0.25; population var = (0.75^2 + 3 * 0.25^2) / 4 = 0.1875,
    # std = 0.4330127 -> A = 0.75 / (0.4330127 + 1e-4), -0.25 / (0.4330127 + 1e-4)
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.ones(1, 4, dtype=torch.bool))
    std = math.sqrt(0.1875)
    assert torch.allclose(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (std + EPS))


def test_grpo_advantages_ignore_invalid_and_keep_users_apart():
    rewards = torch.tensor([[1.0, 0.0, 5.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    valid = torch.tensor([[True, True, False, True], [True, True, True, True]])
    adv = grpo_advantages(rewards, valid)
    # user 0 over {1, 0, 0} (the invalid 5 is ignored): mean 1/3, var = (4/9 + 2 * 1/9) / 3
    # = 2/9, std = 0.4714045 -> (2/3) / (std + eps), (-1/3) / (std + eps); invalid -> 0
    std = math.sqrt(2 / 9)
    expected0 = torch.tensor([2 / 3, -1 / 3, 0.0, -1 / 3]) / torch.tensor([std + EPS] * 4)
    expected0[2] = 0.0
    assert torch.allclose(adv[0], expected0)
    # user 1: all rewards equal -> no signal
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- Sibling-GRPO

TREE = torch.tensor([[[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 9]]])  # [1, 4, 3]


def test_sibling_advantages_hand_built_tree():
    sib = sibling_advantages(TREE, torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                             torch.ones(1, 4, dtype=torch.bool))
    # depth 1, parent (): children 1 -> {c0,c1,c2} Rbar = 1/3, 7 -> {c3} Rbar = 0;
    #   mean 1/6, population std 1/6 -> A(1) = (1/6)/(1/6 + eps) = a1, A(7) = -a1
    a1 = (1 / 6) / (1 / 6 + EPS)
    # depth 2, parent (1): children 2 -> {c0,c1} Rbar 0.5, 5 -> {c2} Rbar 0; mean .25, std .25
    #   -> A(2) = 0.25/(0.25 + eps) = a2, A(5) = -a2; parent (7) has one child 8 -> no signal
    a2 = 0.25 / (0.25 + EPS)
    # depth 3, parent (1,2): children 3 -> c0 (1), 4 -> c1 (0); mean .5, std .5 -> +-a3;
    #   parents (1,5) and (7,8) have one child each -> no signal
    a3 = 0.5 / (0.5 + EPS)
    expected_adv = torch.tensor([[[a1, a2, a3],
                                  [a1, a2, -a3],
                                  [a1, -a2, 0.0],
                                  [-a1, 0.0, 0.0]]])
    assert torch.allclose(sib.adv, expected_adv)
    # one representative (first in decoder order) per node with a branching parent:
    # depth 1: node 1 -> c0, node 7 -> c3; depth 2: node (1,2) -> c0, node (1,5) -> c2;
    # depth 3: node (1,2,3) -> c0, node (1,2,4) -> c1
    expected_mask = torch.tensor([[[True, True, True],
                                   [False, False, True],
                                   [False, True, False],
                                   [True, False, False]]])
    assert torch.equal(sib.mask, expected_mask)
    # parents with >= 2 distinct children: (), (1), (1,2)
    assert sib.n_groups_with_signal.tolist() == [3]


def test_sibling_representative_is_first_in_decoder_order():
    # the same tree with (1,2,4) first: it now represents node 1 at depth 1 and (1,2) at depth 2
    codes = TREE[:, [1, 0, 2, 3]]
    sib = sibling_advantages(codes, torch.tensor([[0.0, 1.0, 0.0, 0.0]]),
                             torch.ones(1, 4, dtype=torch.bool))
    assert sib.mask[0, :, 0].tolist() == [True, False, False, True]
    assert sib.mask[0, :, 1].tolist() == [True, False, True, False]
    assert sib.mask[0, :, 2].tolist() == [True, True, False, False]
    a3 = 0.5 / (0.5 + EPS)
    assert torch.allclose(sib.adv[0, :2, 2], torch.tensor([-a3, a3]))


def test_sibling_parent_with_one_child_gives_no_signal():
    # all candidates share the first two codes: only the depth-3 parent (1,2) branches
    codes = torch.tensor([[[1, 2, 3], [1, 2, 4], [1, 2, 4]]])
    sib = sibling_advantages(codes, torch.tensor([[1.0, 0.0, 1.0]]),
                             torch.ones(1, 3, dtype=torch.bool))
    assert sib.adv[0, :, :2].abs().max() == 0 and not sib.mask[0, :, :2].any()
    # depth 3: Rbar(3) = 1, Rbar(4) = mean(0, 1) = 0.5; mean .75, std .25 -> +-0.25/(0.25+eps)
    a = 0.25 / (0.25 + EPS)
    assert torch.allclose(sib.adv[0, :, 2], torch.tensor([a, -a, -a]))
    # the duplicate (1,2,4) at position 2 is not a second representative
    assert sib.mask[0, :, 2].tolist() == [True, True, False]
    assert sib.n_groups_with_signal.tolist() == [1]


def test_sibling_users_never_mix():
    codes = torch.cat([TREE, TREE])                           # two users, identical codes
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    sib = sibling_advantages(codes, rewards, torch.ones(2, 4, dtype=torch.bool))
    alone = sibling_advantages(TREE, rewards[:1], torch.ones(1, 4, dtype=torch.bool))
    assert torch.allclose(sib.adv[0], alone.adv[0]) and torch.equal(sib.mask[0], alone.mask[0])
    # user 1: depth 1 Rbar(1) = 0, Rbar(7) = 1 -> mean .5, std .5 -> A(1) = -a, A(7) = +a;
    # deeper, every sibling scores 0 -> A = 0/(0 + eps) = 0 (still a branching decision)
    a = 0.5 / (0.5 + EPS)
    assert torch.allclose(sib.adv[1, :, 0], torch.tensor([-a, -a, -a, a]))
    assert sib.adv[1, :, 1:].abs().max() == 0
    assert torch.equal(sib.mask[1], alone.mask[0])
    assert sib.n_groups_with_signal.tolist() == [3, 3]


def test_sibling_invalid_candidates_are_ignored():
    # a 5th, invalid candidate (7,8,1) with reward 1 would make parent (7,8) branch if counted
    codes = torch.cat([TREE, torch.tensor([[[7, 8, 1]]])], 1)
    valid = torch.tensor([[True, True, True, True, False]])
    sib = sibling_advantages(codes, torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]]), valid)
    ref = sibling_advantages(TREE, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), valid[:, :4])
    assert torch.allclose(sib.adv[:, :4], ref.adv) and torch.equal(sib.mask[:, :4], ref.mask)
    assert sib.adv[0, 4].abs().max() == 0 and not sib.mask[0, 4].any()
    assert sib.n_groups_with_signal.tolist() == [3]


def _sibling_reference(codes, rewards, valid, eps=EPS):
    """Slow, obviously-correct loop version of Eq. 15-18, for the vectorised one to match."""
    B, G, L = codes.shape
    adv = torch.zeros(B, G, L)
    mask = torch.zeros(B, G, L, dtype=torch.bool)
    n_sig = [0] * B
    for b in range(B):
        live = [g for g in range(G) if valid[b, g]]
        for l in range(1, L + 1):
            parents = {}
            for g in live:
                h = tuple(codes[b, g, : l - 1].tolist())
                v = int(codes[b, g, l - 1])
                parents.setdefault(h, {}).setdefault(v, []).append(g)
            for h, children in parents.items():
                if len(children) < 2:
                    continue
                n_sig[b] += 1
                score = {v: sum(float(rewards[b, g]) for g in gs) / len(gs)
                         for v, gs in children.items()}
                mean = sum(score.values()) / len(score)
                std = math.sqrt(sum((s - mean) ** 2 for s in score.values()) / len(score))
                for v, gs in children.items():
                    for g in gs:
                        adv[b, g, l - 1] = (score[v] - mean) / (std + eps)
                    mask[b, min(gs), l - 1] = True
    return adv, mask, n_sig


def test_sibling_vectorised_matches_loop_reference_at_scale():
    g = torch.Generator().manual_seed(0)
    B, G, L = 64, 32, 5
    codes = torch.randint(0, 3, (B, G, L), generator=g)       # small codebook: deep sharing
    rewards = torch.randint(0, 2, (B, G), generator=g).float()
    valid = torch.rand(B, G, generator=g) > 0.1
    sib = sibling_advantages(codes, rewards, valid)
    adv, mask, n_sig = _sibling_reference(codes, rewards, valid)
    assert torch.allclose(sib.adv, adv, atol=1e-5)
    assert torch.equal(sib.mask, mask)
    assert sib.n_groups_with_signal.tolist() == n_sig
    assert mask.any()


# --------------------------------------------------------------------------- dense value rewards

# Catalogue, L = 3, 2-D embeddings:
CAT_CODES = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
CAT_EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
# Bucket means: (0) -> items 0,1,2 -> (1.6/3, 1.8/3) = (0.5333, 0.6); (1) -> (-1, 0);
#               (0,0) -> items 0,1 -> (0.5, 0.5); (0,1) -> (0.6, 0.8); (1,0) -> (-1, 0)


def test_prefix_embeddings_bucket_mean_and_single_item():
    pe = PrefixEmbeddings(CAT_CODES, CAT_EMB)
    e = pe(torch.tensor([[0, 0, 1], [0, 1, 0]]))              # [2, L=3, D=2]
    assert torch.allclose(e[0], torch.tensor([[1.6 / 3, 0.6], [0.5, 0.5], [0.0, 1.0]]))
    assert torch.allclose(e[1], torch.tensor([[1.6 / 3, 0.6], [0.6, 0.8], [0.6, 0.8]]))
    single = PrefixEmbeddings(CAT_CODES, CAT_EMB, mode="single_item")
    assert torch.allclose(single(torch.tensor([0, 1, 0])), torch.tensor([[0.6, 0.8]] * 3))
    # prefixes outside the catalogue (code 5, or (1,1)) get the zero vector
    out = pe(torch.tensor([[5, 0, 0], [1, 1, 0]]))
    assert out[0].abs().max() == 0
    assert torch.allclose(out[1], torch.tensor([[-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(InputError, match="mode"):
        PrefixEmbeddings(CAT_CODES, CAT_EMB, mode="nope")


def test_dense_value_rewards_by_hand_bucket_mean():
    # user 0: target item 1 (0,0,1), e* = (0,1); user 1: target item 3 (1,0,0), e* = (-1,0)
    # w = (0.3, 0.5, 1.0)
    cand_codes = torch.tensor([[[0, 0, 1], [0, 0, 0], [0, 1, 0]],
                               [[0, 1, 0], [0, 0, 0], [1, 0, 0]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    r = dense_value_rewards(cand_codes, CAT_CODES[[1, 3]], torch.tensor([1, 3]), valid,
                            prefix_emb=PrefixEmbeddings(CAT_CODES, CAT_EMB))
    # user 0, target itself: on the target's path at every level -> (0.3, 0.5, 1.0)
    # user 0, (0,0,0): levels 1-2 on path -> 0.3, 0.5; level 3: cos((1,0),(0,1)) = 0 -> -1.0
    # user 0, (0,1,0): level 1 -> 0.3; level 2: cos((.6,.8),(0,1)) = .8 -> -.5*.2 = -0.1;
    #                  level 3: -1.0 * (1 - .8) = -0.2
    # user 1, (0,1,0): level 1: cos((.5333,.6),(-1,0)) = -.5333/.80277 = -.66436
    #                  -> -.3 * 1.66436 = -0.4993092; level 2: cos -.6 -> -.5 * 1.6 = -0.8;
    #                  level 3: -1.0 * 1.6 = -1.6
    # user 1, (0,0,0): level 1 -0.4993092; level 2: cos((.5,.5),(-1,0)) = -.70711
    #                  -> -.5 * 1.70711 = -0.8535534; level 3: cos -1 -> -2.0
    # user 1, invalid -> 0
    expected = torch.tensor([[[0.3, 0.5, 1.0], [0.3, 0.5, -1.0], [0.3, -0.1, -0.2]],
                             [[-0.4993092, -0.8, -1.6], [-0.4993092, -0.8535534, -2.0],
                              [0.0, 0.0, 0.0]]])
    assert torch.allclose(r, expected, atol=1e-6)


def test_dense_value_rewards_single_item_and_code_overlap():
    cand_codes = torch.tensor([[[0, 1, 0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    # single_item: the candidate's own embedding (.6,.8) at every level, target (-1,0): cos -.6
    # -> (-.3*1.6, -.5*1.6, -1*1.6) = (-0.48, -0.8, -1.6)
    r = dense_value_rewards(cand_codes, CAT_CODES[[3]], torch.tensor([3]), valid,
                            prefix_emb=PrefixEmbeddings(CAT_CODES, CAT_EMB, "single_item"))
    assert torch.allclose(r, torch.tensor([[[-0.48, -0.8, -1.6]]]))
    # ID-only: cos_l = common prefix length / l. target (0,0,1): level 1 on path -> 0.3;
    # level 2: 1/2 -> -.5 * .5 = -0.25; level 3: 1/3 -> -1 * 2/3 = -0.6666667
    r = dense_value_rewards(cand_codes, CAT_CODES[[1]], torch.tensor([1]), valid)
    assert torch.allclose(r, torch.tensor([[[0.3, -0.25, -2 / 3]]]))
    assert torch.allclose(code_overlap_similarity(cand_codes, CAT_CODES[[1]]),
                          torch.tensor([[[1.0, 0.5, 1 / 3]]]))
    # custom weights and a precomputed prefix-embedding tensor
    e = torch.tensor([[[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]]])   # [1, 1, 3, 2]
    r = dense_value_rewards(cand_codes, CAT_CODES[[1]], torch.tensor([1]), valid,
                            level_weights=[1.0, 2.0, 4.0], prefix_emb=e, item_emb=CAT_EMB)
    # level 1 on path -> 1.0; level 2: cos((1,0),(0,1)) = 0 -> -2.0;
    # level 3: cos((1,1),(0,1)) = .70711 -> -4 * .29289 = -1.1715729
    assert torch.allclose(r, torch.tensor([[[1.0, -2.0, -1.1715729]]]))


def test_level_weights_follow_l():
    assert default_level_weights(3) == [0.3, 0.5, 1.0]
    assert default_level_weights(5) == [0.3, 0.475, 0.65, 0.825, 1.0]
    assert default_level_weights(1) == [1.0]
    with pytest.raises(InputError, match="level_weights"):
        dense_value_rewards(torch.zeros(1, 1, 3, dtype=torch.long),
                            torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                            torch.ones(1, 1, dtype=torch.bool), level_weights=[1.0, 1.0])


# --------------------------------------------------------------------------- TD targets


def test_td_targets_and_value_loss_by_hand():
    values = torch.tensor([[[0.5, 0.2, 0.1]]], requires_grad=True)   # V(s_1), V(s_2), V(s_3)
    rewards = torch.tensor([[[0.3, 0.5, 1.0]]])
    t = td_targets(values, rewards, gamma=0.9)
    # target_1 = .3 + .9 * V(s_2) = .3 + .18 = 0.48; target_2 = .5 + .9 * .1 = 0.59;
    # target_3 = 1.0 + .9 * V(s_4) = 1.0 (terminal, V := 0)
    assert torch.allclose(t, torch.tensor([[[0.48, 0.59, 1.0]]]))
    assert not t.requires_grad                                 # stop-gradient
    # a value read after the last code is ignored (terminal state)
    with_terminal = torch.tensor([[[0.5, 0.2, 0.1, 7.0]]])
    assert torch.allclose(td_targets(with_terminal, rewards, gamma=0.9), t)
    # loss = ((.5-.48)^2 + (.2-.59)^2 + (.1-1)^2) / 3 = (.0004 + .1521 + .81) / 3 = 0.3208333
    loss = value_loss(values, t, torch.ones(1, 1, dtype=torch.bool))
    assert torch.allclose(loss, torch.tensor(0.3208333))
    loss.backward()
    # d/dV = 2 (V - target) / 3 -> (0.0133333, -0.26, -0.6)
    assert torch.allclose(values.grad, torch.tensor([[[0.04 / 3, -0.26, -0.6]]]))


def test_value_loss_masks_invalid_candidates():
    values = torch.tensor([[[1.0, 1.0], [9.0, 9.0]]])
    targets = torch.zeros(1, 2, 2)
    loss = value_loss(values, targets, torch.tensor([[True, False]]))
    assert torch.allclose(loss, torch.tensor(1.0))              # only the valid candidate
    with pytest.raises(InputError, match="values"):
        td_targets(torch.zeros(1, 2, 5), torch.zeros(1, 2, 2))


# --------------------------------------------------------------------------- issue 8 helpers


def test_sibling_std_floor_shrinks_small_gaps_only():
    codes = torch.tensor([[[1, 2, 3], [1, 2, 4]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    small = torch.tensor([[-0.146, -0.131]])              # rank-penalty noise: gap 0.015
    big = torch.tensor([[1.0, 0.0]])                      # a hit against a miss
    # without a floor both become about +-1
    assert sibling_advantages(codes, small, valid).adv[0, 1, 2] > 0.98
    # floor 0.1: std 0.0075 -> 0.0075 / (0.1 + eps); std 0.5 is above the floor: unchanged
    a = sibling_advantages(codes, small, valid, std_floor=0.1).adv[0, :, 2]
    assert torch.allclose(a, torch.tensor([-0.0075, 0.0075]) / (0.1 + EPS), atol=1e-5)
    a = sibling_advantages(codes, big, valid, std_floor=0.1).adv[0, :, 2]
    assert torch.allclose(a, torch.tensor([0.5, -0.5]) / (0.5 + EPS))
    with pytest.raises(InputError, match="sibling_std_floor"):
        sibling_advantages(codes, big, valid, std_floor=-1.0)


def test_sibling_mass_on_the_target_path_by_hand():
    sib = sibling_advantages(TREE, torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                             torch.ones(1, 4, dtype=torch.bool))
    a1, a2, a3 = (1 / 6) / (1 / 6 + EPS), 0.25 / (0.25 + EPS), 0.5 / (0.5 + EPS)
    # target (1,5,6): on its path are the root, (1) and (1,5); the parent (1,2) is off it
    total, on = sibling_mass_on_target_path(sib, TREE, torch.tensor([[1, 5, 6]]))
    assert torch.allclose(total, torch.tensor([2 * a1 + 2 * a2 + 2 * a3]))
    assert torch.allclose(on, torch.tensor([2 * a1 + 2 * a2]))
    # target (7,8,9): only the root's decision is on its path
    total, on = sibling_mass_on_target_path(sib, TREE, torch.tensor([[7, 8, 9]]))
    assert torch.allclose(on, torch.tensor([2 * a1]))


def test_return_to_go_correlation_and_rank_percentile_by_hand():
    r = torch.tensor([[[0.3, 0.5, 1.0]]])
    assert torch.allclose(return_to_go(r, 0.5), torch.tensor([[[0.3 + 0.25 + 0.25, 1.0, 1.0]]]))
    x = torch.tensor([[[1.0], [2.0], [3.0]], [[1.0], [1.0], [1.0]]])      # [2, 3, 1]
    valid = torch.ones(2, 3, dtype=torch.bool)
    # user 0: perfectly anti-correlated; user 1: constant x -> left out
    assert within_user_correlation(x, -x, valid) == pytest.approx(-1.0)
    assert math.isnan(within_user_correlation(x[1:], x[1:], valid[1:]))
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [1.0, 1.0, 0.0, 5.0]])
    allowed = torch.tensor([[True, True, True, False], [True, True, True, True]])
    rank, pct, ok = rank_percentile(scores, allowed, torch.tensor([2, 0]))
    # user 0: among {0.1, 0.9, 0.5} the target 0.5 is 2nd of 3 -> percentile 0.5
    # user 1: 5.0 beats it, 1.0 ties with it -> rank 1 + 1 + 0.5 = 2.5 of 4 -> 1.5 / 3
    assert rank.tolist() == [2.0, 2.5] and torch.allclose(pct, torch.tensor([0.5, 0.5],
                                                                             dtype=pct.dtype))
    assert ok.tolist() == [True, True]
    _, _, ok = rank_percentile(scores, allowed, torch.tensor([3, 0]))
    assert ok.tolist() == [False, True]                   # the target is not allowed


def test_tree_value_paths_complete_the_search_leaves_no_candidate_passes():
    cat = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1], [2, 0, 0],
                        [3, 0, 0]])
    # nodes: 0 root; 1 (0); 2 (0,0); 3 (1); 4 (0,1); 5 (2) not evaluated; 6 (3)
    depth = torch.tensor([[0, 1, 2, 1, 2, 1, 1]])
    parent = torch.tensor([[-1, 0, 1, 0, 1, 0, 0]])
    node_codes = torch.tensor([[[-1, -1, -1], [0, -1, -1], [0, 0, -1], [1, -1, -1],
                                [0, 1, -1], [2, -1, -1], [3, -1, -1]]])
    evaluated = torch.tensor([[True, True, True, True, True, False, True]])
    cand = torch.tensor([[[0, 0, 0], [3, 0, 0], [0, 0, 1]]])
    valid = torch.tensor([[True, True, False]])
    seen = set()
    for seed in range(20):
        codes, ok = tree_value_paths(depth, node_codes, evaluated, parent, cand, valid, cat,
                                     torch.Generator().manual_seed(seed))
        # (0) has evaluated children, (0,0) and (3) are on candidates, (2) is not evaluated:
        # only the leaves (1) and (0,1) need a path, each completed by an item under them
        assert codes.shape == (1, 2, 3) and ok.all()
        assert codes[0, 0, 0] == 1 and codes[0, 1].tolist() == [0, 1, 0]
        seen.add(tuple(codes[0, 0].tolist()))
    assert seen == {(1, 0, 0), (1, 1, 1)}                 # uniform among the items under (1)
    # every node covered: no extra path
    codes, ok = tree_value_paths(depth, node_codes, evaluated, parent,
                                 torch.tensor([[[0, 0, 0], [3, 0, 0], [1, 1, 1], [0, 1, 0]]]),
                                 torch.ones(1, 4, dtype=torch.bool), cat)
    assert codes.shape == (1, 0, 3) and ok.shape == (1, 0)
