"""Trie-constrained sampling with a KV cache, batched over users (the RL "sample" decoder)."""

from __future__ import annotations

import torch

from vstar.decode.beam import DecodeResult, prefill
from vstar.decode.trie import SidTrie, constrained_log_probs
from vstar.model.interface import SidLM, rows_cache
from vstar.model.vocab import SidVocab


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
    cache = rows_cache(model, cache, torch.arange(B, device=dev).repeat_interleave(S))
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
    per_user = torch.full((B,), (L - 1) * S, dtype=torch.long, device=dev)
    return DecodeResult(items, codes_t, scores.reshape(B, S), forward_tokens, per_user,
                        int((items < 0).sum()))
