"""Most-popular baseline: hand-counted rankings over training interactions."""

import numpy as np
import pytest

from vstar.baselines import PopularityRecommender
from vstar.data.types import SplitRows
from vstar.core.errors import InputError


def _rows(rows: list[tuple[int, list[int], int]]) -> SplitRows:
    users = np.array([u for u, _, _ in rows], dtype=np.int64)
    return SplitRows(users, [np.array(h, dtype=np.int64) for _, h, _ in rows],
                     np.array([t for _, _, t in rows], dtype=np.int64))


# user 0's training sequence is [2, 0, 1, 1], user 1's is [3, 1]: one row per prefix
TRAIN = _rows([
    (0, [2], 0), (0, [2, 0], 1), (0, [2, 0, 1], 1),
    (1, [3], 1),
])


def test_counts_each_training_interaction_once():
    pop = PopularityRecommender().fit(TRAIN, n_items=5)
    # by hand: item 0 once, item 1 three times (user 0 twice, user 1 once), items 2 and 3 once;
    # the sliding histories ([2], [2, 0], [2, 0, 1]) must not count item 2 three times
    assert pop.counts.tolist() == [1, 3, 1, 1, 0]


def test_rank_same_list_for_everyone_ties_to_lower_index():
    pop = PopularityRecommender().fit(TRAIN, n_items=5)
    ranked = pop.rank([np.array([4]), np.array([0, 1]), np.array([3])], k=4)
    assert ranked.dtype == np.int64 and ranked.shape == (3, 4)
    # item 1 (3 interactions) first, then items 0, 2, 3 (1 each) in index order; item 4 last
    assert ranked.tolist() == [[1, 0, 2, 3]] * 3
    assert pop.rank([np.array([0])], k=5)[0, -1] == 4


def test_one_row_per_user_counts_history_and_target():
    # a split with a single (full history, last training item) row per user
    pop = PopularityRecommender().fit(_rows([(0, [2, 0, 1], 1), (1, [3], 1)]), n_items=5)
    assert pop.counts.tolist() == [1, 3, 1, 1, 0]


def test_bad_input_raises():
    with pytest.raises(InputError, match="targets"):
        PopularityRecommender().fit(_rows([(0, [1], 7)]), n_items=5)
    with pytest.raises(InputError, match="histories"):
        PopularityRecommender().fit(_rows([(0, [9], 1)]), n_items=5)
    pop = PopularityRecommender().fit(TRAIN, n_items=5)
    with pytest.raises(InputError, match="k"):
        pop.rank([np.array([0])], k=6)
