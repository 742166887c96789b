"""Trie-constrained decoding with a KV cache: beam search and sampling, batched over users.

Cost is counted in decode forward tokens (METHOD Eq. 10): every token fed to the backbone after the
prefill of the users' histories. Beam search of width W over L levels feeds (L-1)*W per user.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vstar.decode.trie import SidTrie, constrained_log_probs
from vstar.model.interface import SidLM
from vstar.model.vocab import SidVocab


@dataclass
class DecodeResult:
    items: torch.Tensor        # [B, W] catalogue item indices, best first; -1 = empty slot
    codes: torch.Tensor        # [B, W, L] SID codes of those items (-1 for empty slots)
    scores: torch.Tensor       # [B, W] sum of constrained log-probs (-inf for empty slots)
    forward_tokens: int        # decode forward tokens for the whole batch (prefill excluded)
    n_invalid: int = 0         # generated SIDs that are not catalogue items (must stay 0)

    @property
    def forward_tokens_per_user(self) -> float:
        return self.forward_tokens / max(1, self.items.shape[0])


def prefill(model: SidLM, tokens: torch.Tensor, pad_mask: torch.Tensor):
    """Run the users' histories once; return (next-token logits [B, V], hidden [B, D], cache)."""
    out = model(tokens, pad_mask=pad_mask)
    return out.logits[:, -1], out.hidden[:, -1], out.cache


@torch.no_grad()
def beam_search(model: SidLM, vocab: SidVocab, trie: SidTrie, tokens: torch.Tensor,
                pad_mask: torch.Tensor, width: int) -> DecodeResult:
    """Top-``width`` distinct catalogue items per user by constrained log-probability.

    tokens / pad_mask: left-padded prompts [B, T] (``SidVocab.encode_histories``).
    """
    L = vocab.n_levels
    B = tokens.shape[0]
    dev = tokens.device
    W = int(width)
    logits, _, cache = prefill(model, tokens, pad_mask)

    # level 0: the root's children, scored from the prefill
    nodes = torch.zeros(B, dtype=torch.long, device=dev)
    lp = constrained_log_probs(logits[:, vocab.level_slice(0)], trie.allowed(0, nodes))  # [B, K0]
    k0 = min(W, lp.shape[1])
    scores, code = lp.topk(k0, dim=1)                                     # [B, k0]
    if k0 < W:
        pad = torch.full((B, W - k0), float("-inf"), device=dev)
        scores = torch.cat([scores, pad], 1)
        code = torch.cat([code, torch.zeros(B, W - k0, dtype=torch.long, device=dev)], 1)
    codes = code[:, :, None]                                              # [B, W, 1]
    alive = torch.isfinite(scores)
    nodes = torch.where(alive, trie.step(0, nodes[:, None].expand(B, W), code), 0)  # [B, W]
    cache = cache.index_select(torch.arange(B, device=dev).repeat_interleave(W))
    forward_tokens = 0

    for level in range(1, L):
        feed = vocab.token_of(level - 1, codes[:, :, -1]).reshape(B * W, 1)
        out = model(feed, cache=cache)
        forward_tokens += B * W
        step_logits = out.logits[:, -1, vocab.level_slice(level)]        # [B*W, K]
        allowed = trie.allowed(level, nodes.reshape(-1)) & alive.reshape(-1, 1)
        lp = constrained_log_probs(step_logits, allowed).reshape(B, W, -1)  # [B, W, K]
        K = lp.shape[-1]
        total = (scores[:, :, None] + lp).reshape(B, W * K)
        scores, flat = total.topk(W, dim=1)                               # [B, W]
        parent, code = flat // K, flat % K
        alive = torch.isfinite(scores)
        codes = torch.cat([codes.gather(1, parent[:, :, None].expand(-1, -1, level)),
                           code[:, :, None]], dim=2)                      # [B, W, level+1]
        parent_nodes = nodes.gather(1, parent)
        nodes = torch.where(alive, trie.step(level, parent_nodes, code), 0)
        cache = out.cache.index_select((torch.arange(B, device=dev)[:, None] * W + parent).reshape(-1))

    items = torch.where(alive, nodes, -1)
    codes = torch.where(alive[:, :, None], codes, -1)
    n_invalid = int(((items < 0) & alive).sum())
    return DecodeResult(items, codes, scores, forward_tokens, n_invalid)


@torch.no_grad()
def constrained_sample(model: SidLM, vocab: SidVocab, trie: SidTrie, tokens: torch.Tensor,
                       pad_mask: torch.Tensor, n_samples: int, temperature: float = 1.0,
                       top_k: int = 0, generator: torch.Generator | None = None) -> DecodeResult:
    """``n_samples`` SIDs per user drawn from the trie-constrained policy (with replacement).

    temperature scales logits before the trie mask; top_k > 0 keeps the k most probable valid codes.
    Scores are the untempered constrained log-probs of the drawn items. Order: as drawn.
    """
    L = vocab.n_levels
    B = tokens.shape[0]
    dev = tokens.device
    S = int(n_samples)
    logits, _, cache = prefill(model, tokens, pad_mask)
    cache = cache.index_select(torch.arange(B, device=dev).repeat_interleave(S))
    logits = logits.repeat_interleave(S, dim=0)                           # [B*S, V]
    nodes = torch.zeros(B * S, dtype=torch.long, device=dev)
    scores = torch.zeros(B * S, device=dev)
    codes = []
    forward_tokens = 0
    for level in range(L):
        if level > 0:
            out = model(vocab.token_of(level - 1, codes[-1])[:, None], cache=cache)
            cache, logits = out.cache, out.logits[:, -1]
            forward_tokens += B * S
        allowed = trie.allowed(level, nodes)
        lvl_logits = logits[:, vocab.level_slice(level)]
        lp = constrained_log_probs(lvl_logits, allowed)                   # [B*S, K]
        sample_lp = constrained_log_probs(lvl_logits / max(temperature, 1e-6), allowed)
        if top_k and top_k < sample_lp.shape[1]:
            kth = sample_lp.topk(top_k, dim=1).values[:, -1:]
            sample_lp = sample_lp.masked_fill(sample_lp < kth, float("-inf"))
        code = torch.multinomial(sample_lp.exp(), 1, generator=generator).squeeze(1)
        scores = scores + lp.gather(1, code[:, None]).squeeze(1)
        nodes = trie.step(level, nodes, code)
        codes.append(code)
    codes_t = torch.stack(codes, dim=1).reshape(B, S, L)
    items = nodes.reshape(B, S)
    return DecodeResult(items, codes_t, scores.reshape(B, S), forward_tokens,
                        int((items < 0).sum()))
