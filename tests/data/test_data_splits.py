"""Leave-one-out and time split rows, checked against hand-built sequences."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vstar.data import InteractionData, leave_one_out, time_split
from vstar.data.splits import hold_out_last
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


def test_hold_out_last_gives_each_users_last_rows_to_rl():
    # user 0: 5 items -> train targets s[1], s[2]; user 1: 6 items -> s[1..3]; user 2: 2 items
    # -> one train row (kept for SFT: it has no more than k rows)
    data = _data([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13]])
    train = leave_one_out(data).train
    assert train.targets.tolist() == [2, 3, 7, 8, 9, 13]
    sft, rl = hold_out_last(train, 1)
    assert rl.targets.tolist() == [3, 9] and rl.users.tolist() == [0, 1]
    assert [h.tolist() for h in rl.histories] == [[1, 2], [6, 7, 8]]
    assert sft.targets.tolist() == [2, 7, 8, 13]
    sft2, rl2 = hold_out_last(train, 2)
    assert rl2.targets.tolist() == [8, 9] and sft2.targets.tolist() == [2, 3, 7, 13]
    same, none = hold_out_last(train, 0)
    assert same is train and len(none) == 0
    with pytest.raises(InputError, match="sft.rl_holdout"):
        hold_out_last(train, -1)


def test_hold_out_last_does_not_need_rows_sorted_by_user():
    train = leave_one_out(_data([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])).train
    shuffled = train.subset(np.array([2, 0, 3, 1, 4]))   # users interleaved, each in order
    sft, rl = hold_out_last(shuffled, 1)
    assert sorted(rl.targets.tolist()) == [3, 9] and sorted(sft.targets.tolist()) == [2, 7, 8]
