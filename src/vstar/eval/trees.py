"""Search trees as pictures: what VED and beam search explored for one user (``vstar report``).

    trace = []
    beam = beam_search(model, vocab, trie, tokens, mask, W, trace=trace)
    ved = value_guided_decode(model, value_head, vocab, trie, tokens, mask, W, ved_cfg)
    nodes = ved_tree_nodes(ved, b, target_codes[b])            # user b's tree, a list of dicts
    nodes = beam_tree_nodes(trace, beam, b, target_codes[b], values)
    svg = tree_svg(nodes, vmin, vmax, labels)                  # inline SVG

A node is a dict: ``id``, ``parent`` (-1 for the root), ``depth`` (0 root .. L: an item), ``prefix``
(its codes), ``V`` (value; NaN if not evaluated), ``N`` (visit count: tree nodes of depth <= L-1
in its subtree, itself included, as ``VEDTree.visits``), ``log_prob`` (constrained
log pi(prefix | x)), ``origin`` (root / init / expansion for VED, beam for beam search, item for
the returned items), ``on_target`` (its prefix is a prefix of the target's SID), and for items
``item`` and ``rank`` (1-based position in the returned list).

Both trees are drawn the same way (``tree_svg``): depth left to right, siblings by log pi from
top to bottom, nodes coloured by V on one scale per user, their size by N, the target's path
red; every node has a tooltip with its numbers.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

import torch

from vstar.decode.scoring import score_candidates
from vstar.decode.trie import SidTrie
from vstar.decode.ved import VEDResult
from vstar.model.interface import SidLM
from vstar.model.vocab import SidVocab

LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _on_target(prefix: Sequence[int], target: Sequence[int]) -> bool:
    return list(prefix) == list(target[:len(prefix)])


def _add_items(nodes: list[dict], items: Sequence[int], codes: Sequence[Sequence[int]],
               scores: Sequence[float], target_item: int, target: Sequence[int]) -> None:
    """The returned items as leaves under their depth-(L-1) prefix node (rank = list position)."""
    by_prefix = {tuple(n["prefix"]): n["id"] for n in nodes}
    for rank, (item, code, score) in enumerate(zip(items, codes, scores), start=1):
        if item < 0:
            continue
        parent = by_prefix.get(tuple(code[:-1]))
        if parent is None:                         # cannot happen for a tree decoder's item
            continue
        nodes.append({"id": len(nodes), "parent": parent, "depth": len(code),
                      "prefix": list(code), "V": math.nan, "N": 0, "log_prob": float(score),
                      "origin": "item", "on_target": int(item) == int(target_item),
                      "item": int(item), "rank": rank})


def _subtree_counts(nodes: list[dict]) -> None:
    """N of every non-item node: the non-item nodes in its subtree, itself included."""
    for n in nodes:
        if n["origin"] != "item":
            n["N"] = 0
    for n in nodes:
        if n["origin"] == "item":
            continue
        m = n
        while True:
            m["N"] += 1
            if m["parent"] < 0:
                break
            m = nodes[m["parent"]]


def ved_tree_nodes(res: VEDResult, b: int, target_codes: Sequence[int],
                   target_item: int) -> list[dict]:
    """User ``b``'s VED tree (``VEDResult.tree``) plus its returned items, as node dicts."""
    target = [int(c) for c in target_codes]
    nodes = []
    for n in res.tree.nodes(b):                     # ids are the tree's slots 0..n_nodes-1
        nodes.append({"id": n["node"], "parent": n["parent"], "depth": n["depth"],
                      "prefix": n["prefix"], "V": n["V"] if n["evaluated"] else math.nan,
                      "N": n["N"], "log_prob": n["log_prob"], "H": n["H"], "G": n["G"],
                      "origin": n["origin"], "on_target": _on_target(n["prefix"], target)})
    _add_items(nodes, res.items[b].tolist(), res.codes[b].tolist(), res.log_probs[b].tolist(),
               target_item, target)
    return nodes


def beam_tree_nodes(trace: list, res: Any, b: int, target_codes: Sequence[int],
                    target_item: int, values: dict | None = None) -> list[dict]:
    """User ``b``'s beam-search tree from ``beam_search(..., trace=trace)``: the root, the beam
    prefixes of depth 1..L-1 (pruned ones included: a prefix that was in the beam at its depth
    but has no child in the next beam is a dead end), and the returned items.

    ``values``: prefix tuple -> V (``prefix_values``), to colour the nodes like VED's."""
    target = [int(c) for c in target_codes]
    values = values or {}
    nodes = [{"id": 0, "parent": -1, "depth": 0, "prefix": [], "V": values.get((), math.nan),
              "N": 0, "log_prob": 0.0, "origin": "root", "on_target": True}]
    index = {(): 0}
    for codes, scores in trace[:-1]:                       # depths 1..L-1; the last are items
        for code, score in zip(codes[b].tolist(), scores[b].tolist()):
            if not math.isfinite(score):
                continue
            key = tuple(code)
            index[key] = len(nodes)
            nodes.append({"id": len(nodes), "parent": index[key[:-1]], "depth": len(key),
                          "prefix": list(key), "V": values.get(key, math.nan), "N": 0,
                          "log_prob": float(score), "origin": "beam",
                          "on_target": _on_target(key, target)})
    _subtree_counts(nodes)
    _add_items(nodes, res.items[b].tolist(), res.codes[b].tolist(), res.scores[b].tolist(),
               target_item, target)
    return nodes


@torch.no_grad()
def prefix_values(model: SidLM, value_fn, vocab: SidVocab, trie: SidTrie, tokens: torch.Tensor,
                  pad_mask: torch.Tensor, prefixes: list[list[tuple]]) -> list[dict]:
    """V of given prefixes (depth 0..L-1) per user: the value head on the hidden state at the
    prefix's last token, the state VED reads (``vstar.model.value``). ``prefixes[b]`` is user
    b's list of prefix tuples; returns one {prefix: V} dict per user."""
    B, L = tokens.shape[0], vocab.n_levels
    P = max(1, max(len(p) for p in prefixes))
    cand = torch.zeros(B, P, L, dtype=torch.long)
    for i, plist in enumerate(prefixes):
        for j, p in enumerate(plist):
            cand[i, j, :len(p)] = torch.as_tensor(p, dtype=torch.long)
    sc = score_candidates(model, vocab, trie, tokens, pad_mask, cand)     # hidden [B, P, L, D]
    out = []
    for i, plist in enumerate(prefixes):
        d = torch.as_tensor([len(p) for p in plist], dtype=torch.long)
        if len(plist) == 0:
            out.append({})
            continue
        h = sc.hidden[i, torch.arange(len(plist)), d]                         # [n, D]
        v = value_fn(h).float().tolist()
        out.append({tuple(p): float(x) for p, x in zip(plist, v)})
    return out


# --------------------------------------------------------------------------------------- layout

def layout_tree(nodes: list[dict]) -> dict[int, tuple[int, float]]:
    """node id -> (column = depth, row): children ordered by log pi (best on top), every node
    without children gets its own row, a parent sits at the mean row of its children."""
    children: dict[int, list[dict]] = {}
    for n in nodes:
        children.setdefault(n["parent"], []).append(n)
    for kids in children.values():
        kids.sort(key=lambda n: (n.get("rank") or 0, -n["log_prob"], n["prefix"]))
    pos: dict[int, tuple[int, float]] = {}
    next_row = [0]

    def place(n: dict) -> float:
        kids = children.get(n["id"], [])
        if kids:
            row = sum(place(k) for k in kids) / len(kids)
        else:
            row = float(next_row[0])
            next_row[0] += 1
        pos[n["id"]] = (n["depth"], row)
        return row

    for root in children.get(-1, []):
        place(root)
    return pos


def _colour(v: float, vmin: float, vmax: float) -> str:
    """Blue (low V) -> white -> red (high V); grey for a node without a value."""
    if not math.isfinite(v):
        return "#d0d0d0"
    t = 0.5 if vmax <= vmin else min(1.0, max(0.0, (v - vmin) / (vmax - vmin)))
    lo, mid, hi = (49, 104, 176), (247, 247, 247), (196, 52, 47)
    a, b, s = (lo, mid, t * 2) if t < 0.5 else (mid, hi, t * 2 - 1)
    return "#%02x%02x%02x" % tuple(round(x + (y - x) * s) for x, y in zip(a, b))


def _sid(prefix: Sequence[int]) -> str:
    return "".join(f"<{LEVEL_LETTERS[i % 26]}_{c}>" for i, c in enumerate(prefix)) or "root"


def tree_svg(nodes: list[dict], vmin: float, vmax: float, labels: dict[int, str] | None = None,
             title: str = "", col_w: int = 110, row_h: int = 15) -> str:
    """One tree as an inline SVG: columns = depth, nodes coloured by V in [vmin, vmax] (blue ->
    red), radius by N, the target's path and item in red, item leaves labelled ``#rank label``
    (``labels``: item -> text). Each node has a ``<title>`` tooltip with its numbers."""
    labels = labels or {}
    pos = layout_tree(nodes)
    rows = max((r for _, r in pos.values()), default=0) + 1
    depth = max((n["depth"] for n in nodes), default=0)
    left, top, label_w = 14, 30, 300
    width = left + depth * col_w + label_w
    height = int(top + rows * row_h + 10)
    xy = {i: (left + c * col_w, top + r * row_h + row_h / 2) for i, (c, r) in pos.items()}
    by_id = {n["id"]: n for n in nodes}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="tree" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" class="tree-title">{html.escape(title)}</text>']
    for n in nodes:                                              # edges first, under the nodes
        if n["parent"] < 0 or n["id"] not in xy or n["parent"] not in xy:
            continue
        (x0, y0), (x1, y1) = xy[n["parent"]], xy[n["id"]]
        hot = n["on_target"] and by_id[n["parent"]]["on_target"]
        parts.append(f'<path d="M{x0:.1f},{y0:.1f} C{(x0 + x1) / 2:.1f},{y0:.1f} '
                     f'{(x0 + x1) / 2:.1f},{y1:.1f} {x1:.1f},{y1:.1f}" fill="none" '
                     f'stroke="{"#d62728" if hot else "#9a9a9a"}" '
                     f'stroke-width="{2.5 if hot else 1}"/>')
    for n in nodes:
        if n["id"] not in xy:
            continue
        x, y = xy[n["id"]]
        tip = [_sid(n["prefix"])]
        if n["origin"] == "item":
            tip += [f"rank {n['rank']}", f"log pi(item) {n['log_prob']:.3f}"]
            if n["item"] in labels:
                tip.append(labels[n["item"]])
        else:
            tip += [f"V {n['V']:.3f}" if math.isfinite(n["V"]) else "V n/a", f"N {n['N']}",
                    f"log pi {n['log_prob']:.3f}", f"origin {n['origin']}"]
            for key in ("H", "G"):
                if key in n and isinstance(n[key], float) and math.isfinite(n[key]):
                    tip.append(f"{key} {n[key]:.3f}")
        tip_text = html.escape(" | ".join(tip))
        stroke = ' stroke="#d62728" stroke-width="2.5"' if n["on_target"] else \
            ' stroke="#555" stroke-width="0.8"'
        if n["origin"] == "item":
            parts.append(f'<g class="item{" target" if n["on_target"] else ""}">'
                         f'<title>{tip_text}</title><rect x="{x - 4:.1f}" y="{y - 4:.1f}" '
                         f'width="8" height="8" fill="{"#d62728" if n["on_target"] else "#fff"}"'
                         f'{stroke}/>')
            text = f"#{n['rank']} {labels.get(n['item'], str(n['item']))}"
            weight = ' font-weight="bold" fill="#d62728"' if n["on_target"] else ""
            parts.append(f'<text x="{x + 8:.1f}" y="{y + 4:.1f}" class="leaf"{weight}>'
                         f'{html.escape(text[:48])}</text></g>')
        else:
            r = 3.0 + 1.6 * math.sqrt(max(1, n["N"]))
            parts.append(f'<g class="node"><title>{tip_text}</title><circle cx="{x:.1f}" '
                         f'cy="{y:.1f}" r="{min(r, 12.0):.1f}" '
                         f'fill="{_colour(n["V"], vmin, vmax)}"{stroke}/></g>')
    parts.append("</svg>")
    return "".join(parts)


def colour_bar_svg(vmin: float, vmax: float, width: int = 220) -> str:
    """The V colour scale of ``tree_svg`` as a small SVG legend."""
    stops = "".join(f'<stop offset="{t:.2f}" stop-color="{_colour(vmin + t * (vmax - vmin), vmin, vmax)}"/>'
                    for t in (0.0, 0.25, 0.5, 0.75, 1.0))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="legend" width="{width + 120}" '
            f'height="34" viewBox="0 0 {width + 120} 34"><defs><linearGradient id="vbar">{stops}'
            f'</linearGradient></defs><rect x="40" y="4" width="{width}" height="12" '
            f'fill="url(#vbar)" stroke="#555" stroke-width="0.5"/>'
            f'<text x="0" y="14">V</text><text x="40" y="30">{vmin:.3f}</text>'
            f'<text x="{width + 40}" y="30" text-anchor="end">{vmax:.3f}</text>'
            f'<text x="{width + 48}" y="14">grey: no value</text></svg>')
