"""SidTrie: the sparse (CSR) layout gives exactly the dense layout's answers, and both match a
brute force over the catalogue; decoders return identical results on either layout."""

import warnings

import numpy as np
import pytest
import torch

from vstar.decode import SidTrie, beam_search, constrained_sample
from vstar.decode.scoring import score_candidates
from vstar.decode.ved import VEDConfig, value_guided_decode
from vstar.model.value import ValueHead, ValueHeadConfig
from vstar.testing import tiny_setup

LAYOUTS = ("dense", "sparse")


def _catalogue(n, sizes, seed, sparse_codes=False):
    """n distinct random SIDs; ``sparse_codes``: only a few codes of each (large) codebook used."""
    rng = np.random.default_rng(seed)
    if sparse_codes:
        used = [rng.choice(k, size=min(k, 3), replace=False) for k in sizes]
        cols = [u[rng.integers(0, len(u), size=4 * n)] for u in used]
    else:
        cols = [rng.integers(0, k, size=4 * n) for k in sizes]
    codes = np.unique(np.stack(cols, 1), axis=0)
    return codes[rng.permutation(len(codes))[:n]]


def _brute(codes):
    """{prefix tuple: set of next codes} and {SID tuple: item}."""
    nxt, item = {}, {}
    for i, row in enumerate(codes.tolist()):
        for d in range(len(row)):
            nxt.setdefault(tuple(row[:d]), set()).add(row[d])
        item[tuple(row)] = i
    return nxt, item


CASES = [(40, (4, 5, 3), 0, False), (200, (16, 16, 16), 1, False), (30, (1000, 50, 7), 2, True),
         (25, (6,), 3, False), (60, (2, 300, 9, 4), 4, True), (1, (5, 5), 5, False)]


@pytest.mark.parametrize("n,sizes,seed,sparse_codes", CASES)
def test_sparse_equals_dense_equals_brute_force(n, sizes, seed, sparse_codes):
    codes = _catalogue(n, sizes, seed, sparse_codes)
    nxt, item = _brute(codes)
    tries = {lay: SidTrie(codes, list(sizes), layout=lay) for lay in LAYOUTS}
    dense, sparse = tries["dense"], tries["sparse"]
    assert dense.layout == "dense" and sparse.layout == "sparse"
    L = len(sizes)
    for d in range(L):
        assert dense.n_nodes(d) == sparse.n_nodes(d)
        assert torch.equal(dense.prefix_ids[d], sparse.prefix_ids[d])
    # walk every prefix of the catalogue: node ids, allowed codes and children agree
    for lay, trie in tries.items():
        for i, row in enumerate(codes.tolist()):
            node = torch.tensor(0)
            for d in range(L):
                assert int(node) == int(trie.prefix_ids[d][i])
                allowed = trie.allowed(d, node[None])[0]
                assert allowed.shape == (sizes[d],)
                assert set(allowed.nonzero().flatten().tolist()) == nxt[tuple(row[:d])], lay
                node = trie.step(d, node, torch.tensor(row[d]))
            assert int(node) == i
    # random (node, code) queries, invalid ones included (-1 nodes, codes out of range)
    rng = np.random.default_rng(seed + 100)
    for d in range(L):
        nodes = torch.as_tensor(rng.integers(-2, dense.n_nodes(d) + 2, size=(7, 11)))
        cds = torch.as_tensor(rng.integers(-2, sizes[d] + 2, size=(7, 11)))
        a_d, a_s = dense.allowed(d, nodes), sparse.allowed(d, nodes)
        assert a_d.shape == a_s.shape == (7, 11, sizes[d]) and a_d.dtype == torch.bool
        assert torch.equal(a_d, a_s)
        bad = (nodes < 0) | (nodes >= dense.n_nodes(d))
        assert not a_s[bad].any()
        s_d, s_s = dense.step(d, nodes, cds), sparse.step(d, nodes, cds)
        assert torch.equal(s_d, s_s)
        assert (s_s[bad | (cds < 0) | (cds >= sizes[d])] == -1).all()
        # step agrees with allowed where both are defined
        inside = ~bad & (cds >= 0) & (cds < sizes[d])
        gathered = a_s[inside].gather(1, cds[inside][:, None]).squeeze(1)
        assert torch.equal(gathered, s_s[inside] >= 0)
    # item_of: catalogue SIDs, random SIDs (mostly absent), out-of-range codes
    q = np.concatenate([codes, np.stack([rng.integers(-1, k + 1, size=300) for k in sizes], 1)])
    want = torch.tensor([item.get(tuple(r), -1) for r in q.tolist()])
    for trie in tries.values():
        assert torch.equal(trie.item_of(torch.as_tensor(q)), want)
        assert trie.item_of(torch.as_tensor(q).reshape(-1, 1, L)).shape == (len(q), 1)


def test_depth_zero_and_auto_threshold():
    codes = _catalogue(50, (64, 4, 4), 7)
    for lay in LAYOUTS:
        trie = SidTrie(codes, [64, 4, 4], layout=lay)
        assert trie.n_nodes(0) == 1
        root = trie.allowed(0, torch.zeros(3, dtype=torch.long))
        assert torch.equal(root[0], torch.isin(torch.arange(64), torch.as_tensor(codes[:, 0])))
        assert torch.equal(root[0], root[2])
    small = SidTrie(codes, [64, 4, 4])
    assert small.layout == "dense"                        # tiny: dense below the threshold
    assert SidTrie(codes, [64, 4, 4], dense_max_bytes=100).layout == "sparse"
    with pytest.raises(AttributeError, match="dense layout"):
        SidTrie(codes, [64, 4, 4], layout="sparse").children
    with pytest.raises(ValueError, match="layout"):
        SidTrie(codes, [64, 4, 4], layout="csr")


def test_sparse_trie_rejects_collisions_and_bad_codes_like_dense():
    for lay in LAYOUTS:
        with pytest.raises(ValueError, match="collide"):
            SidTrie(np.array([[0, 1], [0, 1]]), [2, 2], layout=lay)
        with pytest.raises(ValueError, match="lie in"):
            SidTrie(np.array([[0, 5]]), [2, 2], layout=lay)


def test_large_codebooks_stay_small_in_the_sparse_layout():
    codes = _catalogue(2000, (8192, 8192, 8192), 11)
    trie = SidTrie(codes, [8192] * 3)
    assert trie.layout == "sparse"
    assert trie.nbytes() < 200_000                       # dense would be ~130 MB
    assert torch.equal(trie.item_of(torch.as_tensor(codes)), torch.arange(2000))


def _both(seed=0, n_items=60, sizes=(6, 6, 4)):
    codes, vocab, dense, model, tokens, mask = tiny_setup(n_items=n_items, sizes=sizes, seed=seed,
                                                          n_users=6)
    return codes, vocab, SidTrie(codes, list(sizes), layout="dense"), \
        SidTrie(codes, list(sizes), layout="sparse"), model, tokens, mask


def test_decoders_identical_on_both_layouts():
    codes, vocab, dense, sparse, model, tokens, mask = _both()
    for W in (5, 20):
        a = beam_search(model, vocab, dense, tokens, mask, W)
        b = beam_search(model, vocab, sparse, tokens, mask, W)
        assert torch.equal(a.items, b.items) and torch.equal(a.codes, b.codes)
        assert torch.equal(a.scores, b.scores) and a.n_invalid == b.n_invalid == 0
    samples = [constrained_sample(model, vocab, t, tokens, mask, 8,
                                  generator=torch.Generator().manual_seed(3))
               for t in (dense, sparse)]
    assert torch.equal(samples[0].items, samples[1].items)
    assert torch.equal(samples[0].scores, samples[1].scores)
    cand = torch.as_tensor(codes[:5])[None].expand(tokens.shape[0], 5, 3).clone()
    cand[:, -1] = -1                                      # a padding row
    s = [score_candidates(model, vocab, t, tokens, mask, cand) for t in (dense, sparse)]
    assert torch.equal(s[0].log_probs, s[1].log_probs) and torch.equal(s[0].entropy, s[1].entropy)
    torch.manual_seed(0)
    head = ValueHead(model.hidden_size, ValueHeadConfig(hidden=16, init_std=0.5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cfg in (VEDConfig(budget=16, init_beam=4), VEDConfig(leaf_score="logp", budget=24)):
            r = [value_guided_decode(model, head, vocab, t, tokens, mask, 10, cfg)
                 for t in (dense, sparse)]
            assert torch.equal(r[0].items, r[1].items) and torch.equal(r[0].scores, r[1].scores)
            assert torch.equal(r[0].codes, r[1].codes)
            assert torch.equal(r[0].tokens_per_user, r[1].tokens_per_user)
            assert r[0].n_invalid == r[1].n_invalid == 0
