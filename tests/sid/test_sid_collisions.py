"""Collision handling and the SID report, on hand-made SIDs."""

import math

import numpy as np
import pytest

from vstar.core.errors import InputError
from vstar.sid.collisions import resolve_collisions, sid_report
from vstar.sid.types import SemanticIds


def hand_sids() -> SemanticIds:
    # items 0,1 share (0,0); items 2,3,4 share (1,2); item 5 is alone
    codes = np.array([[0, 0], [0, 0], [1, 2], [1, 2], [1, 2], [3, 1]])
    return SemanticIds(codes=codes, codebook_sizes=[4, 4])


def test_extra_level_appends_rank_within_group():
    before = hand_sids()
    after = resolve_collisions(before, "extra_level")
    np.testing.assert_array_equal(after.codes[:, 2], [0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(after.codes[:, :2], before.codes)  # first levels untouched
    assert after.codebook_sizes == [4, 4, 3]                         # largest group has 3 items
    assert after.is_collision_free()
    assert not before.is_collision_free()                            # the input is not modified


def test_extra_level_on_collision_free_sids_appends_zeros():
    sids = SemanticIds(codes=np.array([[0, 1], [1, 0]]), codebook_sizes=[2, 2])
    after = resolve_collisions(sids, "extra_level")
    np.testing.assert_array_equal(after.codes, [[0, 1, 0], [1, 0, 0]])
    assert after.codebook_sizes == [2, 2, 1]


def test_reassign_without_vectors_takes_lowest_free_code():
    after = resolve_collisions(hand_sids(), "reassign")
    # prefix 0 uses last code 0 -> item 1 gets 1; prefix 1 uses 2 -> items 3, 4 get 0, 1
    np.testing.assert_array_equal(after.codes, [[0, 0], [0, 1], [1, 2], [1, 0], [1, 1], [3, 1]])
    assert after.codebook_sizes == [4, 4] and after.is_collision_free()


def test_reassign_with_vectors_takes_nearest_free_centroid():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 0]])
    sids = SemanticIds(codes=codes, codebook_sizes=[2, 4])
    centroids = [np.array([[0.0], [10.0]]), np.array([[0.0], [1.0], [2.0], [3.0]])]
    emb = np.array([[0.9], [3.2], [2.1], [10.0]], dtype=np.float32)  # item 1: residual 3.2
    after = resolve_collisions(sids, "reassign", emb=emb, centroids=centroids)
    np.testing.assert_array_equal(after.codes, [[0, 1], [0, 3], [0, 2], [1, 0]])  # free {0, 3}: 3


def test_reassign_falls_back_to_extra_level_with_a_warning():
    sids = SemanticIds(codes=np.zeros((3, 2), dtype=np.int64), codebook_sizes=[1, 2])
    with pytest.warns(UserWarning, match="1 colliding items found no free"):
        after = resolve_collisions(sids, "reassign")
    assert after.n_levels == 3 and after.is_collision_free()
    np.testing.assert_array_equal(after.codes, [[0, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_none_keeps_collisions_and_unknown_method_fails():
    assert resolve_collisions(hand_sids(), "none").collision_rate() == pytest.approx(5 / 6)
    with pytest.raises(InputError, match="sid.collisions"):
        resolve_collisions(hand_sids(), "drop")


def test_report_numbers_on_hand_case():
    before = hand_sids()
    rep = sid_report(before, resolve_collisions(before, "extra_level"))
    assert rep["collision_rate_before"] == pytest.approx(5 / 6)
    assert rep["collision_rate_after"] == 0.0
    assert rep["max_items_per_sid_before"] == 3
    assert rep["n_levels"] == 3 and rep["codebook_sizes"] == [4, 4, 3]
    assert rep["codebook_usage"] == pytest.approx([3 / 4, 3 / 4, 3 / 3])
    h0 = -(2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6) + 1 / 6 * math.log(1 / 6))
    assert rep["usage_perplexity"][0] == pytest.approx(math.exp(h0))   # codes 0,0,1,1,1,3
    assert rep["usage_perplexity"][2] == pytest.approx(math.exp(h0))   # ranks 0,1,0,1,2,0
