"""Iterative k-core."""

from __future__ import annotations

import numpy as np

from vstar.data import InteractionData, k_core


def test_k_core_needs_more_than_one_round():
    # items A B C D E = 0..4. Round 1 drops D, E (1 interaction each), so u2 ([C]) and
    # u3 ([A]) fall below 2 and go; then C has only u0 left and goes too.
    data = InteractionData(
        name="toy", item_ids=list("ABCDE"), user_ids=["u0", "u1", "u2", "u3"],
        sequences=[np.array(s) for s in ([0, 1, 2], [0, 1], [2, 3], [4, 0])],
        timestamps=[np.array(t, dtype=float) for t in ([1, 2, 3], [4, 5], [6, 7], [8, 9])],
        item_text=[f"text {c}" for c in "ABCDE"],
        item_features={"price": np.array([10.0, 20.0, 30.0, 40.0, 50.0])})
    out = k_core(data, 2)
    assert out.user_ids == ["u0", "u1"]
    assert out.item_ids == ["A", "B"]
    assert [s.tolist() for s in out.sequences] == [[0, 1], [0, 1]]
    assert [t.tolist() for t in out.timestamps] == [[1, 2], [4, 5]]
    assert out.item_text == ["text A", "text B"]
    assert out.item_features["price"].tolist() == [10.0, 20.0]
    assert data.n_users == 4  # input untouched


def test_k_core_reindexes_items_densely():
    data = InteractionData(name="toy", item_ids=list("ABC"), user_ids=["u0", "u1"],
                           sequences=[np.array([2, 0, 2]), np.array([2, 1, 2])])
    out = k_core(data, 2)  # A and B appear once: only C (repeats count) stays
    assert out.item_ids == ["C"]
    assert [s.tolist() for s in out.sequences] == [[0, 0], [0, 0]]


def test_k_core_zero_is_off():
    data = InteractionData(name="toy", item_ids=["A"], user_ids=["u"], sequences=[np.array([0])])
    assert k_core(data, 0) is data
