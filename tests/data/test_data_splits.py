"""Leave-one-out and time split rows, checked against hand-built sequences."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vstar.data import InteractionData, leave_one_out, time_split
from vstar.core.errors import InputError


def _data(seqs, times=None):
    n_items = 1 + max(i for s in seqs for i in s)
    return InteractionData(
        name="toy", item_ids=[str(i) for i in range(n_items)],
        user_ids=[f"u{u}" for u in range(len(seqs))],
        sequences=[np.asarray(s, dtype=np.int64) for s in seqs],
        timestamps=None if times is None else [np.asarray(t, dtype=np.float64) for t in times])


def _rows(rows):
    return [(int(u), h.tolist(), int(t)) for u, h, t in zip(rows.users, rows.histories,
                                                              rows.targets)]


def test_leave_one_out_exact_rows(caplog):
    data = _data([[10, 11, 12, 13, 14], [3, 4], [5], [0, 1, 2]])
    with caplog.at_level(logging.INFO, logger="vstar.data.splits"):
        s = leave_one_out(data, max_history=2)
    assert s.protocol == "leave_one_out" and s.max_history == 2
    assert _rows(s.train) == [(0, [10], 11), (0, [10, 11], 12), (1, [3], 4)]
    assert _rows(s.valid) == [(0, [11, 12], 13), (3, [0], 1)]
    assert _rows(s.test) == [(0, [12, 13], 14), (3, [0, 1], 2)]
    assert "1 users with 2 interactions" in caplog.text
    assert "1 users with < 2 interactions give no row" in caplog.text


def test_leave_one_out_test_history_includes_valid_item():
    s = leave_one_out(_data([[5, 6, 7, 8]]), max_history=20)
    assert _rows(s.train) == [(0, [5], 6)]
    assert _rows(s.valid) == [(0, [5, 6], 7)]
    assert _rows(s.test) == [(0, [5, 6, 7], 8)]


SEQS = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
TIMES = [[1, 2, 5, 9], [2, 3, 9], [4, 6, 7]]


def test_time_split_exact_rows(caplog):
    # global order (t, user, pos): u0p0 u0p1 u1p0 u1p1 u2p0 u0p2 | u2p1 u2p2 | u0p3 u1p2
    with caplog.at_level(logging.INFO, logger="vstar.data.splits"):
        s = time_split(_data(SEQS, TIMES), ratios=(0.6, 0.2, 0.2), max_history=2)
    assert _rows(s.train) == [(0, [0], 1), (1, [4], 5), (0, [0, 1], 2)]
    assert _rows(s.valid) == [(2, [7], 8), (2, [7, 8], 9)]
    assert _rows(s.test) == [(0, [1, 2], 3), (1, [4, 5], 6)]  # u0 first: tie at t=9
    assert "skipped 3 train / 0 valid / 0 test" in caplog.text


def test_time_split_boundaries_are_robust_to_float_sums():
    # 0.7 + 0.2 == 0.8999999999999999: still 7 / 2 / 1 of 10 interactions
    s = time_split(_data(SEQS, TIMES), ratios=(0.7, 0.2, 0.1), max_history=10)
    assert [len(s.train), len(s.valid), len(s.test)] == [4, 2, 1]
    assert _rows(s.test) == [(1, [4, 5], 6)]


def test_time_split_needs_timestamps():
    with pytest.raises(InputError, match="no timestamps"):
        time_split(_data(SEQS))


def test_time_split_rejects_bad_ratios():
    with pytest.raises(InputError, match="summing to 1"):
        time_split(_data(SEQS, TIMES), ratios=(0.8, 0.1))
