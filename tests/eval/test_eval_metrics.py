"""Ranking metrics: hand-computed cases and a naive pure-Python reference on random data."""

import math
import warnings

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.eval.metrics import (
    coverage_at_k,
    evaluate_ranking,
    hit_at_k_per_row,
    hit_rate,
    intra_list_distance_at_k,
    invalid_rate,
    long_tail_items,
    long_tail_share_at_k,
    ndcg,
    ndcg_at_k_per_row,
    target_ranks,
)

# 4 rows, width 4, catalogue of 10 items
RANKED = np.array([[3, 1, 2, -1],
                   [0, 4, 5, 6],
                   [7, 8, 9, 1],
                   [2, 2, 0, -1]])
TARGETS = np.array([1, 6, 5, 2])


def test_target_ranks_hand_computed():
    # row0: 1 at position 2; row1: 6 at position 4; row2: 5 absent -> 0;
    # row3: 2 appears twice, the first position (1) counts
    assert target_ranks(RANKED, TARGETS).tolist() == [2, 4, 0, 1]


def test_empty_slot_never_matches():
    assert target_ranks(np.array([[-1, -1]]), np.array([0])).tolist() == [0]


def test_hit_rate_and_ndcg_hand_computed():
    ranks = np.array([2, 4, 0, 1])
    assert hit_rate(ranks, 1) == 0.25               # only rank 1: 1/4
    assert hit_rate(ranks, 3) == 0.5                # ranks 2 and 1: 2/4
    assert hit_rate(ranks, 5) == 0.75               # ranks 2, 4, 1: 3/4
    assert ndcg(ranks, 1) == 0.25                   # 1/log2(2) = 1, /4
    # (1/log2(3) + 1/log2(2)) / 4 = (0.6309297535714575 + 1) / 4
    assert ndcg(ranks, 3) == pytest.approx(0.40773243839286437, abs=1e-12)
    # (1/log2(3) + 1/log2(5) + 1) / 4 = (0.6309297535714575 + 0.43067655807339306 + 1) / 4
    assert ndcg(ranks, 5) == pytest.approx(0.5154015779112126, abs=1e-12)
    assert hit_at_k_per_row(ranks, 3).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert ndcg_at_k_per_row(ranks, 3) == pytest.approx([0.6309297535714575, 0, 0, 1.0])


def test_coverage_hand_computed():
    # top-1 items {3, 0, 7, 2} -> 4/10; top-2 adds {1, 4, 8} -> 7/10; top-4: all 10 items
    assert coverage_at_k(RANKED, 10, 1) == 0.4
    assert coverage_at_k(RANKED, 10, 2) == 0.7
    assert coverage_at_k(RANKED, 10, 4) == 1.0
    with pytest.raises(InputError, match="item indices"):
        coverage_at_k(RANKED, 5, 2)  # item 7 is not in a 5-item catalogue


def test_long_tail_hand_computed_with_tie_at_boundary():
    popularity = np.array([5, 0, 0, 9, 3, 7, 1, 2, 7, 4])
    # ascending: 1(0) 2(0) 6(1) 7(2) 4(3) 9(4) 0(5) 5(7) 8(7) 3(9); tail = first 8.
    # items 5 and 8 tie at 7: the lower index (5) counts as less popular -> tail; head = {8, 3}
    assert np.flatnonzero(~long_tail_items(popularity)).tolist() == [3, 8]
    # top-2 slots: 3 1 | 0 4 | 7 8 | 2 2 -> 8 slots, non-tail 3 and 8 -> 6/8
    assert long_tail_share_at_k(RANKED, popularity, 2) == 0.75
    # top-4 slots without -1: 3+4+4+3 = 14, non-tail 3 and 8 -> 12/14
    assert long_tail_share_at_k(RANKED, popularity, 4) == pytest.approx(12 / 14)


def test_intra_list_distance_hand_computed():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    ranked = np.array([[0, 1, 2], [0, 3, -1], [2, -1, -1]])
    # row0: cos(0,1)=0, cos(0,2)=cos(1,2)=1/sqrt2 -> mean sqrt2/3 -> ILD 1 - 0.4714045 = 0.5285955
    # row1: items 0 and 3 point the same way: cos 1 -> ILD 0
    # row2: one item -> skipped.  Mean of (0.5285955, 0) = 0.2642977
    assert intra_list_distance_at_k(ranked, emb, 3) == pytest.approx(
        (1 - math.sqrt(2) / 3) / 2, abs=1e-12)
    # K=2: row0 pair (0,1) cos 0 -> 1; row1 -> 0; mean 0.5
    assert intra_list_distance_at_k(ranked, emb, 2) == pytest.approx(0.5)
    # no row with 2 items -> NaN, not a crash
    assert math.isnan(intra_list_distance_at_k(ranked, emb, 1))


def test_invalid_rate():
    assert invalid_rate(np.array([True, False, True, True])) == 0.25
    assert invalid_rate(n_invalid=3, n_generated=12) == 0.25
    assert invalid_rate(n_invalid=0, n_generated=0) == 0.0
    with pytest.raises(InputError):
        invalid_rate(n_invalid=5, n_generated=4)


def test_evaluate_ranking_keys_and_values():
    popularity = np.array([5, 0, 0, 9, 3, 7, 1, 2, 7, 4])
    emb = np.random.default_rng(0).normal(size=(10, 4))
    out = evaluate_ranking(RANKED, TARGETS, n_items=10, ks=(1, 3), item_emb=emb,
                           popularity=popularity)
    assert set(out) == {"HR@1", "HR@3", "NDCG@1", "NDCG@3", "coverage@1", "coverage@3",
                        "ILD@1", "ILD@3", "long_tail@1", "long_tail@3"}
    assert out["HR@3"] == 0.5 and out["coverage@1"] == 0.4
    assert out["NDCG@3"] == pytest.approx(0.40773243839286437)
    # no embeddings / popularity -> no diversity keys beyond coverage
    assert "ILD@1" not in evaluate_ranking(RANKED, TARGETS, n_items=10, ks=(1,))


def test_k_larger_than_width_warns_and_counts_misses():
    with pytest.warns(UserWarning, match="exceed"):
        out = evaluate_ranking(RANKED, TARGETS, n_items=10, ks=(4, 20))
    assert out["HR@20"] == out["HR@4"] == 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_ranking(RANKED, TARGETS, n_items=10, ks=(1, 4))  # no warning when K <= W


def test_torch_tensors_accepted():
    a = evaluate_ranking(torch.from_numpy(RANKED), torch.from_numpy(TARGETS), n_items=10, ks=(1, 3))
    b = evaluate_ranking(RANKED, TARGETS, n_items=10, ks=(1, 3))
    assert a == b


def test_bad_input_names_the_field():
    with pytest.raises(InputError, match="targets"):
        target_ranks(RANKED, TARGETS[:3])
    with pytest.raises(InputError, match="ranked"):
        target_ranks(RANKED[0], TARGETS)
    with pytest.raises(InputError, match="K must be"):
        hit_rate(np.array([1]), 0)
    with pytest.raises(InputError, match="targets"):
        evaluate_ranking(RANKED, np.array([1, 6, 5, 10]), n_items=10)


# ---------------------------------------------------------------------------------------------
# naive reference: plain Python loops, written independently from the vectorised code
# ---------------------------------------------------------------------------------------------

def naive_metrics(ranked, targets, n_items, k, emb, popularity):
    ranked, targets = ranked.tolist(), targets.tolist()
    hr = nd = 0.0
    for row, t in zip(ranked, targets):
        for pos, item in enumerate(row[:k]):
            if item == t:
                hr += 1
                nd += 1 / math.log2(pos + 2)
                break
    seen = set()
    for row in ranked:
        seen.update(i for i in row[:k] if i >= 0)
    ilds = []
    for row in ranked:
        items = [i for i in row[:k] if i >= 0]
        if len(items) < 2:
            continue
        cos = []
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                u, v = emb[items[a]].tolist(), emb[items[b]].tolist()
                dot = sum(x * y for x, y in zip(u, v))
                cos.append(dot / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v)))
        ilds.append(1 - sum(cos) / len(cos))
    order = sorted(range(n_items), key=lambda i: (popularity[i], i))
    tail = set(order[:int(0.8 * n_items)])
    slots = [i for row in ranked for i in row[:k] if i >= 0]
    return {"HR": hr / len(targets), "NDCG": nd / len(targets), "coverage": len(seen) / n_items,
            "ILD": sum(ilds) / len(ilds) if ilds else math.nan,
            "long_tail": sum(i in tail for i in slots) / len(slots)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n_items, rows, width = 40, 60, 12
    ranked = np.stack([rng.permutation(n_items)[:width] for _ in range(rows)])
    ranked[rng.random(ranked.shape) < 0.15] = -1                # sprinkle empty slots
    targets = rng.integers(0, n_items, rows)
    emb = rng.normal(size=(n_items, 5))
    popularity = rng.integers(0, 6, n_items)                     # many ties
    out = evaluate_ranking(ranked, targets, n_items=n_items, ks=(1, 5, 10), item_emb=emb,
                           popularity=popularity)
    for k in (1, 5, 10):
        ref = naive_metrics(ranked, targets, n_items, k, emb, popularity)
        assert out[f"HR@{k}"] == pytest.approx(ref["HR"], abs=1e-12)
        assert out[f"NDCG@{k}"] == pytest.approx(ref["NDCG"], abs=1e-12)
        assert out[f"coverage@{k}"] == pytest.approx(ref["coverage"], abs=1e-12)
        assert out[f"long_tail@{k}"] == pytest.approx(ref["long_tail"], abs=1e-12)
        if k > 1:
            assert out[f"ILD@{k}"] == pytest.approx(ref["ILD"], abs=1e-9)
