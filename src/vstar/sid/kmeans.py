"""Residual k-means semantic IDs (RK-Means) and its balanced variant.

Level l clusters the residuals r_l (r_1 = item vector) into K_l clusters, gives each item the index
of its nearest centroid c_l, and passes on r_{l+1} = r_l - c_l. The SID is the tuple of indices.
Each level runs faiss Lloyd k-means (``niter`` iterations) from a seeded k-means++ start.

Balanced variant (``balanced=True``): every level's clusters hold floor(N/K) or ceil(N/K) items.
Starting from the faiss k-means centroids, ``balanced_iters`` rounds alternate
  1. greedy capacity-constrained assignment: items, in order of their distance to their nearest
     centroid (closest first), take the nearest centroid that still has room (capacities: N mod K
     clusters of ceil(N/K), the others floor(N/K), decided first come first served), and
  2. centroid update: each centroid becomes the mean of the items it holds.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from vstar.core.errors import InputError
from vstar.sid.types import SemanticIds


def _check_vectors(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise InputError(f"expected item vectors of shape [n_items, dim], got {emb.shape}",
                         field="embeddings")
    if not np.isfinite(emb).all():
        raise InputError("item vectors hold NaN or infinite values", field="embeddings")
    return np.ascontiguousarray(emb, dtype=np.float32)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): k rows of ``x`` [N, D], float32 [k, D].

    Each next centre is drawn with probability proportional to the squared distance to the
    nearest centre chosen so far.
    """
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    centers[0] = x[rng.integers(len(x))]
    d2 = ((x - centers[0]) ** 2).sum(1).astype(np.float64)  # [N] distance to the nearest centre
    for j in range(1, k):
        total = d2.sum()
        i = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centers[j] = x[i]
        d2 = np.minimum(d2, ((x - centers[j]) ** 2).sum(1))
    return centers


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """Lloyd k-means (faiss) from a seeded k-means++ start: centroids float32 [k, D].

    k-means++ runs on at most 256 * k points (faiss trains on the same budget), so seeding stays
    cheap for large catalogues.
    """
    import faiss

    rng = np.random.default_rng(seed)
    sample = x if len(x) <= 256 * k else x[rng.choice(len(x), 256 * k, replace=False)]
    init = kmeans_plus_plus(sample, k, rng)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                      min_points_per_centroid=1)  # no "too few points" warning for small catalogues
    km.train(x, init_centroids=init)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||x_i - c_k||^2 for all pairs: float32 [N, K]."""
    d = (x * x).sum(1, keepdims=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    return np.maximum(d, 0.0)


def balanced_assign(dist: np.ndarray) -> np.ndarray:
    """Greedy equal-size assignment: int64 [N], every cluster gets floor(N/K) or ceil(N/K) items.

    ``dist`` is [N, K] with K <= N. Items closest to a centroid choose first; each takes the
    nearest cluster with room.
    """
    n, k = dist.shape
    base, extra = divmod(n, k)       # `extra` clusters hold base + 1 items, the others base
    size = np.zeros(k, dtype=np.int64)
    room = np.ones(k, dtype=bool)    # cluster can still take an item
    n_plus = 0                       # clusters already holding base + 1 items
    assign = np.empty(n, dtype=np.int64)
    for i in np.argsort(dist.min(1), kind="stable"):
        c = int(np.argmin(np.where(room, dist[i], np.inf)))
        assign[i] = c
        size[c] += 1
        if size[c] == base + 1:
            n_plus += 1
            room[c] = False
        if n_plus == extra:
            room &= size < base      # the ceil(N/K) slots are used up: others stop at floor(N/K)
    return assign


def fit_residual_kmeans(emb: np.ndarray, codebook_sizes: list[int], seed: int = 0,
                        balanced: bool = False, niter: int = 25, balanced_iters: int = 10,
                        show_progress: bool = False) -> tuple[SemanticIds, list[np.ndarray]]:
    """Residual k-means SIDs and the per-level centroids.

    Returns ``(sids, centroids)`` with ``centroids[l]`` float32 [K'_l, D] where
    K'_l = min(K_l, N): a catalogue smaller than a codebook uses only N codes at that level,
    while ``sids.codebook_sizes`` stays as given.
    """
    x = _check_vectors(emb)
    sizes = [int(k) for k in codebook_sizes]
    if not sizes or min(sizes) < 1:
        raise InputError(f"expected positive codebook sizes, got {sizes}", field="codebook_sizes")
    n = x.shape[0]
    codes = np.zeros((n, len(sizes)), dtype=np.int64)  # [N, L]
    centroids: list[np.ndarray] = []
    residual = x.copy()                                  # r_1 = item vector, [N, D]
    for level, k in enumerate(tqdm(sizes, desc="residual k-means", disable=not show_progress)):
        k_eff = min(k, n)
        if k_eff == 0:
            centroids.append(np.zeros((0, x.shape[1]), dtype=np.float32))
            continue
        c = _faiss_kmeans(residual, k_eff, seed + level, niter)  # [K', D]
        dist = squared_distances(residual, c)                    # [N, K']
        assign = dist.argmin(1)
        if balanced:
            for _ in range(balanced_iters):
                assign = balanced_assign(dist)
                for j in range(k_eff):                           # c_j = mean of its members
                    members = residual[assign == j]
                    if len(members):
                        c[j] = members.mean(0)
                dist = squared_distances(residual, c)
            assign = balanced_assign(dist)
        codes[:, level] = assign
        centroids.append(c)
        residual = residual - c[assign]                          # r_{l+1} = r_l - c_l
    return SemanticIds(codes=codes, codebook_sizes=sizes), centroids


def residual_kmeans(emb: np.ndarray, codebook_sizes: list[int], seed: int = 0,
                    balanced: bool = False, niter: int = 25, balanced_iters: int = 10,
                    show_progress: bool = False) -> SemanticIds:
    """Residual k-means SIDs for item vectors ``emb`` [N, D] (see the module docstring)."""
    return fit_residual_kmeans(emb, codebook_sizes, seed, balanced, niter, balanced_iters,
                               show_progress)[0]


def residuals_at_level(emb: np.ndarray, codes: np.ndarray, centroids: list[np.ndarray],
                       level: int) -> np.ndarray:
    """The vectors level ``level`` quantised: r_level = emb - sum_{l < level} c_l[codes[:, l]]."""
    r = np.asarray(emb, dtype=np.float32).copy()  # [N, D]
    for l in range(level):
        r -= centroids[l][codes[:, l]]
    return r
