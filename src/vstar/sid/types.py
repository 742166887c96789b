"""Semantic IDs: one tuple of codes per catalogue item."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SemanticIds:
    """``codes[i, l]`` is item i's code at level l, in ``range(codebook_sizes[l])``.

    Collision-free means every row of ``codes`` is distinct (each SID names one item).
    """

    codes: np.ndarray          # int64 [n_items, n_levels]
    codebook_sizes: list[int]  # [n_levels]

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.codes.shape[1])

    def collision_rate(self) -> float:
        """Share of items whose SID is also another item's SID."""
        _, inverse, counts = np.unique(self.codes, axis=0, return_inverse=True, return_counts=True)
        return float((counts[inverse.ravel()] > 1).mean()) if self.n_items else 0.0

    def is_collision_free(self) -> bool:
        return len(np.unique(self.codes, axis=0)) == self.n_items
