"""The SID prefix tree as tensors: allowed next codes for a whole batch of beams in one gather.

Nodes at depth d (0 = root) are the distinct SID prefixes of length d, numbered 0..n_d-1.
``children[d][node, code]`` is the id of the child at depth d+1, or -1 if that code is not valid
after this prefix; at the last level (d = L-1) the child id is the catalogue item index.
"""

from __future__ import annotations

import numpy as np
import torch


class SidTrie:
    def __init__(self, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int]):
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)  # [N, L]
        if codes.ndim != 2:
            raise ValueError(f"codes must be [n_items, n_levels], got shape {tuple(codes.shape)}")
        N, L = codes.shape
        if len(codebook_sizes) != L:
            raise ValueError(f"{len(codebook_sizes)} codebook sizes for {L} levels")
        for l, K in enumerate(codebook_sizes):
            if N and (codes[:, l].min() < 0 or codes[:, l].max() >= K):
                raise ValueError(f"codes of level {l} must lie in [0, {K})")
        if len(torch.unique(codes, dim=0)) != N:
            raise ValueError("SIDs collide: two items share a SID; resolve collisions first")
        self.codes = codes
        self.codebook_sizes = [int(k) for k in codebook_sizes]
        self.n_levels = L
        self.n_items = N
        # node id of every item's prefix at each depth: prefix_ids[d][i], d = 0..L-1
        self.prefix_ids: list[torch.Tensor] = [torch.zeros(N, dtype=torch.long)]
        for d in range(1, L):
            _, inv = torch.unique(codes[:, :d], dim=0, return_inverse=True)
            self.prefix_ids.append(inv.reshape(-1))
        self.children: list[torch.Tensor] = []
        for d in range(L):
            n_nodes = int(self.prefix_ids[d].max()) + 1 if N else 1
            table = torch.full((n_nodes, self.codebook_sizes[d]), -1, dtype=torch.long)
            child = self.prefix_ids[d + 1] if d + 1 < L else torch.arange(N)
            table[self.prefix_ids[d], codes[:, d]] = child
            self.children.append(table)

    def n_nodes(self, depth: int) -> int:
        return int(self.children[depth].shape[0])

    def allowed(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """nodes [...] at ``depth`` -> bool [..., K_depth] of trie-valid next codes."""
        return self.children[depth][nodes] >= 0

    def step(self, depth: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Child ids (or item indices at the last level) of ``nodes`` via ``codes``; -1 if invalid."""
        return self.children[depth][nodes, codes]

    def item_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Full SIDs [..., L] -> item indices [...] (-1 where the SID is not in the catalogue)."""
        shape = codes.shape[:-1]
        codes = codes.reshape(-1, self.n_levels).long()
        node = torch.zeros(codes.shape[0], dtype=torch.long)
        for d in range(self.n_levels):
            ok = node >= 0
            code_ok = (codes[:, d] >= 0) & (codes[:, d] < self.codebook_sizes[d])
            nxt = torch.full_like(node, -1)
            sel = ok & code_ok
            nxt[sel] = self.children[d][node[sel], codes[sel, d]]
            node = nxt
        return node.reshape(shape)

    def to(self, device: torch.device | str) -> "SidTrie":
        self.children = [c.to(device) for c in self.children]
        self.prefix_ids = [p.to(device) for p in self.prefix_ids]
        self.codes = self.codes.to(device)
        return self


def constrained_log_probs(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log pi(code | prefix) renormalised over the trie-valid codes; -inf elsewhere.

    logits [..., K] (one SID level's slice of the vocabulary), allowed bool [..., K].
    Rows with no allowed code (dead beams) come back all -inf.
    """
    masked = logits.float().masked_fill(~allowed, float("-inf"))
    out = torch.log_softmax(masked, dim=-1)
    return torch.nan_to_num(out, nan=float("-inf"), neginf=float("-inf"))


def constrained_entropy(log_probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Entropy of the trie-constrained next-code distribution: ``-sum_allowed p log p``.

    log_probs [..., K] from ``constrained_log_probs``, allowed bool [..., K] -> [...].
    """
    return -(log_probs.exp() * log_probs.masked_fill(~allowed, 0.0)).sum(-1)
