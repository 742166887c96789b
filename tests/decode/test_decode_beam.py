import numpy as np
import pytest
import torch

from vstar.decode import SidTrie, beam_search, constrained_sample
from vstar.decode.scoring import score_candidates
from vstar.testing import tiny_setup

_setup = tiny_setup


def test_trie_allowed_masks_match_catalogue():
    codes = np.array([[0, 1], [0, 2], [1, 0]])
    trie = SidTrie(codes, [2, 3])
    assert trie.allowed(0, torch.tensor([0])).tolist() == [[True, True]]
    node0 = trie.step(0, torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert trie.allowed(1, node0).tolist() == [[False, True, True], [True, False, False]]
    assert trie.item_of(torch.tensor([[0, 2], [1, 0], [1, 1], [0, 0]])).tolist() == [1, 2, -1, -1]


def test_trie_rejects_collisions_and_out_of_range_codes():
    with pytest.raises(ValueError, match="collide"):
        SidTrie(np.array([[0, 1], [0, 1]]), [2, 2])
    with pytest.raises(ValueError, match="level 1"):
        SidTrie(np.array([[0, 5]]), [2, 2])


def test_beam_search_with_full_width_equals_brute_force_ranking():
    codes, vocab, trie, model, tokens, mask = _setup()
    N = len(codes)
    res = beam_search(model, vocab, trie, tokens, mask, width=N)
    B = tokens.shape[0]
    all_codes = torch.as_tensor(codes)[None].expand(B, N, -1)
    with torch.no_grad():
        brute = score_candidates(model, vocab, trie, tokens, mask, all_codes).log_probs.sum(-1)  # [B, N]
    brute_rank = brute.argsort(dim=1, descending=True)
    assert res.n_invalid == 0
    assert (res.items >= 0).all()
    for b in range(B):
        assert sorted(res.items[b].tolist()) == list(range(N))          # every item exactly once
        assert torch.allclose(res.scores[b], brute[b, res.items[b]], atol=1e-5)
        assert res.items[b].tolist() == brute_rank[b].tolist()
    assert res.forward_tokens == (vocab.n_levels - 1) * N * B


def test_beam_search_narrow_returns_valid_distinct_items_and_counts_cost():
    codes, vocab, trie, model, tokens, mask = _setup()
    res = beam_search(model, vocab, trie, tokens, mask, width=7)
    assert res.items.shape == (tokens.shape[0], 7)
    for b in range(tokens.shape[0]):
        row = res.items[b].tolist()
        assert len(set(row)) == 7 and min(row) >= 0
        assert (trie.item_of(res.codes[b]) == res.items[b]).all()
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    assert res.forward_tokens == 2 * 7 * tokens.shape[0]


def test_sampling_is_always_valid_and_follows_top_k():
    codes, vocab, trie, model, tokens, mask = _setup()
    g = torch.Generator().manual_seed(0)
    res = constrained_sample(model, vocab, trie, tokens, mask, n_samples=50, temperature=1.5, generator=g)
    assert res.n_invalid == 0 and (res.items >= 0).all()
    assert (trie.item_of(res.codes) == res.items).all()
    # top_k = 1 at temperature 1 is greedy: every sample is the same item, the beam-1 item
    greedy = constrained_sample(model, vocab, trie, tokens, mask, n_samples=4, top_k=1, generator=g)
    beam1 = beam_search(model, vocab, trie, tokens, mask, width=1)
    # greedy per level equals beam-1 (beam of width 1 is greedy too)
    assert (greedy.items == beam1.items).all()


def test_beam_wider_than_the_catalogue_pads_with_empty_slots():
    codes, vocab, trie, model, tokens, mask = _setup(n_items=3)
    res = beam_search(model, vocab, trie, tokens, mask, width=5)
    assert res.n_invalid == 0
    assert (res.items[:, :3] >= 0).all() and (res.items[:, 3:] == -1).all()
    assert torch.isinf(res.scores[:, 3:]).all()


def test_value_guided_beam_with_zero_value_is_beam_search():
    codes, vocab, trie, model, tokens, mask = _setup()
    plain = beam_search(model, vocab, trie, tokens, mask, width=6)
    zero = beam_search(model, vocab, trie, tokens, mask, width=6,
                       value_fn=lambda h: torch.zeros(h.shape[0]), value_weight=3.0)
    assert torch.equal(plain.items, zero.items)
    assert torch.allclose(plain.scores, zero.scores)
    assert zero.forward_tokens == plain.forward_tokens
    assert not hasattr(plain, "value_swapped") and (zero.value_swapped == 0).all()


def test_value_guided_beam_widens_under_the_high_value_first_code():
    """A value that prefers the first code the policy likes least: the guided beam keeps items
    under it where beam search keeps none (at the same cost), and each item's score is
    log pi(item | x) + eta * V(its parent)."""
    codes, vocab, trie, model, tokens, mask = _setup()
    W, eta = 4, 50.0
    plain = beam_search(model, vocab, trie, tokens, mask, width=W)
    with torch.no_grad():
        first = model(tokens, pad_mask=mask).logits[:, -1, vocab.level_slice(0)]
    worst = int(first[0].argmin())            # user 0's least probable first code
    fed: list = []                            # the beam's codes per depth (beam_search's trace)

    class UnderWorst:                         # V(s) = 1 if s lies under `worst`, else 0
        reads_log_prob = False

        def __call__(self, hidden):
            return (fed[-1][0][:, :, 0] == worst).float().reshape(-1)

    guided = beam_search(model, vocab, trie, tokens, mask, width=W, trace=fed,
                         value_fn=UnderWorst(), value_weight=eta)
    assert int((plain.codes[0, :, 0] == worst).sum()) == 0
    assert int((guided.codes[0, :, 0] == worst).sum()) > 0
    assert guided.forward_tokens == plain.forward_tokens and guided.n_invalid == 0
    assert 0 < float(guided.value_swapped[0]) <= 1         # the value changed user 0's beam
    with torch.no_grad():
        lp = score_candidates(model, vocab, trie, tokens, mask,
                              guided.codes.clamp(min=0)).log_probs.sum(-1)
    bonus = eta * (guided.codes[:, :, 0] == worst).float()
    ok = guided.items >= 0
    assert torch.allclose(guided.scores[ok], (lp + bonus)[ok], atol=1e-4)


def test_prefix_log_mass_is_the_heads_mass_under_each_node():
    from vstar.decode.beam import prefix_log_mass
    codes, _, trie, *_ = _setup()
    torch.manual_seed(1)
    lq = torch.log_softmax(torch.randn(3, len(codes)), -1)
    mass = prefix_log_mass(lq, trie)
    assert len(mass) == trie.n_levels + 1 and torch.equal(mass[-1], lq)
    torch.testing.assert_close(mass[0][:, 0], torch.zeros(3), atol=1e-5, rtol=0)   # the root: 1
    for d in range(1, trie.n_levels):
        for node in range(trie.n_nodes(d)):
            under = trie.prefix_ids[d] == node
            torch.testing.assert_close(mass[d][:, node], lq[:, under].logsumexp(1))


def test_item_head_fusion_ranks_by_the_product_of_both_experts():
    """Full width: the fused beam ranks every item by log pi(item | x) + w * log q(item | x)
    (checked against teacher-forced scoring); w = 0 is beam search; and a head that puts its
    mass on the item the code softmax likes least brings it into a width-2 beam."""
    codes, vocab, trie, model, tokens, mask = _setup(history="items")
    N, B = len(codes), tokens.shape[0]
    torch.manual_seed(2)
    head_logits = torch.randn(B, N) * 3

    def head(hidden):                      # a fixed head per user (the prefill's batch order)
        return head_logits[:hidden.shape[0]]

    plain = beam_search(model, vocab, trie, tokens, mask, width=6)
    zero = beam_search(model, vocab, trie, tokens, mask, width=6, item_head=head, item_weight=0.0)
    assert torch.equal(plain.items, zero.items) and torch.allclose(plain.scores, zero.scores)
    w = 0.7
    fused = beam_search(model, vocab, trie, tokens, mask, width=N, item_head=head, item_weight=w)
    with torch.no_grad():
        lp = score_candidates(model, vocab, trie, tokens, mask,
                              torch.as_tensor(codes)[None].expand(B, N, -1)).log_probs.sum(-1)
    want = lp + w * torch.log_softmax(head_logits, -1)                             # [B, N]
    for b in range(B):
        assert fused.items[b].tolist() == want[b].argsort(descending=True).tolist()
        torch.testing.assert_close(fused.scores[b], want[b, fused.items[b]], atol=1e-4, rtol=0)
    assert fused.forward_tokens == (vocab.n_levels - 1) * N * B and fused.n_invalid == 0
    worst = lp.argmin(1)                                                           # [B]
    spike = torch.full((B, N), -10.0).scatter(1, worst[:, None], 10.0)
    narrow = beam_search(model, vocab, trie, tokens, mask, width=2,
                         item_head=lambda h: spike[:h.shape[0]], item_weight=10.0)
    plain2 = beam_search(model, vocab, trie, tokens, mask, width=2)
    assert not (plain2.items == worst[:, None]).any()
    assert (narrow.items[:, 0] == worst).all()
    with pytest.raises(ValueError, match="either a value_fn or an item_head"):
        beam_search(model, vocab, trie, tokens, mask, width=2, item_head=head, item_weight=1.0,
                    value_fn=lambda h: torch.zeros(h.shape[0]), value_weight=1.0)
