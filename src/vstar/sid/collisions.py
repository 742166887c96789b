"""Make SIDs collision-free (one SID per item) and summarise a set of SIDs.

- "extra_level" (TIGER): append one level whose code is the item's rank, in item order, within the
  group of items sharing its SID (0 for an item whose SID is unique). That level's codebook size is
  the largest group size. The extra level is always appended, so the number of levels does not
  depend on the data.
- "reassign": keep the L levels. Within each group of items sharing a SID the first item (lowest
  index) keeps it; each other item, in item order, moves to a last-level code that no item under
  the same (L-1)-level prefix uses: the free code whose centroid is nearest to the item's
  last-level residual when ``emb`` and ``centroids`` are given, else the lowest free code. If a
  prefix runs out of free codes, the remaining collisions are resolved with "extra_level" (a
  warning says so).
- "none": unchanged.
"""

from __future__ import annotations

import warnings

import numpy as np

from vstar.core.errors import InputError
from vstar.sid.config import COLLISION_METHODS
from vstar.sid.kmeans import residuals_at_level, squared_distances
from vstar.sid.types import SemanticIds


def _rank_within_sid(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank [N], group size [N]): item i is the rank[i]-th item (item order) holding its SID."""
    n = codes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")      # items grouped by SID, item order inside
    starts = np.cumsum(counts) - counts             # [G] first position of each group in `order`
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    return rank, counts[inverse]


def add_extra_level(sids: SemanticIds) -> SemanticIds:
    """TIGER-style: append the rank within the colliding group as one more level."""
    rank, group_size = _rank_within_sid(sids.codes)
    k_extra = int(group_size.max()) if len(group_size) else 1
    codes = np.concatenate([sids.codes, rank[:, None]], axis=1).astype(np.int64)  # [N, L+1]
    return SemanticIds(codes=codes, codebook_sizes=list(sids.codebook_sizes) + [k_extra])


def reassign_last_level(sids: SemanticIds, emb: np.ndarray | None = None,
                        centroids: list[np.ndarray] | None = None) -> tuple[SemanticIds, int]:
    """Move colliding items to free last-level codes under their prefix.

    Returns ``(sids, n_unresolved)``: items that found no free code keep their colliding SID.
    ``emb`` [N, D] are the vectors the tokenizer quantised and ``centroids[l]`` [K'_l, D] its
    per-level codebooks; with both, a moved item takes the free code nearest to its residual.
    """
    codes = sids.codes.copy()                                   # [N, L]
    n, n_levels = codes.shape
    k_last = int(sids.codebook_sizes[-1])
    rank, _ = _rank_within_sid(codes)
    movers = np.flatnonzero(rank > 0)                           # items that must leave their SID
    if len(movers) == 0:
        return SemanticIds(codes=codes, codebook_sizes=list(sids.codebook_sizes)), 0

    dist = None                                                 # [M, K_last] mover -> code distance
    if emb is not None and centroids is not None:
        if len(emb) != n or len(centroids) != n_levels:
            raise InputError(f"reassign needs one vector per item ({n}) and one codebook per "
                             f"level ({n_levels}), got {len(emb)} and {len(centroids)}",
                             field="embeddings")
        last = np.asarray(centroids[-1], dtype=np.float32)      # [K'_L, D], K'_L <= K_L
        r = residuals_at_level(emb[movers], codes[movers], centroids, n_levels - 1)  # [M, D]
        dist = np.full((len(movers), k_last), np.inf, dtype=np.float64)
        dist[:, :len(last)] = squared_distances(r, last)        # codes without a centroid: last

    if n_levels > 1:                                            # prefix = first L-1 codes
        prefix_id = np.unique(codes[:, :-1], axis=0, return_inverse=True)[1].ravel()  # [N]
    else:
        prefix_id = np.zeros(n, dtype=np.int64)                 # one level: one empty prefix
    n_unresolved = 0
    for p in np.unique(prefix_id[movers]):
        members = np.flatnonzero(prefix_id == p)
        free = np.ones(k_last, dtype=bool)
        free[codes[members, -1]] = False                        # codes used under this prefix
        for m in np.flatnonzero(prefix_id[movers] == p):        # movers of this prefix, item order
            if not free.any():
                n_unresolved += 1
                continue
            if dist is None:
                code = int(np.argmax(free))                     # lowest free code
            else:
                code = int(np.argmin(np.where(free, dist[m], np.inf)))
                if not np.isfinite(dist[m, code]):              # only centroid-less codes left
                    code = int(np.argmax(free))
            codes[movers[m], -1] = code
            free[code] = False
    return SemanticIds(codes=codes, codebook_sizes=list(sids.codebook_sizes)), n_unresolved


def resolve_collisions(sids: SemanticIds, method: str = "extra_level", emb: np.ndarray | None = None,
                       centroids: list[np.ndarray] | None = None) -> SemanticIds:
    """Collision-free SIDs (unless ``method == "none"``); the input is not modified.

    ``emb`` [N, D] and ``centroids`` (list of [K'_l, D]) are only used by "reassign" to choose
    the nearest free code; see the module docstring for each method.
    """
    if method == "none":
        return SemanticIds(codes=sids.codes.copy(), codebook_sizes=list(sids.codebook_sizes))
    if method == "extra_level":
        return add_extra_level(sids)
    if method == "reassign":
        out, n_unresolved = reassign_last_level(sids, emb, centroids)
        if n_unresolved:
            warnings.warn(f"collisions='reassign': {n_unresolved} colliding items found no free "
                          f"last-level code under their prefix (codebook size "
                          f"{sids.codebook_sizes[-1]}); falling back to an extra level",
                          stacklevel=2)
            out = add_extra_level(out)
        return out
    raise InputError(f"unknown collision handling {method!r}, expected one of {COLLISION_METHODS}",
                     field="sid.collisions")


def _perplexity(codes: np.ndarray) -> float:
    """exp(entropy) of the code distribution: the effective number of codes in use."""
    if len(codes) == 0:
        return 0.0
    p = np.unique(codes, return_counts=True)[1] / len(codes)
    return float(np.exp(-(p * np.log(p)).sum()))


def sid_report(before: SemanticIds, after: SemanticIds) -> dict:
    """Summary of SIDs before and after collision handling (JSON-serialisable)."""
    groups = np.unique(before.codes, axis=0, return_counts=True)[1] if before.n_items else [0]
    return {
        "n_items": after.n_items,
        "n_levels": after.n_levels,
        "codebook_sizes": [int(k) for k in after.codebook_sizes],
        "collision_rate_before": before.collision_rate(),
        "collision_rate_after": after.collision_rate(),
        "max_items_per_sid_before": int(np.max(groups)),
        # per level l: distinct codes used / K_l, and exp(entropy) of the code frequencies
        "codebook_usage": [len(np.unique(after.codes[:, l])) / int(k)
                           for l, k in enumerate(after.codebook_sizes)],
        "usage_perplexity": [_perplexity(after.codes[:, l]) for l in range(after.n_levels)],
    }
