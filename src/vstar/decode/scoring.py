"""Teacher-forced scoring of given candidate SIDs: log-probs and hidden states per level.

Used by the brute-force check of beam search and by the RL trainer (log pi of the chosen codes,
and the states the value head reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vstar.decode.trie import SidTrie, constrained_entropy, constrained_log_probs
from vstar.model.interface import SidLM, rows_cache
from vstar.model.vocab import SidVocab


@dataclass
class CandidateScores:
    log_probs: torch.Tensor  # [B, G, L] constrained log pi(c_l | x, c_<l) of each chosen code
    hidden: torch.Tensor     # [B, G, L, D] state s_l = (x, c_<l): hidden at its last token
    entropy: torch.Tensor    # [B, G, L] entropy of the constrained next-code distribution at s_l


def score_candidates(model: SidLM, vocab: SidVocab, trie: SidTrie, tokens: torch.Tensor,
                     pad_mask: torch.Tensor, cand_codes: torch.Tensor) -> CandidateScores:
    """cand_codes [B, G, L] (rows with any code < 0 are treated as padding: log-prob 0).

    Runs with gradients if enabled by the caller. One prefill for the history, then the G
    candidates' first L-1 codes are fed on top of it (``rows_cache``: one copy of the history per
    user if the model shares histories).
    """
    B, G, L = cand_codes.shape
    dev = tokens.device
    pad_rows = (cand_codes < 0).any(-1)                                   # [B, G]
    codes = cand_codes.clamp(min=0)
    out = model(tokens, pad_mask=pad_mask)
    first_logits = out.logits[:, -1].repeat_interleave(G, dim=0)         # [B*G, V]
    first_hidden = out.hidden[:, -1].repeat_interleave(G, dim=0)         # [B*G, D]
    level_logits, level_hidden = [first_logits], [first_hidden]
    if L > 1:
        cache = rows_cache(model, out.cache, torch.arange(B, device=dev).repeat_interleave(G))
        feed = vocab.code_tokens(codes[:, :, : L - 1]).reshape(B * G, L - 1)
        nxt = model(feed, cache=cache)
        level_logits += [nxt.logits[:, i] for i in range(L - 1)]
        level_hidden += [nxt.hidden[:, i] for i in range(L - 1)]

    flat_codes = codes.reshape(B * G, L)
    nodes = torch.zeros(B * G, dtype=torch.long, device=dev)
    log_probs, entropies = [], []
    for level in range(L):
        allowed = trie.allowed(level, nodes.clamp(min=0))
        lp = constrained_log_probs(level_logits[level][:, vocab.level_slice(level)], allowed)
        chosen = lp.gather(1, flat_codes[:, level:level + 1]).squeeze(1)
        entropies.append(constrained_entropy(lp, allowed))
        log_probs.append(chosen)
        nodes = trie.step(level, nodes.clamp(min=0), flat_codes[:, level])
    logp = torch.stack(log_probs, 1).reshape(B, G, L)
    logp = logp.masked_fill(pad_rows[:, :, None], 0.0)
    hidden = torch.stack(level_hidden, 1).reshape(B, G, L, -1)
    entropy = torch.stack(entropies, 1).reshape(B, G, L)
    return CandidateScores(logp, hidden, entropy)
