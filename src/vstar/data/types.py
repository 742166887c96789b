"""The data structures every later stage reads. Items and users are dense 0-based indices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class InteractionData:
    """A catalogue plus each user's chronological interaction sequence.

    Internal item index ``i`` (0..n_items-1) maps to the user's own id ``item_ids[i]``.
    """

    name: str
    item_ids: list[str]                       # [n_items] external item ids
    user_ids: list[str]                       # [n_users] external user ids
    sequences: list[np.ndarray]               # [n_users] of int64 [len_u], chronological
    timestamps: list[np.ndarray] | None = None  # [n_users] of float64 [len_u], or None
    item_text: list[str] | None = None        # [n_items] one text per item, None if ID-only
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # numeric [n_items] columns
    ratings: list[np.ndarray] | None = None   # [n_users] of float64 [len_u] (explicit feedback,
                                              # e.g. MovieLens 1-5), aligned with sequences

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_popularity(self) -> np.ndarray:
        """Interaction count per item, int64 [n_items]."""
        counts = np.zeros(self.n_items, dtype=np.int64)
        for seq in self.sequences:
            np.add.at(counts, seq, 1)
        return counts


@dataclass
class SplitRows:
    """Rows of (user, history, target): predict ``targets[r]`` from ``histories[r]``."""

    users: np.ndarray            # int64 [R]
    histories: list[np.ndarray]  # [R] of int64 [<= max_history], oldest first, never empty
    targets: np.ndarray          # int64 [R]
    target_ratings: np.ndarray | None = None   # float64 [R]: the target's rating, when the
                                               # data has ratings (offline returns, DRPO)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: np.ndarray) -> "SplitRows":
        idx = np.asarray(idx)
        return SplitRows(self.users[idx], [self.histories[i] for i in idx], self.targets[idx],
                         None if self.target_ratings is None else self.target_ratings[idx])


@dataclass
class Splits:
    """Train / validation / test rows under one protocol ("leave_one_out" or "time_split")."""

    protocol: str
    train: SplitRows
    valid: SplitRows
    test: SplitRows
    max_history: int
