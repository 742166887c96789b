"""Trie-constrained decoding with a KV cache: beam search and sampling, batched over users.

Cost is counted in decode forward tokens (docs/method.md Eq. 10): every token fed to the backbone
after the prefill of the users' histories. Beam search of width W over L levels feeds (L-1)*W per
user.

``expand_beams`` is the one beam step (top-W extensions of W prefixes by summed log-prob): beam
search uses it at every level, VED for its initial beam tree.

The W beams of a user continue its prefill through ``rows_cache``: with a ``SidGenerator`` one
copy of the history per user and per-beam caches of the generated codes (``SharedKVCache``), so
reordering beams moves only those; a backbone without it gets the history copied per beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vstar.decode.trie import SidTrie, constrained_log_probs
from vstar.model.generator import item_head_logits
from vstar.model.interface import SidLM, rows_cache
from vstar.model.vocab import SidVocab


@dataclass
class DecodeResult:
    """What every decoder returns (VED's ``VEDResult`` adds its search tree)."""

    items: torch.Tensor        # [B, W] catalogue item indices, best first; -1 = empty slot
    codes: torch.Tensor        # [B, W, L] SID codes of those items (-1 for empty slots)
    scores: torch.Tensor       # [B, W] ranking scores (sum of constrained log-probs for beam
                               # search and sampling; -inf for empty slots)
    forward_tokens: int        # decode forward tokens for the whole batch (prefill excluded)
    tokens_per_user: torch.Tensor  # [B] decode forward tokens each user cost
    n_invalid: int             # generated SIDs that are not catalogue items (must stay 0)


@dataclass
class ValueBeamResult(DecodeResult):
    """The value-guided beam's output: ``DecodeResult`` plus, per user, the share of the
    extensions it kept (levels 1..L-1) that the log-prob alone would not have kept from the
    same beam (0: V changed nothing)."""

    value_swapped: torch.Tensor    # [B]


def expand_beams(prefix_scores: torch.Tensor, next_log_probs: torch.Tensor, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One beam step: the best ``width`` one-code extensions of P prefixes per user.

    prefix_scores [B, P] (log pi(prefix | x), -inf for prefixes not in the beam);
    next_log_probs [B, P, K] (constrained log pi(code | prefix), -inf where not allowed).
    Returns (scores [B, w], parent [B, w] in 0..P-1, code [B, w] in 0..K-1), w = min(width, P*K),
    best first; extensions of dead prefixes have score -inf.
    """
    B, P, K = next_log_probs.shape
    total = (prefix_scores[:, :, None] + next_log_probs).reshape(B, P * K)
    scores, flat = total.topk(min(width, P * K), dim=1)
    return scores, flat // K, flat % K


def prefill(model: SidLM, tokens: torch.Tensor, pad_mask: torch.Tensor):
    """Run the users' histories once; return (next-token logits [B, V], hidden [B, D], cache)."""
    out = model(tokens, pad_mask=pad_mask)
    return out.logits[:, -1], out.hidden[:, -1], out.cache


def prefix_log_mass(item_log_probs: torch.Tensor, trie: SidTrie) -> list[torch.Tensor]:
    """log P(prefix) = logsumexp of ``item_log_probs`` [B, N] over the items under each trie
    node, for every depth d = 0..L (d = 0 the root, d = L the items themselves): a list of
    [B, n_nodes(d)] (``n_nodes(L)`` = N). Nodes without items get -inf."""
    B, N = item_log_probs.shape
    out = []
    for d in range(trie.n_levels):
        ids = trie.prefix_ids[d][None].expand(B, -1)
        top = torch.full((B, trie.n_nodes(d)), float("-inf"), device=item_log_probs.device)
        top = top.scatter_reduce(1, ids, item_log_probs, "amax")
        safe = torch.where(torch.isfinite(top), top, 0.0)
        shifted = (item_log_probs - safe.gather(1, ids)).exp()         # <= 1: no overflow
        mass = torch.zeros_like(top).scatter_add(1, ids, shifted)
        out.append(mass.log() + safe)
    return out + [item_log_probs]


def _child_mass(trie: SidTrie, depth: int, nodes: torch.Tensor, allowed: torch.Tensor,
                mass: torch.Tensor) -> torch.Tensor:
    """``mass`` [B, n_nodes(depth + 1)] at every one-code extension of ``nodes`` [B, P]:
    [B, P, K], 0 where the code is not ``allowed`` [B, P, K] (its log-prob is -inf there)."""
    B, P, K = allowed.shape
    child = trie.step(depth, nodes[:, :, None], torch.arange(K, device=nodes.device)[None, None])
    child = torch.where(allowed, child, 0).reshape(B, P * K)
    return torch.where(allowed, mass.gather(1, child).reshape(B, P, K), 0.0)


@torch.no_grad()
def beam_search(model: SidLM, vocab: SidVocab, trie: SidTrie, tokens: torch.Tensor,
                pad_mask: torch.Tensor, width: int, trace: list | None = None,
                value_fn=None, value_weight: float = 0.0,
                item_head=None, item_weight: float = 0.0) -> DecodeResult:
    """Top-``width`` distinct catalogue items per user by constrained log-probability.

    tokens / pad_mask: left-padded prompts [B, T] (``SidVocab.encode_histories``).
    trace: if a list, the beam of every depth d = 1..L is appended to it as (codes [B, W, d],
    scores [B, W]; -inf for empty slots): the search tree, for pictures (``vstar report``).

    value_fn / value_weight eta: the **value-guided beam** (HEPO's decoder, docs/method.md
    "Other RL methods"). At depth d >= 1 every beam node s has been read by the backbone, so
    V(s) = value_fn(hidden) costs no forward token; each one-code extension of s is ranked by
    log pi(prefix + code | x) + eta * V(s) instead of the log-prob alone, so a high-value node
    keeps more of its children in the next beam (the beam widens under it) and a low-value one
    fewer. ``scores`` are then these guided scores, and the items are ordered by them. A
    ``value_fn`` whose ``reads_log_prob`` is True gets log pi(s | x) as well (the value prior).
    The cost is beam search's: (L-1)*W forward tokens per user.

    item_head / item_weight w: **item-head fusion** (docs/method.md 1, "Item-level loss").
    ``item_head(hidden [B, D]) -> logits [B, N]`` scores every catalogue item from the history's
    last hidden state (``vstar.model.generator.item_head_logits``); with q its softmax, a prefix
    s is ranked by log pi(s | x) + w * log q(s), q(s) the head's mass on the items under s
    (``prefix_log_mass``), so the search keeps prefixes the head likes although the code
    softmax does not, and a complete item scores log pi(item | x) + w * log q(item | x): the
    product of both experts. No forward token beyond beam search's. ``scores`` are the fused
    scores.
    """
    if item_head is not None and value_fn is not None:
        raise ValueError("beam_search takes either a value_fn or an item_head, not both")
    L = vocab.n_levels
    B = tokens.shape[0]
    dev = tokens.device
    W = int(width)
    logits, hidden, cache = prefill(model, tokens, pad_mask)
    fused = item_head is not None and item_weight != 0.0
    mass = (prefix_log_mass(torch.log_softmax(item_head(hidden).float(), -1), trie)
            if fused else None)

    # level 0: the root's children, scored from the prefill
    nodes = torch.zeros(B, dtype=torch.long, device=dev)
    allowed = trie.allowed(0, nodes)
    lp = constrained_log_probs(logits[:, vocab.level_slice(0)], allowed)  # [B, K0]
    bonus = (item_weight * _child_mass(trie, 0, nodes[:, None], allowed[:, None], mass[1])[:, 0]
             if fused else torch.zeros_like(lp))
    k0 = min(W, lp.shape[1])
    scores, code = (lp + bonus).topk(k0, dim=1)                           # [B, k0]
    logp = scores - bonus.gather(1, code)      # log pi(prefix | x) of the beam; = scores unless
    #                                            value-guided or fused
    if k0 < W:
        pad = torch.full((B, W - k0), float("-inf"), device=dev)
        scores = torch.cat([scores, pad], 1)
        code = torch.cat([code, torch.zeros(B, W - k0, dtype=torch.long, device=dev)], 1)
        logp = torch.cat([logp, pad], 1)
    codes = code[:, :, None]                                              # [B, W, 1]
    alive = torch.isfinite(scores)
    if trace is not None:
        trace.append((codes.clone(), scores.clone()))
    nodes = torch.where(alive, trie.step(0, nodes[:, None].expand(B, W), code), 0)  # [B, W]
    cache = rows_cache(model, cache, torch.arange(B, device=dev).repeat_interleave(W))
    forward_tokens = 0
    guided = value_fn is not None and value_weight != 0.0
    swapped = torch.zeros(B, device=dev) if guided else None
    reads_log_prob = guided and bool(getattr(value_fn, "reads_log_prob", False))

    for level in range(1, L):
        feed = vocab.token_of(level - 1, codes[:, :, -1]).reshape(B * W, 1)
        out = model(feed, cache=cache)
        forward_tokens += B * W
        step_logits = out.logits[:, -1, vocab.level_slice(level)]        # [B*W, K]
        allowed = trie.allowed(level, nodes.reshape(-1)) & alive.reshape(-1, 1)
        lp = constrained_log_probs(step_logits, allowed).reshape(B, W, -1)  # [B, W, K]
        if guided:
            hidden = out.hidden[:, -1]
            V = (value_fn(hidden, logp.reshape(-1)) if reads_log_prob
                 else value_fn(hidden)).reshape(B, W).float()
            V = torch.where(alive, V, 0.0)
            scores, parent, code = expand_beams(logp + value_weight * V, lp, W)
            _, plain_parent, plain_code = expand_beams(logp, lp, W)
            K = lp.shape[2]
            kept = (parent * K + code)[:, :, None] == (plain_parent * K + plain_code)[:, None, :]
            swapped += (~kept.any(-1) & torch.isfinite(scores)).sum(1) / (W * (L - 1))
            logp = scores - value_weight * V.gather(1, parent)   # the kept nodes' log pi
        elif fused:
            bonus = item_weight * _child_mass(trie, level, nodes, allowed.reshape(B, W, -1),
                                              mass[level + 1])                # [B, W, K]
            scores, parent, code = expand_beams(logp, lp + bonus, W)
            logp = scores - bonus.reshape(B, -1).gather(1, parent * lp.shape[2] + code)
        else:
            scores, parent, code = expand_beams(scores, lp, W)            # [B, W] each
            logp = scores
        alive = torch.isfinite(scores)
        codes = torch.cat([codes.gather(1, parent[:, :, None].expand(-1, -1, level)),
                           code[:, :, None]], dim=2)                      # [B, W, level+1]
        if trace is not None:
            trace.append((codes.clone(), scores.clone()))
        parent_nodes = nodes.gather(1, parent)
        nodes = torch.where(alive, trie.step(level, parent_nodes, code), 0)
        cache = out.cache.index_select((torch.arange(B, device=dev)[:, None] * W + parent).reshape(-1))

    items = torch.where(alive, nodes, -1)
    codes = torch.where(alive[:, :, None], codes, -1)
    n_invalid = int(((items < 0) & alive).sum())
    per_user = torch.full((B,), (L - 1) * W, dtype=torch.long, device=dev)  # every beam is fed
    if guided:
        return ValueBeamResult(items, codes, scores, forward_tokens, per_user, n_invalid, swapped)
    return DecodeResult(items, codes, scores, forward_tokens, per_user, n_invalid)


def item_head_decoder(width: int, weight: float):
    """A decoder for ``vstar.decode.rank.rank_rows(..., decoder=...)`` (and the server): beam
    search of ``width`` fused with the model's item head at ``weight`` (``eval.item_head``;
    ``beam_search``'s ``item_head``), or None (plain beam search) at weight 0."""
    if not weight:
        return None

    def decode(model, vocab, trie, tokens, mask):
        return beam_search(model, vocab, trie, tokens, mask, width,
                           item_head=lambda h: item_head_logits(model, vocab, h),
                           item_weight=weight)
    return decode
