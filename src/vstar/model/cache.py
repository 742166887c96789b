"""Key/value caches of the generator, and attention over a history shared by many decoding rows.

Two layouts continue a batch of prompts:

- ``KVCache``: one row per sequence, every row holding its whole past ([N, H, T, Dh] per layer).
  Decoding W beams of B users this way copies each user's history W times (``index_select``),
  so memory and copy time grow with W x history length.
- ``SharedKVCache``: the history keys/values once per user (``prefix``, a ``KVCache`` of B rows)
  plus, per decoding row, only the keys/values of the tokens it generated itself (``keys``,
  ``values`` [N, H, t, Dh]) and the user it continues (``row_user`` [N]). Reordering beams
  (``index_select``) then moves the small suffix caches only.

A row's attention over a ``SharedKVCache`` is one softmax over [its user's history keys | its
own suffix keys] (``shared_prefix_attention``): the history block is a batched matmul of the
queries of a user's rows, laid out as a [B, G] grid (``RowGroups``), against that user's keys,
without copying them. It computes what attention over the materialised per-row cache computes
(``SharedKVCache.materialize``), up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    keys[i], values[i]: [B, H, T, Dh]; mask: [B, T] (True = real token, False = left padding);
    next_pos: [B] position id the next token gets.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    next_pos: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def index_select(self, idx: torch.Tensor) -> "KVCache":
        """Rows ``idx`` of the batch (repeat a user's cache over beams, reorder beams)."""
        return KVCache([k.index_select(0, idx) for k in self.keys],
                       [v.index_select(0, idx) for v in self.values],
                       self.mask.index_select(0, idx), self.next_pos.index_select(0, idx))


@dataclass
class SharedKVCache:
    """N decoding rows continuing B users' histories, with one copy of each history.

    prefix: the users' history cache (B rows, e.g. a prefill's ``KVCache``); row_user [N]: the
    prefix row (user) that decoding row n continues; keys[i], values[i] [N, H, t, Dh]: layer i's
    keys/values of the row's own tokens after the history (t may be 0); mask [N, t] (True = real;
    a row may mask some of its own tokens out, e.g. VED's left-aligned ancestors); next_pos [N]:
    the position id the row's next token gets.
    """

    prefix: KVCache
    row_user: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    next_pos: torch.Tensor

    def __post_init__(self) -> None:
        # the values are checked where that is free (the CPU); on a GPU it would wait for the
        # device at every decode step, and ``repeat``, where rows enter, checks them anyway
        _check_row_user(self.row_user, self.prefix.batch_size,
                        values=self.row_user.device.type == "cpu")
        n = int(self.row_user.shape[0])
        if len(self.keys) != len(self.prefix.keys) or len(self.values) != len(self.keys):
            raise ValueError(f"expected suffix keys and values for {len(self.prefix.keys)} "
                             f"layers, got {len(self.keys)} and {len(self.values)}")
        if tuple(self.mask.shape) != (n, self.suffix_length) or tuple(self.next_pos.shape) != (n,):
            raise ValueError(f"expected mask [{n}, {self.suffix_length}] and next_pos [{n}], got "
                             f"{tuple(self.mask.shape)} and {tuple(self.next_pos.shape)}")

    @classmethod
    def repeat(cls, prefix: KVCache, row_user: torch.Tensor) -> "SharedKVCache":
        """Rows continuing ``prefix`` rows ``row_user`` right after their history (no suffix):
        what ``prefix.index_select(row_user)`` means, without the copies."""
        _check_row_user(row_user, prefix.batch_size)
        n = int(row_user.shape[0])
        empty = [k.new_zeros(n, k.shape[1], 0, k.shape[3]) for k in prefix.keys]
        return cls(prefix, row_user, empty, [e.clone() for e in empty],
                   prefix.mask.new_zeros(n, 0), prefix.next_pos.index_select(0, row_user))

    @property
    def suffix_length(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    @property
    def length(self) -> int:
        return self.prefix.length + self.suffix_length

    @property
    def batch_size(self) -> int:
        return int(self.row_user.shape[0])

    def index_select(self, idx: torch.Tensor) -> "SharedKVCache":
        """Rows ``idx`` (reorder beams): only the suffix caches are copied."""
        return SharedKVCache(self.prefix, self.row_user.index_select(0, idx),
                             [k.index_select(0, idx) for k in self.keys],
                             [v.index_select(0, idx) for v in self.values],
                             self.mask.index_select(0, idx), self.next_pos.index_select(0, idx))

    def materialize(self) -> KVCache:
        """The per-row cache these rows stand for: [the user's history | the row's suffix]."""
        rows = self.prefix.index_select(self.row_user)
        return KVCache([torch.cat([p, s], 2) for p, s in zip(rows.keys, self.keys)],
                       [torch.cat([p, s], 2) for p, s in zip(rows.values, self.values)],
                       torch.cat([rows.mask, self.mask], 1), self.next_pos)


def _check_row_user(row_user: torch.Tensor, n_users: int, values: bool = True) -> None:
    if row_user.dim() != 1 or row_user.dtype != torch.long:
        raise ValueError(f"row_user must be a 1-d int64 tensor, got shape "
                         f"{tuple(row_user.shape)} of {row_user.dtype}")
    if values and row_user.numel() and (int(row_user.min()) < 0 or int(row_user.max()) >= n_users):
        raise ValueError(f"row_user must index the {n_users} prefix rows, got values in "
                         f"[{int(row_user.min())}, {int(row_user.max())}]")


@dataclass
class RowGroups:
    """Where N rows sit in a [n_users, per_user] grid: row n in the grid of user row_user[n].

    ``slot`` [N]: row n's flat grid index (user * per_user + rank among the user's rows); None
    when the rows already are the grid (per_user consecutive rows per user, users in order: the
    layout of beam search and sampling), which needs no scatter and no padding.
    """

    n_users: int
    per_user: int
    slot: torch.Tensor | None

    @classmethod
    def of(cls, row_user: torch.Tensor, n_users: int) -> "RowGroups":
        n = int(row_user.shape[0])
        if n_users > 0 and n > 0 and n % n_users == 0:
            per = n // n_users
            dense = torch.arange(n_users, device=row_user.device).repeat_interleave(per)
            if torch.equal(row_user, dense):
                return cls(n_users, per, None)
        counts = torch.bincount(row_user, minlength=n_users)
        per = max(1, int(counts.max())) if n_users else 1
        order = torch.argsort(row_user, stable=True)
        first = torch.cumsum(counts, 0) - counts
        users = row_user[order]
        slot = torch.empty_like(row_user)
        slot[order] = users * per + torch.arange(n, device=row_user.device) - first[users]
        return cls(n_users, per, slot)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [N, H, T, E] -> grid [n_users, H, per_user * T, E] (empty slots are zeros)."""
        n, H, T, E = x.shape
        if self.slot is not None:
            grid = x.new_zeros(self.n_users * self.per_user, H, T, E)
            x = grid.index_copy(0, self.slot, x)
        return (x.view(self.n_users, self.per_user, H, T, E).transpose(1, 2)
                .reshape(self.n_users, H, self.per_user * T, E))

    def to_rows(self, y: torch.Tensor) -> torch.Tensor:
        """Grid [n_users, H, per_user * T, E] -> rows [N, H, T, E] (inverse of ``to_grid``)."""
        B, H, GT, E = y.shape
        T = GT // self.per_user
        y = y.view(B, H, self.per_user, T, E).transpose(1, 2).reshape(B * self.per_user, H, T, E)
        return y if self.slot is None else y.index_select(0, self.slot)


def shared_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            mask: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                            prefix_mask: torch.Tensor, groups: RowGroups,
                            dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Attention of N rows over [their user's history | their own keys], one softmax per query.

    q [N, H, T, Dh]; k, v [N, H, S, Dh] (the row's own keys: suffix cache + new tokens);
    mask [N, 1 or H, T, S] bool (True = may attend); prefix_k, prefix_v [B, H, Tp, Dh];
    prefix_mask [B, Tp] (True = real history token: every query of the user may attend it);
    groups: the rows' places in the [B, G] grid; scale: of the scores, 1 / sqrt(Dh) if None.
    Returns [N, H, T, Dh].
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    Tp = prefix_k.shape[2]
    hist = torch.matmul(groups.to_grid(q), prefix_k.transpose(-1, -2)) * scale  # [B, H, G*T, Tp]
    hist = hist.masked_fill(~prefix_mask[:, None, None, :], float("-inf"))
    own = torch.matmul(q, k.transpose(-1, -2)) * scale                         # [N, H, T, S]
    own = own.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(torch.cat([hist, groups.to_grid(own)], -1), -1)    # [B, H, G*T, Tp+S]
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    y_hist = groups.to_rows(torch.matmul(probs[..., :Tp], prefix_v))           # [N, H, T, Dh]
    return y_hist + torch.matmul(groups.to_rows(probs[..., Tp:]), v)


@dataclass
class HistoryView:
    """One layer's shared history, as ``shared_prefix_attention`` reads it."""

    keys: torch.Tensor     # [B, H, Tp, Dh]
    values: torch.Tensor   # [B, H, Tp, Dh]
    mask: torch.Tensor     # [B, Tp]
    groups: RowGroups


def history_views(cache: SharedKVCache) -> list[HistoryView]:
    """Per layer, the history the rows of ``cache`` attend to (the grid is computed once)."""
    groups = RowGroups.of(cache.row_user, cache.prefix.batch_size)
    return [HistoryView(k, v, cache.prefix.mask, groups)
            for k, v in zip(cache.prefix.keys, cache.prefix.values)]
