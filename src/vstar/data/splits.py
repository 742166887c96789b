"""Train / validation / test rows, exactly as ``docs/protocol.md`` ("Splits") defines them.

A row is (user, history, target): the model sees ``history`` (oldest first, at most
``max_history`` items, never empty) and must rank ``target`` first.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from vstar.data.types import InteractionData, SplitRows, Splits
from vstar.core.errors import InputError

log = logging.getLogger(__name__)


class _RowBuilder:
    def __init__(self, ratings: list[np.ndarray] | None = None) -> None:
        self.users: list[int] = []
        self.histories: list[np.ndarray] = []
        self.targets: list[int] = []
        self.ratings = ratings                   # the data's per-user ratings, if any
        self.target_ratings: list[float] = []

    def add(self, user: int, seq: np.ndarray, pos: int, max_history: int) -> None:
        """Row predicting ``seq[pos]`` from the (at most ``max_history``) items before it."""
        self.users.append(user)
        self.histories.append(np.array(seq[max(0, pos - max_history):pos], dtype=np.int64))
        self.targets.append(int(seq[pos]))
        if self.ratings is not None:
            self.target_ratings.append(float(self.ratings[user][pos]))

    def build(self) -> SplitRows:
        return SplitRows(users=np.asarray(self.users, dtype=np.int64), histories=self.histories,
                         targets=np.asarray(self.targets, dtype=np.int64),
                         target_ratings=None if self.ratings is None else
                         np.asarray(self.target_ratings, dtype=np.float64))


def leave_one_out(data: InteractionData, max_history: int = 20) -> Splits:
    """Leave-one-out (TIGER, P5, LC-Rec): per user, last item = test, second to last = valid.

    For a user with n >= 3 items s[0..n-1]:
      train: targets s[1], ..., s[n-3] (every prefix of the training part),
      valid: target s[n-2], history s[:n-2],
      test:  target s[n-1], history s[:n-1] (includes the valid item).
    Every history keeps its most recent ``max_history`` items.
    Users with n == 2 give one train row (s[1] from [s[0]]) and no valid / test row; users with
    n <= 1 give no row at all. Both counts are logged.
    """
    if max_history < 1:
        raise InputError(f"max_history must be >= 1, got {max_history}", field="max_history")
    train, valid, test = (_RowBuilder(data.ratings) for _ in range(3))
    n_train_only = n_no_rows = 0
    for u, seq in enumerate(data.sequences):
        n = len(seq)
        if n < 3:
            if n == 2:
                train.add(u, seq, 1, max_history)
                n_train_only += 1
            else:
                n_no_rows += 1
            continue
        for pos in range(1, n - 2):
            train.add(u, seq, pos, max_history)
        valid.add(u, seq, n - 2, max_history)
        test.add(u, seq, n - 1, max_history)
    if n_train_only:
        log.info("leave_one_out: %d users with 2 interactions give only a train row", n_train_only)
    if n_no_rows:
        log.warning("leave_one_out: %d users with < 2 interactions give no row", n_no_rows)
    splits = Splits("leave_one_out", train.build(), valid.build(), test.build(), max_history)
    log.info("leave_one_out on %s: %d train / %d valid / %d test rows", data.name,
             len(splits.train), len(splits.valid), len(splits.test))
    return splits


def hold_out_last(rows: SplitRows, k: int) -> tuple[SplitRows, SplitRows]:
    """Split training rows into (SFT rows, RL rows): the last ``k`` rows of every user who has
    more than ``k`` go to RL, everything else to SFT (so every user still trains the generator).

    Rows of one user must be in chronological order, as ``leave_one_out`` and ``time_split``
    build them. RL on targets that SFT never supervised is what ``sft.rl_holdout`` asks for
    (docs/method.md, "RL rows held out from SFT"): the generator has not memorised them.
    """
    if k < 0:
        raise InputError(f"expected a non-negative number of rows, got {k}", field="sft.rl_holdout")
    n = len(rows)
    if k == 0 or n == 0:
        return rows, rows.subset(np.zeros(0, dtype=np.int64))
    users = np.asarray(rows.users)
    # rank of each row from its user's end: 0 for the user's last row, 1 before it, ...
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    start = np.searchsorted(sorted_users, sorted_users, side="left")
    stop = np.searchsorted(sorted_users, sorted_users, side="right")
    from_end = np.empty(n, dtype=np.int64)
    from_end[order] = stop - 1 - np.arange(n)
    count = np.empty(n, dtype=np.int64)
    count[order] = stop - start
    held = (from_end < k) & (count > k)
    return rows.subset(np.flatnonzero(~held)), rows.subset(np.flatnonzero(held))


def time_split(data: InteractionData, ratios: Sequence[float] = (0.8, 0.1, 0.1),
               max_history: int = 10) -> Splits:
    """Global time split (MiniOneRec): the first 80% of interactions in time are train targets,
    the next 10% valid, the last 10% test.

    Interactions are sorted by (timestamp, user index, position in the user's sequence). Split
    boundaries are floor(N * 0.8) and floor(N * 0.9) for N interactions. Each interaction gives
    the row (its user's at most ``max_history`` earlier items, whatever their split; itself).
    Interactions with no earlier item (a user's first) give no row; their count is logged.
    """
    if data.timestamps is None:
        raise InputError(f"dataset {data.name!r} has no timestamps; time_split needs them "
                         "(use protocol 'leave_one_out')", field="protocol")
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise InputError(f"split ratios must be 3 non-negative numbers summing to 1, got "
                         f"{list(ratios)}", field="split_ratios")
    if max_history < 1:
        raise InputError(f"max_history must be >= 1, got {max_history}", field="max_history")
    for u, ts in enumerate(data.timestamps):
        if len(ts) != len(data.sequences[u]):
            raise InputError(f"user {data.user_ids[u]!r}: {len(ts)} timestamps for "
                             f"{len(data.sequences[u])} items", field="timestamps")
        if len(ts) > 1 and np.any(np.diff(ts) < 0):
            raise InputError(f"user {data.user_ids[u]!r}: timestamps are not in chronological "
                             "order", field="timestamps")

    # one entry per interaction: (time, user, position); lexsort sorts by the last key first
    users = np.concatenate([np.full(len(s), u, dtype=np.int64)
                            for u, s in enumerate(data.sequences)] + [np.zeros(0, np.int64)])
    positions = np.concatenate([np.arange(len(s), dtype=np.int64) for s in data.sequences]
                               + [np.zeros(0, np.int64)])
    times = np.concatenate(list(data.timestamps) + [np.zeros(0)])
    order = np.lexsort((positions, users, times))  # [N] global chronological order
    n = len(order)
    cum = np.cumsum(ratios)
    b1, b2 = (int(np.floor(n * c + 1e-9)) for c in cum[:2])

    builders = tuple(_RowBuilder(data.ratings) for _ in range(3))
    skipped = [0, 0, 0]
    for rank, k in enumerate(order):
        part = 0 if rank < b1 else (1 if rank < b2 else 2)
        u, pos = int(users[k]), int(positions[k])
        if pos == 0:
            skipped[part] += 1
            continue
        builders[part].add(u, data.sequences[u], pos, max_history)
    if sum(skipped):
        log.info("time_split: skipped %d train / %d valid / %d test interactions with no earlier "
                 "item of the same user", *skipped)
    splits = Splits("time_split", *(b.build() for b in builders), max_history=max_history)
    log.info("time_split on %s: %d train / %d valid / %d test rows", data.name,
             len(splits.train), len(splits.valid), len(splits.test))
    return splits
