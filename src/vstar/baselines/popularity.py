"""Most-popular baseline: recommend the same top-K training items to everyone."""

from __future__ import annotations

import numpy as np

from vstar.data.types import SplitRows
from vstar.core.errors import InputError


class PopularityRecommender:
    """Ranks items by how often they occur among the *training interactions*.

    Training interactions of a user are recovered from the training rows without double counting
    the sliding prefixes: every row's target once, plus the items of the user's shortest history
    (the interactions before their first training target, e.g. the very first item of the
    sequence, which is never a target). When the rows are every prefix of each user's training
    sequence (leave-one-out and time split alike) this counts each training interaction exactly
    once. Validation and test targets are never seen: ``fit`` only receives the training rows.
    """

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None   # int64 [n_items] training interactions per item
        self.order: np.ndarray | None = None    # int64 [n_items] items, most popular first

    def fit(self, train: SplitRows, n_items: int) -> "PopularityRecommender":
        """Count training interactions per item; ties in the ranking go to the lower item index."""
        if n_items < 1:
            raise InputError(f"n_items must be >= 1, got {n_items}", field="n_items")
        targets = np.asarray(train.targets, dtype=np.int64)
        _check_items(targets, n_items, "targets")
        counts = np.bincount(targets, minlength=n_items).astype(np.int64)

        shortest: dict[int, np.ndarray] = {}   # user -> their shortest (earliest) history
        for user, history in zip(np.asarray(train.users).tolist(), train.histories):
            if user not in shortest or len(history) < len(shortest[user]):
                shortest[user] = history
        for history in shortest.values():
            history = np.asarray(history, dtype=np.int64)
            _check_items(history, n_items, "histories")
            counts += np.bincount(history, minlength=n_items)

        self.counts = counts
        self.order = np.argsort(-counts, kind="stable").astype(np.int64)  # stable: lower index wins ties
        return self

    def rank(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        """Top-``k`` items for each history: int64 [R, k], the same list in every row."""
        if self.order is None:
            raise RuntimeError("PopularityRecommender.rank called before fit")
        if not 1 <= k <= len(self.order):
            raise InputError(f"k must be in 1..{len(self.order)} (the catalogue size), got {k}", field="k")
        return np.tile(self.order[:k], (len(histories), 1))  # [R, k]


def _check_items(items: np.ndarray, n_items: int, field: str) -> None:
    if items.size and (items.min() < 0 or items.max() >= n_items):
        bad = items[(items < 0) | (items >= n_items)][0]
        raise InputError(f"item index {int(bad)} outside 0..{n_items - 1}", field=field)
