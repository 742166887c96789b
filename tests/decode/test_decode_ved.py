import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from vstar.data.types import SplitRows
from vstar.decode import SidTrie, beam_search
from vstar.decode.rank import rank_rows
from vstar.decode.scoring import score_candidates
from vstar.core.errors import InputError
from vstar.model import ModelConfig, GeneratorOutput, KVCache, SidGenerator, SidVocab
from vstar.model.vocab import BOS
from vstar.testing import CountingLM, tiny_setup
from vstar.decode.ved import EXPANSION, INIT, VEDConfig, make_ved_decoder, value_guided_decode
from vstar.model.value import ValueHead, ValueHeadConfig




_setup = tiny_setup


def _head(d=32, seed=0):
    torch.manual_seed(seed)
    return ValueHead(d, ValueHeadConfig(hidden=16, init_std=0.5)).eval()



def _ved(model, head, vocab, trie, tokens, mask, n, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return value_guided_decode(model, head, vocab, trie, tokens, mask, n, VEDConfig(**cfg))


def _check_items(res, trie):
    for b in range(res.items.shape[0]):
        row = [i for i in res.items[b].tolist() if i >= 0]
        assert len(row) == len(set(row)), "items must be distinct per user"
        ok = res.items[b] >= 0
        assert (trie.item_of(res.codes[b][ok]) == res.items[b][ok]).all()
        assert (res.codes[b][~ok] == -1).all()
    assert res.n_invalid == 0


# ----------------------------------------------------------------------------- budget and cost


@pytest.mark.parametrize("budget,init_beam,n_users", [(4, 1, 1), (7, 3, 5), (13, 8, 5),
                                                      (30, 2, 3), (10, 4, 2)])
def test_budget_is_never_exceeded_and_forward_tokens_are_counted_exactly(budget, init_beam, n_users):
    codes, vocab, trie, model, tokens, mask = _setup(n_users=n_users)
    counter = CountingLM(model)
    res = _ved(counter, _head(), vocab, trie, tokens, mask, 6, budget=budget, init_beam=init_beam,
               expansions_per_round=3)
    assert (res.tokens_per_user <= budget).all()
    assert res.forward_tokens == counter.decode_tokens == int(res.tokens_per_user.sum())
    assert (res.budget == budget).all()
    # every node of depth >= 1 cost exactly one token
    tree = res.tree
    assert ((tree.depth >= 1).sum(1) == res.tokens_per_user).all()
    assert (tree.evaluated.sum(1) == tree.n_nodes).all()
    # a user stops early only when its tree has nothing left to expand (4 + 20 internal nodes max)
    n_internal = trie.n_nodes(1) + trie.n_nodes(2)
    assert ((res.tokens_per_user == budget) | (res.tokens_per_user == n_internal)).all()
    _check_items(res, trie)


def test_expansions_beyond_the_initial_tree_happen_and_are_counted():
    codes, vocab, trie, model, tokens, mask = _setup()
    res = _ved(model, _head(), vocab, trie, tokens, mask, 8, init_beam=2)   # budget 16, init 4
    assert res.init_beam == 2
    assert (res.tokens_per_user == 16).all()
    assert (res.n_expansions == 12).all()
    assert ((res.tree.origin == EXPANSION).sum(1) == res.n_expansions).all()
    assert ((res.tree.origin == INIT).sum(1) == 4).all()                # (L-1) * init_beam
    # some expansions create new first codes (root widening), some go deeper
    exp = res.tree.origin == EXPANSION
    assert ((res.tree.depth == 1) & exp).any() and ((res.tree.depth == 2) & exp).any()


def test_an_initial_beam_that_eats_the_budget_is_shrunk_so_that_expansion_happens():
    codes, vocab, trie, model, tokens, mask = _setup()
    with pytest.warns(UserWarning, match="shrunk to 2"):
        res = value_guided_decode(model, _head(), vocab, trie, tokens, mask, 4,
                                  VEDConfig(init_beam=8))                # budget 8 <= 2 * 8
    assert res.init_beam == 2
    assert (res.n_expansions == 4).all() and (res.tokens_per_user == 8).all()


def test_budget_multiplier_and_explicit_budget():
    codes, vocab, trie, model, tokens, mask = _setup()
    res = _ved(model, _head(), vocab, trie, tokens, mask, 4, init_beam=2, budget_multiplier=1.5)
    assert (res.budget == 12).all() and (res.tokens_per_user == 12).all()
    res = _ved(model, _head(), vocab, trie, tokens, mask, 4, init_beam=2, budget=9)
    assert (res.budget == 9).all() and (res.tokens_per_user == 9).all()
    with pytest.raises(InputError, match="budget"):
        _ved(model, _head(), vocab, trie, tokens, mask, 4, budget=1)     # cannot reach an item


# ----------------------------------------------------------------------------- tree semantics


def test_node_values_and_entropies_equal_teacher_forced_states():
    """The KV cache VED assembles ([history | ancestors] per node) gives the same V, H and
    log-probs as teacher-forced scoring of the same state s = (x, prefix)."""
    codes, vocab, trie, model, tokens, mask = _setup()
    head = _head()
    res = _ved(model, head, vocab, trie, tokens, mask, 8, init_beam=2)
    tree = res.tree
    cat = torch.as_tensor(codes)
    for b in range(tokens.shape[0]):
        ms = list(range(int(tree.n_nodes[b])))
        cand = []
        for m in ms:                                 # any catalogue item below the node's prefix
            d = int(tree.depth[b, m])
            under = (cat[:, :d] == tree.codes[b, m, :d]).all(1).nonzero()[0, 0]
            cand.append(cat[under])
        cand = torch.stack(cand)[None]               # [1, n, L]
        with torch.no_grad():
            sc = score_candidates(model, vocab, trie, tokens[b:b + 1], mask[b:b + 1], cand)
            for i, m in enumerate(ms):
                d = int(tree.depth[b, m])
                assert torch.allclose(tree.value[b, m], head(sc.hidden[0, i, d]), atol=1e-4)
                assert torch.allclose(tree.entropy[b, m], sc.entropy[0, i, d], atol=1e-4)
                assert torch.allclose(tree.log_prob[b, m], sc.log_probs[0, i, :d].sum(), atol=1e-4)
                assert torch.allclose(tree.priority[b, m],
                                      tree.value[b, m] + 0.1 * tree.entropy[b, m], atol=1e-6)


def test_visit_counts_are_subtree_sizes():
    codes, vocab, trie, model, tokens, mask = _setup()
    tree = _ved(model, _head(), vocab, trie, tokens, mask, 8, init_beam=2).tree
    for b in range(tokens.shape[0]):
        n = int(tree.n_nodes[b])
        size = [1] * n
        for m in sorted(range(1, n), key=lambda m: -int(tree.depth[b, m])):
            size[int(tree.parent[b, m])] += size[m]
        assert tree.visits[b, :n].tolist() == size


def test_every_expansion_passes_the_gate_of_eq14():
    """G(parent) >= mean G of the expansion candidates at the parent's depth when it was expanded,
    recomputed here from the tree: the nodes of earlier rounds (evaluated) at that depth that still
    had a trie-valid child outside the tree at that moment."""
    codes, vocab, trie, model, tokens, mask = _setup(sizes=(6, 6, 3), n_items=90, n_users=6)
    cat = torch.as_tensor(codes)
    head = _head(seed=1)
    res = _ved(model, head, vocab, trie, tokens, mask, 10, init_beam=3, lam=0.5,
               expansions_per_round=2)
    tree = res.tree
    deep, gated_out = 0, 0
    for b in range(tokens.shape[0]):
        n = int(tree.n_nodes[b])
        n_valid = [len({tuple(c) for c in cat[(cat[:, :int(tree.depth[b, x])] ==
                                               tree.codes[b, x, :int(tree.depth[b, x])]).all(1),
                                           : int(tree.depth[b, x]) + 1].tolist()})
                   for x in range(n)]
        for m in range(n):
            if int(tree.origin[b, m]) != EXPANSION:
                continue
            p, r, t = int(tree.parent[b, m]), int(tree.round[b, m]), int(tree.step[b, m])
            d = int(tree.depth[b, p])
            peers = [x for x in range(n) if int(tree.depth[b, x]) == d and int(tree.round[b, x]) < r
                     and int(((tree.parent[b, :n] == x) & (tree.step[b, :n] < t)).sum()) < n_valid[x]]
            assert p in peers
            mean = tree.priority[b, peers].mean()
            assert torch.allclose(tree.gate_mean[b, m], mean, atol=1e-5)
            assert torch.allclose(tree.gate_priority[b, m], tree.priority[b, p])
            assert tree.priority[b, p] >= mean - 1e-5
            deep += d >= 1
            gated_out += int((tree.priority[b, peers] < mean - 1e-4).sum())
    assert deep > 0            # the gate was exercised below the root ...
    assert gated_out > 0       # ... where some candidates fell below their depth's mean


def test_returned_items_are_valid_distinct_and_ranked_by_the_leaf_score():
    codes, vocab, trie, model, tokens, mask = _setup()
    head = _head()
    for leaf_score in ("value_plus_logp", "value", "logp"):
        res = _ved(model, head, vocab, trie, tokens, mask, 6, init_beam=2, leaf_score=leaf_score)
        _check_items(res, trie)
        assert (res.items >= 0).all() and (res.n_complete >= 6).all()
        assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
        # the returned log-probs are the items' true constrained log-probs
        with torch.no_grad():
            lp = score_candidates(model, vocab, trie, tokens, mask, res.codes).log_probs.sum(-1)
        assert torch.allclose(res.log_probs, lp, atol=1e-4)
        if leaf_score == "logp":
            assert torch.allclose(res.scores, res.log_probs)


def test_too_few_complete_items_are_padded_with_minus_one():
    codes = np.array([[0, 0], [0, 1], [1, 0]])
    vocab, trie = SidVocab([2, 2]), SidTrie(codes, [2, 2])
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=1, n_embd=8, dropout=0.0), vocab_size=vocab.size, block_size=16).eval()
    tokens, mask = vocab.encode_histories([np.array([0])], torch.as_tensor(codes))
    res = _ved(model, _head(8), vocab, trie, tokens, mask, 5, init_beam=1)
    assert sorted(res.items[0, :3].tolist()) == [0, 1, 2]
    assert res.items[0, 3:].tolist() == [-1, -1] and int(res.n_complete[0]) == 3
    assert torch.isinf(res.scores[0, 3:]).all() and (res.codes[0, 3:] == -1).all()
    assert int(res.tokens_per_user[0]) == 2          # the whole trie: 2 first codes


# ----------------------------------------------------------------------------- planted item


class PlantedLM(nn.Module):
    """A fake SidLM with hand-set next-code logits and a hidden state that encodes the prefix.

    Its "KV cache" is one layer whose keys are the token ids, so it sees the whole sequence.
    Level 1: codes 0 and 1 are likely, c* = 2 gets tiny mass, 3.. even less. Below c* the policy
    prefers the planted path. hidden = [prefix is a non-empty prefix of the planted SID, depth].
    """

    def __init__(self, vocab: SidVocab, planted: tuple[int, ...],
                 first_logits: torch.Tensor | None = None):
        super().__init__()
        self.vocab, self.planted = vocab, planted
        self.L = vocab.n_levels
        self.first_logits = first_logits             # level-1 logits (default: see above)

    @property
    def hidden_size(self):
        return 2

    def _level(self, tok: int) -> int:
        for l in range(self.L):
            s = self.vocab.level_slice(l)
            if s.start <= tok < s.stop:
                return l
        return -1

    def _prefix(self, seq: list[int]) -> tuple[int, ...]:
        pre = []
        for tok in reversed(seq):
            l = self._level(tok)
            if tok == BOS or l == self.L - 1 or l < 0:
                break
            pre.append(tok - self.vocab.offsets[l])
        return tuple(reversed(pre))

    def _out(self, prefix):
        V, d = self.vocab.size, len(prefix)
        logits = torch.full((V,), -30.0)
        sl = self.vocab.level_slice(d)
        K = sl.stop - sl.start
        if d == 0 and self.first_logits is not None:
            lv = self.first_logits
        elif d == 0:
            lv = torch.tensor([3.0, 2.9, -4.0] + [-9.0] * (K - 3))
        elif prefix[0] == self.planted[0]:
            lv = torch.zeros(K)
            lv[self.planted[d]] = 2.0
        else:
            lv = torch.zeros(K)
            lv[0] = 2.0
        logits[sl] = lv
        on_path = float(d > 0 and prefix == self.planted[:d])
        return logits, torch.tensor([on_path, float(d)])

    def forward(self, tokens, cache=None, pad_mask=None):
        B, T = tokens.shape
        if pad_mask is None:
            pad_mask = torch.ones(B, T, dtype=torch.bool)
        past = cache.keys[0][:, 0, :, 0].long() if cache is not None else tokens[:, :0]
        ids = torch.cat([past, tokens], 1)
        full = torch.cat([cache.mask, pad_mask], 1) if cache is not None else pad_mask
        P = past.shape[1]
        logits, hidden = torch.zeros(B, T, self.vocab.size), torch.zeros(B, T, 2)
        for b in range(B):
            for t in range(T):
                seq = ids[b, : P + t + 1][full[b, : P + t + 1]].tolist()
                logits[b, t], hidden[b, t] = self._out(self._prefix(seq))
        kv = ids.float()[:, None, :, None]                    # [B, 1, T_all, 1]
        next_pos = full.long().sum(1)
        return GeneratorOutput(logits, hidden, KVCache([kv], [kv], full, next_pos))


def _planted_setup(n_users=3):
    sizes = [6, 3, 3]
    vocab = SidVocab(sizes)
    codes = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, 3)
    trie = SidTrie(codes, sizes)
    planted = (2, 1, 2)
    model = PlantedLM(vocab, planted)
    histories = [np.arange(1 + u) for u in range(n_users)]            # different lengths
    tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes))
    item = int(trie.item_of(torch.tensor(planted)))
    return vocab, trie, model, tokens, mask, item


@pytest.mark.parametrize("expansions_per_round", [1, 2, 4])
def test_ved_finds_a_planted_item_behind_a_low_probability_first_code_and_beam_does_not(
        expansions_per_round):
    vocab, trie, model, tokens, mask, item = _planted_setup()
    n, budget = 4, 12                                         # beam of width 12 / (L-1) = 6
    value_fn = lambda h: 20.0 * h[:, 0]                       # noqa: E731  the planted path
    res = _ved(model, value_fn, vocab, trie, tokens, mask, n, init_beam=2, budget=budget,
               expansions_per_round=expansions_per_round)
    beam = beam_search(model, vocab, trie, tokens, mask, width=budget // 2)
    assert (res.tokens_per_user == budget).all()
    assert beam.forward_tokens == budget * tokens.shape[0]
    for b in range(tokens.shape[0]):
        assert item in res.items[b].tolist()
        assert int(res.items[b, 0]) == item                     # ranked first by its value
        assert item not in beam.items[b].tolist()
    # the planted first code entered the tree by an expansion of the root, not by the beam
    tree = res.tree
    star = (tree.depth == 1) & (tree.codes[:, :, 0] == 2)
    assert (star.sum(1) == 1).all() and (tree.origin[star] == EXPANSION).all()
    # a value function that does not point there leaves VED with the likely items
    flat = _ved(model, lambda h: torch.zeros(h.shape[0]), vocab, trie, tokens, mask, n,
                init_beam=2, budget=budget, expansions_per_round=expansions_per_round)
    assert all(item not in flat.items[b].tolist() for b in range(tokens.shape[0]))


# ----------------------------------------------------------------------------- default configuration


def _root_widenings(tree):
    """Expansions whose parent is the root, counted from the tree itself."""
    return ((tree.origin == EXPANSION) & (tree.depth == 1)).sum(1)


def test_at_the_default_configuration_ved_opens_the_first_code_the_value_prefers():
    """VEDConfig() and G = 16 (init beam 8, budget 32 = beam-16's cost, L = 3, 16 first codes).
    The prior ranks first codes 0 > 1 > ... > 15, so the initial beam holds 0..7; the planted item
    (8, 1, 2) sits behind the most probable first code the beam left out, and the value is high on
    its path only. VED must widen the root (docs/method.md section 3, "widen arm"), find V there and
    return the planted item first, within its budget; beam search of width 16 (same cost) ranks
    it nowhere near the top."""
    sizes = [16, 4, 4]
    vocab = SidVocab(sizes)
    codes = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, 3)
    trie = SidTrie(codes, sizes)
    planted = (8, 1, 2)
    model = CountingLM(PlantedLM(vocab, planted, first_logits=-0.4 * torch.arange(16.0)))
    tokens, mask = vocab.encode_histories([np.arange(1 + u) for u in range(3)],
                                          torch.as_tensor(codes))
    item = int(trie.item_of(torch.tensor(planted)))
    value_fn = lambda h: 20.0 * h[:, 0]                       # noqa: E731  the planted path
    cfg = VEDConfig()
    assert (cfg.init_beam, cfg.lam, cfg.beta, cfg.budget, cfg.budget_multiplier) == \
        (8, 0.1, 1.0, None, 1.0)                              # the defaults this test is about
    res = value_guided_decode(model, value_fn, vocab, trie, tokens, mask, 16, cfg)
    assert res.init_beam == 8 and (res.budget == 32).all()
    widened = _root_widenings(res.tree)
    assert (widened > 0).all()                                # the root was widened ...
    star = (res.tree.depth == 1) & (res.tree.codes[:, :, 0] == planted[0])
    assert (star.sum(1) == 1).all() and (res.tree.origin[star] == EXPANSION).all()
    assert (res.items[:, 0] == item).all()                    # ... and the value steered there
    assert torch.equal(res.widenings[:, 0], widened) and torch.equal(res.root_widenings, widened)
    assert (res.tokens_per_user <= res.budget).all()
    assert res.forward_tokens == model.decode_tokens == int(res.tokens_per_user.sum())
    beam = beam_search(model.model, vocab, trie, tokens, mask, width=16)
    assert all(item not in beam.items[b, :8].tolist() for b in range(3))


def test_at_the_default_configuration_an_untrained_head_still_widens_the_root_within_budget():
    """A random generator, the default (untrained, V ~ 0) value head, VEDConfig(), G = 16: every
    user's root is widened at least once and the budget (32 tokens) is spent exactly, never
    exceeded; the counters VED returns match its tree."""
    codes, vocab, trie, model, tokens, mask = _setup(n_items=150, sizes=(16, 4, 4), n_users=8)
    counter = CountingLM(model)
    torch.manual_seed(0)
    head = ValueHead(model.hidden_size).eval()                # ValueHeadConfig() defaults
    res = value_guided_decode(counter, head, vocab, trie, tokens, mask, 16, VEDConfig())
    widened = _root_widenings(res.tree)
    assert (widened > 0).all()
    assert torch.equal(res.root_widenings, widened)
    exp = res.tree.origin == EXPANSION
    per_depth = torch.stack([(exp & (res.tree.depth == d + 1)).sum(1) for d in range(2)], 1)
    assert torch.equal(res.widenings, per_depth)
    assert torch.equal(res.widenings.sum(1), res.n_expansions)
    assert (res.tokens_per_user == 32).all() and (res.budget == 32).all()
    assert res.forward_tokens == counter.decode_tokens
    first = [len({c for c in res.codes[b, :, 0].tolist() if c >= 0}) for b in range(8)]
    assert res.distinct_first_codes.tolist() == first
    _check_items(res, trie)
    # the ablation that counts the initial beam's children as pulls never widens the root here
    old = value_guided_decode(model, head, vocab, trie, tokens, mask, 16,
                              VEDConfig(widen_pulls="children"))
    assert (old.root_widenings == 0).all() and (old.tokens_per_user == 32).all()


# ----------------------------------------------------------------------------- degenerate case


def test_without_value_entropy_and_exploration_ved_is_a_likelihood_greedy_search():
    """lam = 0, beta = 0, constant V: every U and G ties, ties go to the likelier prefix, so all
    expansions add the next most probable second codes under the top first code, and the items
    are ranked by log-probability; VED's top-k never falls below beam_search(init_beam)'s."""
    codes, vocab, trie, model, tokens, mask = _setup(sizes=(3, 8, 2), full=True)
    const = lambda h: torch.full((h.shape[0],), 0.25)         # noqa: E731
    res = _ved(model, const, vocab, trie, tokens, mask, 4, init_beam=2, lam=0.0, beta=0.0,
               leaf_score="value_plus_logp")
    beam = beam_search(model, vocab, trie, tokens, mask, width=2)
    assert torch.allclose(res.scores, res.log_probs + 0.25)
    assert (res.log_probs[:, :2] >= beam.scores - 1e-5).all()
    tree = res.tree
    for b in range(tokens.shape[0]):
        d1 = ((tree.depth[b] == 1) & (tree.origin[b] == INIT)).nonzero().squeeze(1)
        top = int(d1[tree.log_prob[b, d1].argmax()])
        exp = (tree.origin[b] == EXPANSION).nonzero().squeeze(1)
        exp = exp[tree.step[b, exp].argsort()]
        assert len(exp) == 4
        assert (tree.parent[b, exp] == top).all()
        lp = tree.log_prob[b, exp]
        assert (lp[:-1] >= lp[1:]).all()                      # most probable child first
        # the children of `top` in the tree (beam's + expansions') are its most probable ones
        kids = (tree.parent[b] == top).nonzero().squeeze(1)
        with torch.no_grad():
            prefix = tree.codes[b, top, 0]
            cand = torch.as_tensor(codes)[torch.as_tensor(codes)[:, 0] == prefix]   # [16, 3]
            sc = score_candidates(model, vocab, trie, tokens[b:b + 1], mask[b:b + 1], cand[None])
            two = sc.log_probs[0, :, :2].sum(-1)              # log pi(c1, c2 | x) per item
        in_tree = set(tuple(tree.codes[b, m, :2].tolist()) for m in kids.tolist())
        prefixes = {tuple(c[:2]): float(two[i]) for i, c in enumerate(cand.tolist())}
        ranked = sorted(prefixes, key=lambda k: -prefixes[k])
        assert set(ranked[: len(in_tree)]) == in_tree         # a top-by-probability set


# ----------------------------------------------------------------------------- API


def test_sampled_children_are_reproducible_and_valid():
    codes, vocab, trie, model, tokens, mask = _setup()
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(3)
        res = value_guided_decode(model, _head(), vocab, trie, tokens, mask, 6,
                                  VEDConfig(init_beam=2, child_choice="sample"), generator=g)
        _check_items(res, trie)
        assert (res.tokens_per_user <= 12).all()
        runs.append(res.items)
    assert torch.equal(runs[0], runs[1])


def test_ved_decoder_plugs_into_rank_rows():
    codes, vocab, trie, model, tokens, mask = _setup()
    rng = np.random.default_rng(0)
    rows = SplitRows(np.arange(7), [rng.integers(0, 40, size=3) for _ in range(7)],
                     rng.integers(0, 40, size=7))
    decoder = make_ved_decoder(_head(), 5, VEDConfig(init_beam=2))
    ranked, cost = rank_rows(model, vocab, trie, rows, width=5, batch_size=3, decoder=decoder)
    assert ranked.shape == (7, 5) and (ranked >= 0).all()
    assert all(len(set(r)) == 5 for r in ranked.tolist())
    assert cost["decode_forward_tokens_per_user"] == 10 and cost["n_invalid"] == 0


def test_config_is_omegaconf_structured_and_validated():
    cfg = OmegaConf.merge(OmegaConf.structured(VEDConfig),
                          OmegaConf.from_dotlist(["budget=40", "lam=0.0", "child_choice=sample"]))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, VEDConfig) and obj.budget == 40 and obj.lam == 0.0
    assert OmegaConf.to_object(OmegaConf.structured(VEDConfig)).budget is None
    codes, vocab, trie, model, tokens, mask = _setup(n_users=1)
    for bad, field in [({"leaf_score": "max"}, "leaf_score"), ({"init_beam": 0}, "init_beam"),
                       ({"child_choice": "greedy"}, "child_choice"), ({"beta": -1.0}, "beta"),
                       ({"widen_pulls": "all"}, "widen_pulls")]:
        with pytest.raises(InputError, match=field):
            value_guided_decode(model, _head(), vocab, trie, tokens, mask, 4, VEDConfig(**bad))


def test_enough_complete_items_are_reserved_when_each_prefix_holds_one_item():
    """Every depth-2 prefix holds a single item, so items cost one token each: VED keeps enough
    of its budget to return n_candidates items although exploration (large beta) widens the root."""
    sizes = (6, 6, 2)
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(6), indexing="ij"), -1).reshape(-1, 2)
    codes = np.concatenate([grid, np.zeros((36, 1), dtype=grid.dtype)], 1)   # (c1, c2, 0)
    vocab, trie = SidVocab(list(sizes)), SidTrie(codes, list(sizes))
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16, dropout=0.0), vocab_size=vocab.size, block_size=64).eval()
    rng = np.random.default_rng(0)
    tokens, mask = vocab.encode_histories([rng.integers(0, 36, size=3) for _ in range(8)],
                                          torch.as_tensor(codes))
    # init beam: 2 items for 4 tokens; 12 tokens left for 10 more items (without the reserve,
    # 3 root widenings per user left 11 items)
    res = _ved(model, _head(16), vocab, trie, tokens, mask, 12, init_beam=2, budget=16, beta=5.0)
    exp = res.tree.origin == EXPANSION
    assert ((res.tree.depth == 1) & exp).sum() > 0               # the root was widened ...
    assert (res.n_complete >= 12).all() and (res.items >= 0).all()  # ... yet no slot is empty
    assert (res.tokens_per_user == 16).all()
    _check_items(res, trie)
