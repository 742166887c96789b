"""Training windows: the training rows of each user read as one sequence, cut into windows.

Generators (SFT) and SASRec both train on "every next item of each training sequence"; this module
turns the split's training rows into token windows in which every row's target is supervised
exactly once.
"""

from __future__ import annotations

import numpy as np

from vstar.data.types import SplitRows

WINDOW_MODES = ("chunks", "rows")    # the values of sft.windows and sasrec.windows


def build_windows(rows: SplitRows, max_history: int, mode: str = "chunks"
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token windows in which every training row's target is supervised exactly once.

    Returns (window item sequences, supervised flags): flags[j] is True where item j of the window
    is a row's target.

    - ``"rows"``: exact. Each target sees exactly its row's history (at most max_history items);
      rows that are prefixes of a longer row of the same user share that row's window.
    - ``"chunks"`` (default, cheap): a user's training rows form one sequence, cut into windows of
      max_history + 1 items that overlap by one item; a target sees the items before it in its
      window (between 1 and max_history of them), like SASRec's training. One pass per user's
      sequence instead of one window per row. Falls back to ``"rows"`` for a user whose rows are not
      a single chronological sequence.
    """
    if mode not in WINDOW_MODES:
        raise ValueError(f"sft.windows must be one of {WINDOW_MODES}, got {mode!r}")
    by_user: dict[int, list[int]] = {}
    for r in range(len(rows)):
        by_user.setdefault(int(rows.users[r]), []).append(r)
    windows, flags, exact_rows = [], [], []
    for user, rs in by_user.items():
        seq = list(rows.histories[rs[0]]) + [int(rows.targets[r]) for r in rs]
        n0 = len(rows.histories[rs[0]])
        consistent = mode == "chunks" and all(
            list(rows.histories[r]) == seq[max(0, n0 + j - len(rows.histories[r])): n0 + j]
            for j, r in enumerate(rs))
        if not consistent:
            exact_rows.extend(rs)
            continue
        is_target = np.zeros(len(seq), dtype=bool)
        is_target[n0:] = True
        for start in range(0, max(1, len(seq) - 1), max_history):
            w = np.asarray(seq[start:start + max_history + 1], dtype=np.int64)
            f = is_target[start:start + max_history + 1].copy()
            f[0] = False                      # the first item of a window is context only
            if f.any():
                windows.append(w)
                flags.append(f)
    if exact_rows:
        w, f = _row_windows(rows, np.asarray(exact_rows))
        windows += w
        flags += f
    return windows, flags


def _row_windows(rows: SplitRows, subset: np.ndarray):
    keys = {}
    for r in subset:
        key = (int(rows.users[r]), tuple(int(i) for i in rows.histories[r]) + (int(rows.targets[r]),))
        keys.setdefault(key, r)
    covered = set()
    windows, flags = [], []
    for key in sorted(keys, key=lambda k: -len(k[1])):
        if key in covered:
            continue
        user, seq = key
        flag = np.zeros(len(seq), dtype=bool)
        for m in range(2, len(seq) + 1):  # the prefix of length m ends with a row's target
            pk = (user, seq[:m])
            if pk in keys and pk not in covered:
                covered.add(pk)
                flag[m - 1] = True
        windows.append(np.asarray(seq, dtype=np.int64))
        flags.append(flag)
    return windows, flags
