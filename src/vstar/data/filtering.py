"""Dataset filters applied after loading (k-core)."""

from __future__ import annotations

import logging

import numpy as np

from vstar.data.types import InteractionData

log = logging.getLogger(__name__)


def k_core(data: InteractionData, k: int) -> InteractionData:
    """Iterative k-core: keep only users and items with at least ``k`` interactions each.

    Removing a rare item can push a user below ``k`` and vice versa, so the two filters repeat
    until nothing changes. Repeated interactions count each time. Items are re-indexed densely
    in their old order (``item_ids``, ``item_text`` and ``item_features`` stay aligned); items
    with no interaction left leave the catalogue. ``k <= 0`` returns ``data`` unchanged.
    """
    if k <= 0:
        return data
    sequences = list(data.sequences)
    timestamps = list(data.timestamps) if data.timestamps is not None else None
    ratings = list(data.ratings) if data.ratings is not None else None
    keep_user = np.ones(data.n_users, dtype=bool)
    keep_item = np.ones(data.n_items, dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        counts = np.zeros(data.n_items, dtype=np.int64)
        for u in np.flatnonzero(keep_user):
            np.add.at(counts, sequences[u], 1)
        new_keep_item = keep_item & (counts >= k)
        for u in np.flatnonzero(keep_user):
            mask = new_keep_item[sequences[u]]
            if not mask.all():
                sequences[u] = sequences[u][mask]
                if timestamps is not None:
                    timestamps[u] = timestamps[u][mask]
                if ratings is not None:
                    ratings[u] = ratings[u][mask]
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        new_keep_user = keep_user & (lengths >= k)
        changed = (new_keep_item != keep_item).any() or (new_keep_user != keep_user).any()
        keep_item, keep_user = new_keep_item, new_keep_user
        if not changed:
            break

    old_to_new = np.full(data.n_items, -1, dtype=np.int64)
    old_to_new[keep_item] = np.arange(int(keep_item.sum()))
    users = np.flatnonzero(keep_user)
    out = InteractionData(
        name=data.name,
        item_ids=[data.item_ids[i] for i in np.flatnonzero(keep_item)],
        user_ids=[data.user_ids[u] for u in users],
        sequences=[old_to_new[sequences[u]] for u in users],
        timestamps=None if timestamps is None else [timestamps[u] for u in users],
        item_text=None if data.item_text is None else
        [data.item_text[i] for i in np.flatnonzero(keep_item)],
        item_features={c: v[keep_item] for c, v in data.item_features.items()},
        ratings=None if ratings is None else [ratings[u] for u in users],
    )
    log.info("%d-core on %s (%d rounds): users %d -> %d, items %d -> %d, interactions %d -> %d",
             k, data.name, rounds, data.n_users, out.n_users, data.n_items, out.n_items,
             data.n_interactions, out.n_interactions)
    return out
