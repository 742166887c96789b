"""Full-catalogue ranking metrics for one-target-per-row evaluation (docs/protocol.md "Metrics").

Every function takes a ranked list of item indices per row:

    ranked   # [R, W] int, item indices in score order, -1 = empty slot (beam ran out)
    targets  # [R]    int, the held-out item of each row

and is vectorised over rows. Inputs may be numpy arrays, lists or torch tensors (CPU or GPU:
they are copied to host memory with ``.detach().cpu()``). Evaluation is by item index, never by
SID string.

Accuracy:  HR@K (= Recall@K with one target) and NDCG@K (IDCG = 1 with one target).
Diversity: catalogue coverage@K, intra-list distance ILD@K, long-tail share@K.
Validity:  the invalid rate of generated candidates (reported by the decoder).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from vstar.core.errors import InputError

DEFAULT_KS = (1, 3, 5, 10, 20)
LONG_TAIL_FRACTION = 0.8  # the least popular 80% of the catalogue is the "long tail"


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors (any device) are detached and copied to CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_ranked(ranked: Any) -> np.ndarray:
    ranked = _to_numpy(ranked)
    if ranked.ndim != 2:
        raise InputError(f"expected a 2-D ranked list [rows, width], got shape {ranked.shape}",
                         field="ranked")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise InputError(f"expected integer item indices, got dtype {ranked.dtype}", field="ranked")
    return ranked.astype(np.int64, copy=False)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"K must be a positive integer, got {k!r}", field="k")
    return int(k)


def _check_items(ranked: np.ndarray, n_items: int, field: str = "ranked") -> None:
    if ranked.size and (ranked.min() < -1 or ranked.max() >= n_items):
        raise InputError(f"item indices must lie in [0, {n_items}) or be -1 (empty slot); "
                         f"got min {ranked.min()}, max {ranked.max()}", field=field)


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------

def target_ranks(ranked: Any, targets: Any) -> np.ndarray:
    """1-based rank of each row's target in its ranked list, 0 if the target is absent.

    ranked: [R, W] item indices (-1 = empty slot); targets: [R]. If an item appears twice in a
    row, its first position counts. Returns ranks [R] int64.
    """
    ranked = _as_ranked(ranked)
    targets = _to_numpy(targets).astype(np.int64, copy=False)
    if targets.shape != (ranked.shape[0],):
        raise InputError(f"targets must have shape [{ranked.shape[0]}] (one per ranked row), "
                         f"got {targets.shape}", field="targets")
    if targets.size and targets.min() < 0:
        raise InputError("targets must be item indices >= 0", field="targets")
    match = ranked == targets[:, None]                          # [R, W]
    first = match.argmax(axis=1)                                # [R] first True (0 if none)
    return np.where(match.any(axis=1), first + 1, 0).astype(np.int64)


def _as_ranks(ranks: Any) -> np.ndarray:
    ranks = _to_numpy(ranks).astype(np.int64, copy=False)
    if ranks.ndim != 1:
        raise InputError(f"ranks must be 1-D [R], got shape {ranks.shape}", field="ranks")
    if ranks.size == 0:
        raise InputError("no rows to evaluate (ranks is empty)", field="ranks")
    return ranks


def hit_at_k_per_row(ranks: Any, k: int) -> np.ndarray:
    """Per-row hit indicator [R] float64: 1.0 if 1 <= rank <= K else 0.0 (for paired tests)."""
    ranks, k = _as_ranks(ranks), _check_k(k)
    return ((ranks >= 1) & (ranks <= k)).astype(np.float64)


def ndcg_at_k_per_row(ranks: Any, k: int) -> np.ndarray:
    """Per-row NDCG@K [R] float64: 1 / log2(rank + 1) if 1 <= rank <= K else 0 (IDCG = 1)."""
    ranks, k = _as_ranks(ranks), _check_k(k)
    hit = (ranks >= 1) & (ranks <= k)
    gain = 1.0 / np.log2(np.maximum(ranks, 1) + 1.0)            # safe for rank 0, masked below
    return np.where(hit, gain, 0.0)


def hit_rate(ranks: Any, k: int) -> float:
    """HR@K: share of rows whose target has 1-based rank <= K."""
    return float(hit_at_k_per_row(ranks, k).mean())


def ndcg(ranks: Any, k: int) -> float:
    """NDCG@K: mean over rows of 1 / log2(rank + 1) for rank <= K, else 0 (single target)."""
    return float(ndcg_at_k_per_row(ranks, k).mean())


# ---------------------------------------------------------------------------------------------
# diversity
# ---------------------------------------------------------------------------------------------

def coverage_at_k(ranked: Any, n_items: int, k: int) -> float:
    """Catalogue coverage@K: distinct items over all rows' top-K lists / n_items."""
    ranked, k = _as_ranked(ranked), _check_k(k)
    if n_items < 1:
        raise InputError(f"n_items must be >= 1, got {n_items}", field="n_items")
    _check_items(ranked, n_items)
    top = ranked[:, :k]
    return float(np.unique(top[top >= 0]).size / n_items)


def intra_list_distance_at_k(ranked: Any, item_emb: Any, k: int) -> float:
    """ILD@K: mean over rows of (1 - mean pairwise cosine among the row's top-K items).

    item_emb: [N, D] item (text) embeddings. Pairs are unordered (i < j) over the valid slots
    (-1 excluded); an item repeated in a row forms a pair with cosine 1. Rows with fewer than
    2 valid items are skipped; NaN if no row has 2. A zero embedding has cosine 0 with all.
    """
    ranked, k = _as_ranked(ranked), _check_k(k)
    item_emb = _to_numpy(item_emb)
    if not np.issubdtype(item_emb.dtype, np.floating):
        item_emb = item_emb.astype(np.float64)              # float32 input stays float32 (speed)
    if item_emb.ndim != 2:
        raise InputError(f"item_emb must be [n_items, dim], got shape {item_emb.shape}",
                         field="item_emb")
    _check_items(ranked, item_emb.shape[0])
    norm = np.linalg.norm(item_emb, axis=1, keepdims=True)
    unit = item_emb / np.where(norm > 0, norm, 1.0)             # [N, D]
    top = ranked[:, :k]                                         # [R, k']
    kk = top.shape[1]
    upper = np.triu(np.ones((kk, kk), dtype=bool), 1)           # [k', k'] pairs i < j
    sums, counts = [], []
    chunk_rows = max(1, 2**23 // max(1, kk * item_emb.shape[1]))  # bounded memory: ~8M floats
    for start in range(0, top.shape[0], chunk_rows):
        t = top[start:start + chunk_rows]                       # [C, k']
        valid = t >= 0
        e = unit[np.where(valid, t, 0)] * valid[..., None]      # [C, k', D] (invalid -> 0)
        cos = e @ e.transpose(0, 2, 1)                          # [C, k', k']
        pair = valid[:, :, None] & valid[:, None, :] & upper    # [C, k', k']
        sums.append((cos * pair).sum(axis=(1, 2)))
        counts.append(pair.sum(axis=(1, 2)))
    if not sums:
        return float("nan")
    sums, counts = np.concatenate(sums), np.concatenate(counts)
    keep = counts > 0                                           # rows with >= 2 valid items
    if not keep.any():
        return float("nan")
    return float(np.mean(1.0 - sums[keep].astype(np.float64) / counts[keep]))


def long_tail_items(popularity: Any, tail_fraction: float = LONG_TAIL_FRACTION) -> np.ndarray:
    """Boolean mask [N]: True for the least popular ``floor(tail_fraction * N)`` items.

    Items are sorted by popularity ascending; ties are broken by item index, the lower index
    counting as less popular (so the split is deterministic even with many equal counts).
    """
    popularity = _to_numpy(popularity)
    if popularity.ndim != 1 or popularity.size == 0:
        raise InputError(f"popularity must be a non-empty 1-D array [n_items], got shape "
                         f"{popularity.shape}", field="popularity")
    n = popularity.size
    order = np.lexsort((np.arange(n), popularity))              # popularity asc, then index asc
    n_tail = int(np.floor(tail_fraction * n + 1e-9))
    tail = np.zeros(n, dtype=bool)
    tail[order[:n_tail]] = True
    return tail


def long_tail_share_at_k(ranked: Any, popularity: Any, k: int, *,
                         tail_fraction: float = LONG_TAIL_FRACTION) -> float:
    """Share of recommended top-K slots (excluding -1) holding a long-tail item.

    popularity: [N] per-item popularity (e.g. training interaction counts). Long tail =
    ``long_tail_items(popularity, tail_fraction)``. Pooled over all slots of all rows; NaN if
    there is no valid slot.
    """
    ranked, k = _as_ranked(ranked), _check_k(k)
    tail = long_tail_items(popularity, tail_fraction)
    _check_items(ranked, tail.size)
    top = ranked[:, :k]
    slots = top[top >= 0]
    if slots.size == 0:
        return float("nan")
    return float(tail[slots].mean())


# ---------------------------------------------------------------------------------------------
# validity
# ---------------------------------------------------------------------------------------------

def invalid_rate(valid_mask: Any = None, *, n_invalid: int | None = None,
                 n_generated: int | None = None) -> float:
    """Share of generated candidates that are not catalogue items.

    Either ``invalid_rate(valid_mask)`` with a boolean array (True = a catalogue item, any
    shape, one entry per generated candidate), or ``invalid_rate(n_invalid=.., n_generated=..)``
    with the decoder's counts. Nothing generated gives 0.0.
    """
    if valid_mask is not None:
        if n_invalid is not None or n_generated is not None:
            raise InputError("pass either valid_mask or the counts, not both", field="valid_mask")
        valid = _to_numpy(valid_mask).astype(bool)
        return float(1.0 - valid.mean()) if valid.size else 0.0
    if n_invalid is None or n_generated is None:
        raise InputError("pass valid_mask, or both n_invalid and n_generated", field="n_invalid")
    if n_generated < 0 or not 0 <= n_invalid <= max(n_generated, 0):
        raise InputError(f"need 0 <= n_invalid <= n_generated, got {n_invalid} / {n_generated}",
                         field="n_invalid")
    return float(n_invalid / n_generated) if n_generated else 0.0


# ---------------------------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------------------------

def evaluate_ranking(ranked: Any, targets: Any, *, n_items: int,
                     ks: Sequence[int] = DEFAULT_KS, item_emb: Any = None,
                     popularity: Any = None) -> dict[str, float]:
    """All top-K metrics of a ranking, as {"HR@1": .., "NDCG@10": .., "coverage@10": .., ...}.

    ranked: [R, W] item indices (-1 = empty slot); targets: [R]. ILD@K needs ``item_emb``
    [n_items, D], long_tail@K needs ``popularity`` [n_items]; those keys are absent otherwise.
    A K larger than W is still defined (targets beyond the list are misses) but warns, since
    the number then understates what a wider beam would give.
    """
    ranked = _as_ranked(ranked)
    _check_items(ranked, n_items)
    targets_np = _to_numpy(targets)
    if targets_np.size and (targets_np.min() < 0 or targets_np.max() >= n_items):
        raise InputError(f"targets must lie in [0, {n_items})", field="targets")
    ks = [_check_k(k) for k in ks]
    width = ranked.shape[1]
    too_wide = [k for k in ks if k > width]
    if too_wide:
        warnings.warn(f"K={too_wide} exceed the ranked list width W={width}: targets beyond "
                      f"W count as misses", UserWarning, stacklevel=2)
    ranks = target_ranks(ranked, targets_np)                    # [R]
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate(ranks, k)
    for k in ks:
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    for k in ks:
        out[f"coverage@{k}"] = coverage_at_k(ranked, n_items, k)
    if item_emb is not None:
        if _to_numpy(item_emb).shape[:1] != (n_items,):
            raise InputError(f"item_emb must have {n_items} rows (one per item)", field="item_emb")
        for k in ks:
            out[f"ILD@{k}"] = intra_list_distance_at_k(ranked, item_emb, k)
    if popularity is not None:
        if _to_numpy(popularity).shape != (n_items,):
            raise InputError(f"popularity must have shape [{n_items}]", field="popularity")
        for k in ks:
            out[f"long_tail@{k}"] = long_tail_share_at_k(ranked, popularity, k)
    return out
