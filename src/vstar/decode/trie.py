"""The SID prefix tree as tensors: allowed next codes for a whole batch of beams in one call.

Nodes at depth d (0 = root) are the distinct SID prefixes of length d, numbered 0..n_d-1 in
lexicographic order of the prefix. An edge leaves node ``p`` at depth d with code ``c`` when some
item's SID starts with prefix(p) + c; its child is the node of that longer prefix at depth d+1,
or, at the last level (d = L-1), the catalogue item index.

Two layouts hold the edges, with the same API and the same results (``allowed``, ``step``,
``item_of``, ``n_nodes``, ``prefix_ids``, ``codes``, ``to``):

- ``"dense"``: ``children[d]`` is a ``[n_d, K_d]`` int64 table (child id or -1). One gather per
  lookup (``step`` is fastest this way), but it costs ``8 * n_d * K_d`` bytes per depth:
  129 MiB for 1 M items with 3 x 256 codes, 5 GiB with 3 x 1024, impossible with 3 x 8192.
- ``"sparse"``: CSR per depth. ``edge_keys[d]`` holds the sorted int64 keys ``p * K_d + c`` of the
  depth's edges (one per node of depth d+1, or per item at the last level) and
  ``edge_offsets[d][p]`` where node p's slice starts. Because nodes are numbered in
  lexicographic order, the child of the edge at position j is node j of depth d+1, so only the last
  level stores its targets (``edge_items``: the item of each full SID). ``step`` is one
  ``torch.searchsorted``; ``allowed`` scatters each node's slice into the per-batch
  ``[..., K]`` mask (one row per distinct node when beams repeat nodes). Memory is about
  ``8 * (n_{d+1} + n_d)`` bytes per depth, linear in the catalogue whatever the codebook sizes:
  295 MiB of tables for 10 M items with 3 x 8192 codes (plus ``prefix_ids`` and ``codes``,
  8 bytes per item and level each).

``layout="auto"`` (the default) picks dense while its tables would take at most
``DENSE_MAX_BYTES`` (64 MiB: any catalogue up to ~30 k items with 256-code levels, ~45 k
random items with 3 x 256), sparse above; ``layout="dense"`` / ``"sparse"`` force one (tests,
benchmarks). 64 MiB because the sparse lookups are within a few ms of the dense ones per batch
(``bench/bench_trie.py``, ``bench/README.md``) while a dense table above it costs real memory in
every process that holds a trie.

The build is vectorised for both: per depth one ``torch.unique`` over the int64 keys
``prefix_id * K_d + code`` (no Python loop over items): 10 M x 3 x 8192 builds in 2.4 s on one
CPU thread with a 1.4 GiB process peak.
Invalid input (a node < 0 or >= n_d, a code outside [0, K_d)) gives -1 from ``step`` and an
all-False row from ``allowed`` in both layouts.
"""

from __future__ import annotations

import numpy as np
import torch

DENSE_MAX_BYTES = 64 * 2 ** 20
LAYOUTS = ("auto", "dense", "sparse")


class SidTrie:
    def __init__(self, codes: np.ndarray | torch.Tensor, codebook_sizes: list[int],
                 layout: str = "auto", dense_max_bytes: int = DENSE_MAX_BYTES):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)  # [N, L]
        if codes.ndim != 2:
            raise ValueError(f"codes must be [n_items, n_levels], got shape {tuple(codes.shape)}")
        N, L = codes.shape
        if len(codebook_sizes) != L:
            raise ValueError(f"{len(codebook_sizes)} codebook sizes for {L} levels")
        for l, K in enumerate(codebook_sizes):
            if N and (codes[:, l].min() < 0 or codes[:, l].max() >= K):
                raise ValueError(f"codes of level {l} must lie in [0, {K})")
        self.codes = codes
        self.codebook_sizes = [int(k) for k in codebook_sizes]
        self.n_levels = L
        self.n_items = N
        # node id of every item's prefix at each depth: prefix_ids[d][i], d = 0..L-1; the edge
        # keys of depth d are the sorted distinct prefix_ids[d] * K_d + codes[:, d]
        self.prefix_ids: list[torch.Tensor] = [torch.zeros(N, dtype=torch.long)]
        keys: list[torch.Tensor] = []
        item_key = None
        for d in range(L):
            key = self.prefix_ids[d] * self.codebook_sizes[d] + codes[:, d]
            if d + 1 < L:
                uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
                self.prefix_ids.append(inv.reshape(-1))
            else:
                uniq = torch.unique(key, sorted=True)
                item_key = key
            keys.append(uniq)
            del key
        if len(keys[-1]) != N:
            raise ValueError("SIDs collide: two items share a SID; resolve collisions first")
        self._n = [1] + [len(k) for k in keys[:-1]]                      # nodes per depth
        dense_bytes = 8 * sum(n * K for n, K in zip(self._n, self.codebook_sizes))
        if layout == "auto":
            layout = "dense" if dense_bytes <= dense_max_bytes else "sparse"
        self.layout = layout
        if layout == "dense":
            self.children: list[torch.Tensor] = []
            for d in range(L):
                table = torch.full((self._n[d], self.codebook_sizes[d]), -1, dtype=torch.long)
                child = self.prefix_ids[d + 1] if d + 1 < L else torch.arange(N)
                table[self.prefix_ids[d], codes[:, d]] = child
                self.children.append(table)
        else:
            self.edge_keys = keys
            self.edge_offsets = [torch.searchsorted(k, torch.arange(n + 1) * K)
                                 for k, n, K in zip(keys, self._n, self.codebook_sizes)]
            # the item of each last-level edge, in key order
            self.edge_items = torch.argsort(item_key) if N else torch.zeros(0, dtype=torch.long)
        del item_key

    def __getattr__(self, name: str):
        if name == "children":
            raise AttributeError("SidTrie.children exists only in the dense layout; use "
                                 "allowed()/step() (this trie is sparse)")
        raise AttributeError(name)

    def n_nodes(self, depth: int) -> int:
        return int(self._n[depth])

    def _valid(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        return (nodes >= 0) & (nodes < self._n[depth])

    def allowed(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """nodes [...] at ``depth`` -> bool [..., K_depth] of trie-valid next codes."""
        nodes = nodes.long()
        ok = self._valid(depth, nodes)
        K = self.codebook_sizes[depth]
        if self.layout == "dense":
            return (self.children[depth][torch.where(ok, nodes, 0)] >= 0) & ok[..., None]
        # one mask row per distinct node (beams repeat the root and share parents), then gather
        # (per row instead when that saves fewer scattered edges than the gather copies bytes,
        # scaled by their measured relative cost)
        flat = torch.where(ok, nodes, -1).reshape(-1)
        off = self.edge_offsets[depth]
        uniq, inv = torch.unique(flat, return_inverse=True)
        valid = uniq >= 0
        u = torch.where(valid, uniq, 0)
        start = off[u]
        count = torch.where(valid, off[u + 1] - start, 0)
        total = int(count.sum())
        saved = int(count[inv].sum()) - total
        if 64 * saved < flat.numel() * K:                                # scatter per row
            valid = flat >= 0
            u = torch.where(valid, flat, 0)
            start = off[u]
            count = torch.where(valid, off[u + 1] - start, 0)
            total, inv = int(count.sum()), None
        mask = torch.zeros(u.shape[0], K, dtype=torch.bool, device=nodes.device)
        if total:
            row = torch.repeat_interleave(torch.arange(u.shape[0], device=nodes.device), count,
                                          output_size=total)
            first = torch.cumsum(count, 0) - count                       # row's first flat slot
            pos = torch.arange(total, device=nodes.device) - first[row] + start[row]
            mask[row, self.edge_keys[depth][pos] - u[row] * K] = True
        return (mask if inv is None else mask[inv.reshape(-1)]).reshape(*nodes.shape, K)

    def step(self, depth: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Child ids (or item indices at the last level) of ``nodes`` via ``codes``; -1 if invalid."""
        nodes, codes = torch.broadcast_tensors(nodes.long(), codes.long())
        K = self.codebook_sizes[depth]
        ok = self._valid(depth, nodes) & (codes >= 0) & (codes < K)
        if self.layout == "dense":
            child = self.children[depth][torch.where(ok, nodes, 0), torch.where(ok, codes, 0)]
            return torch.where(ok, child, -1)
        keys = self.edge_keys[depth]
        if keys.numel() == 0:
            return torch.full_like(nodes, -1)
        q = torch.where(ok, nodes * K + codes, -1)
        pos = torch.searchsorted(keys, q.reshape(-1)).reshape(q.shape).clamp(max=keys.numel() - 1)
        hit = ok & (keys[pos] == q)
        child = self.edge_items[pos] if depth == self.n_levels - 1 else pos
        return torch.where(hit, child, -1)

    def item_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Full SIDs [..., L] -> item indices [...] (-1 where the SID is not in the catalogue)."""
        codes = torch.as_tensor(codes)
        shape = codes.shape[:-1]
        codes = codes.reshape(-1, self.n_levels).long()
        node = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        for d in range(self.n_levels):
            node = self.step(d, node, codes[:, d])
        return node.reshape(shape)

    @property
    def device(self) -> torch.device:
        """Where the tables are (``to``): decoders need them beside the model's logits."""
        return self.codes.device

    def to(self, device: torch.device | str) -> "SidTrie":
        if self.layout == "dense":
            self.children = [c.to(device) for c in self.children]
        else:
            self.edge_keys = [k.to(device) for k in self.edge_keys]
            self.edge_offsets = [o.to(device) for o in self.edge_offsets]
            self.edge_items = self.edge_items.to(device)
        self.prefix_ids = [p.to(device) for p in self.prefix_ids]
        self.codes = self.codes.to(device)
        return self

    def nbytes(self) -> int:
        """Bytes of the edge tables (the layout's own cost; prefix_ids and codes not counted)."""
        if self.layout == "dense":
            return sum(c.numel() * c.element_size() for c in self.children)
        ts = self.edge_keys + self.edge_offsets + [self.edge_items]
        return sum(t.numel() * t.element_size() for t in ts)


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
