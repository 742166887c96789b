"""Search-tree pictures (vstar.eval.trees): the trees are the decoders' own, laid out and
coloured as documented."""

import math

import torch

from vstar.decode.beam import beam_search
from vstar.decode.config import VEDConfig
from vstar.decode.ved import value_guided_decode
from vstar.eval.trees import (_colour, beam_tree_nodes, layout_tree, prefix_values, tree_svg,
                              ved_tree_nodes)
from vstar.model.value import ValueHead, ValueHeadConfig
from vstar.testing import tiny_setup


def _decode(W=4):
    codes, vocab, trie, model, tokens, mask = tiny_setup(n_items=40, sizes=(4, 5, 3), n_users=3)
    torch.manual_seed(1)
    head = ValueHead(model.hidden_size, ValueHeadConfig(hidden=16, init_std=0.5)).eval()
    trace = []
    beam = beam_search(model, vocab, trie, tokens, mask, W, trace=trace)
    cfg = VEDConfig(init_beam=2, lam=0.1, beta=1.0)
    ved = value_guided_decode(model, head, vocab, trie, tokens, mask, W, cfg)
    return codes, vocab, trie, model, tokens, mask, head, trace, beam, ved


def test_beam_trace_holds_every_depths_beam_and_ends_with_the_result():
    codes, vocab, trie, model, tokens, mask, head, trace, beam, ved = _decode(W=4)
    assert [c.shape[2] for c, _ in trace] == [1, 2, 3]
    assert torch.equal(trace[-1][0], beam.codes) and torch.equal(trace[-1][1], beam.scores)
    again = beam_search(model, vocab, trie, tokens, mask, 4)          # tracing changes nothing
    assert torch.equal(again.items, beam.items) and torch.equal(again.scores, beam.scores)
    for d in range(1, 3):                  # each beam prefix extends one of the previous depth's
        prev = {tuple(p) for p in trace[d - 1][0][0].tolist()}
        assert all(tuple(p[:-1]) in prev for p in trace[d][0][0].tolist())


def test_beam_tree_nodes_are_the_beams_with_subtree_counts_and_ranked_items():
    codes, vocab, trie, model, tokens, mask, head, trace, beam, ved = _decode(W=4)
    target = codes[int(beam.items[0, 1])]                           # beam's 2nd item: a hit
    nodes = beam_tree_nodes(trace, beam, 0, target.tolist(), int(beam.items[0, 1]))
    inner = [n for n in nodes if n["origin"] != "item"]
    items = [n for n in nodes if n["origin"] == "item"]
    assert len(inner) == 1 + 4 + 4 and [n["rank"] for n in items] == [1, 2, 3, 4]
    assert nodes[0]["N"] == len(inner)                               # root: the whole tree
    for n in nodes[1:]:
        assert nodes[n["parent"]]["prefix"] == n["prefix"][:-1]
    for n in inner:                     # N = 1 + N of the children (subtree size)
        kids = [k["N"] for k in inner if k["parent"] == n["id"]]
        assert n["N"] == 1 + sum(kids)
    hit = [n for n in items if n["on_target"]]
    assert len(hit) == 1 and hit[0]["rank"] == 2
    assert sum(n["on_target"] for n in inner) == 3                   # root, depth 1, depth 2


def test_ved_tree_nodes_are_its_tree_plus_its_returned_items():
    codes, vocab, trie, model, tokens, mask, head, trace, beam, ved = _decode(W=4)
    item = int(ved.items[1, 0])
    nodes = ved_tree_nodes(ved, 1, codes[item].tolist(), item)
    inner = [n for n in nodes if n["origin"] != "item"]
    assert len(inner) == int(ved.tree.n_nodes[1])
    assert {n["origin"] for n in inner} <= {"root", "init", "expansion"}
    assert [n["item"] for n in nodes if n["origin"] == "item"] == \
        [i for i in ved.items[1].tolist() if i >= 0]
    assert nodes[0]["N"] == len(inner) and [n["rank"] for n in nodes if n["on_target"]
                                            and n["origin"] == "item"] == [1]


def test_beam_nodes_are_coloured_with_the_value_ved_reads_at_the_same_prefix():
    codes, vocab, trie, model, tokens, mask, head, trace, beam, ved = _decode(W=4)
    ved_v = {tuple(n["prefix"]): n["V"] for n in ved.tree.nodes(0) if n["evaluated"]}
    prefixes = [[()] + [tuple(p) for p in trace[0][0][0].tolist()]]
    values = prefix_values(model, head, vocab, trie, tokens[:1], mask[:1], prefixes)[0]
    shared = [p for p in values if p in ved_v]
    assert () in shared and len(shared) >= 2                          # root + VED's initial beam
    for p in shared:
        assert math.isclose(values[p], ved_v[p], rel_tol=1e-4, abs_tol=1e-5), p


def test_layout_puts_children_by_rank_then_log_prob_and_parents_at_their_mean_row():
    def node(i, parent, depth, logp, **kw):
        return {"id": i, "parent": parent, "depth": depth, "prefix": [i], "V": 0.0, "N": 1,
                "log_prob": logp, "origin": kw.get("origin", "beam"), "on_target": False, **kw}
    nodes = [node(0, -1, 0, 0.0), node(1, 0, 1, -2.0), node(2, 0, 1, -1.0),
             node(3, 2, 2, -3.0, origin="item", rank=2, item=7),
             node(4, 2, 2, -1.5, origin="item", rank=1, item=8)]
    pos = layout_tree(nodes)
    # node 2 (more probable) first: its items by rank (4 then 3), then node 1 (no children)
    assert pos == {4: (2, 0.0), 3: (2, 1.0), 2: (1, 0.5), 1: (1, 2.0), 0: (0, 1.25)}
    svg = tree_svg(nodes, 0.0, 1.0, {7: "seven", 8: "eight"})
    assert svg.count("<circle") == 3 and svg.count("<rect") == 2
    assert "#1 eight" in svg and "#2 seven" in svg


def test_colours_run_from_blue_through_white_to_red_and_grey_without_a_value():
    assert _colour(0.0, 0.0, 2.0) == "#3168b0"
    assert _colour(1.0, 0.0, 2.0) == "#f7f7f7"
    assert _colour(2.0, 0.0, 2.0) == "#c4342f"
    assert _colour(5.0, 0.0, 2.0) == "#c4342f"                          # clipped
    assert _colour(float("nan"), 0.0, 2.0) == "#d0d0d0"
