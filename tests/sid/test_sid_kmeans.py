"""Residual k-means SIDs: planted clusters, code ranges, seeds, small catalogues, balance."""

import numpy as np
import pytest

from vstar.core.errors import InputError
from vstar.sid.kmeans import balanced_assign, fit_residual_kmeans, residual_kmeans


def blobs(n_per: list[int], dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs: (points float32 [N, dim], blob label [N])."""
    rng = np.random.default_rng(seed)
    centers = 10.0 * np.eye(dim)[: len(n_per)]
    x = np.concatenate([c + 0.1 * rng.standard_normal((n, dim)) for c, n in zip(centers, n_per)])
    return x.astype(np.float32), np.repeat(np.arange(len(n_per)), n_per)


def test_first_level_recovers_planted_clusters():
    x, label = blobs([25, 25, 25, 25])
    sids = residual_kmeans(x, [4, 8], seed=0)
    first = sids.codes[:, 0]
    for b in range(4):  # one code per blob, different blobs -> different codes
        assert len(set(first[label == b])) == 1
    assert len(set(first)) == 4


def test_codes_in_range_and_sizes_kept():
    x, _ = blobs([30, 30, 40], dim=6)
    sids = residual_kmeans(x, [4, 3, 5], seed=1)
    assert sids.codes.shape == (100, 3) and sids.codes.dtype == np.int64
    assert sids.codebook_sizes == [4, 3, 5]
    assert (sids.codes >= 0).all() and (sids.codes < np.array([4, 3, 5])).all()


def test_same_seed_same_codes():
    x = np.random.default_rng(3).standard_normal((120, 5)).astype(np.float32)
    a = residual_kmeans(x, [6, 6], seed=7)
    b = residual_kmeans(x, [6, 6], seed=7)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_fewer_items_than_codes_uses_min_n_k_clusters():
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    sids, centroids = fit_residual_kmeans(x, [8, 8], seed=0)
    assert sids.codebook_sizes == [8, 8]                 # configured sizes kept
    assert [len(c) for c in centroids] == [5, 5]         # only min(K, N) centroids
    assert len(set(sids.codes[:, 0])) == 5               # 5 distinct points, 5 clusters
    assert sids.is_collision_free()


def test_residuals_shrink_reconstruction_error():
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    sids, cents = fit_residual_kmeans(x, [8, 8, 8], seed=0)
    errs, recon = [], np.zeros_like(x)
    for l, c in enumerate(cents):                        # x ~ sum_l c_l[code_l]
        recon += c[sids.codes[:, l]]
        errs.append(float(((x - recon) ** 2).sum(1).mean()))
    assert errs[0] > errs[1] > errs[2]


def test_balanced_variant_has_equal_first_level_clusters():
    x, _ = blobs([70, 20, 13])                          # very unbalanced data, N = 103
    plain = np.bincount(residual_kmeans(x, [4, 4], seed=0).codes[:, 0], minlength=4)
    bal = np.bincount(residual_kmeans(x, [4, 4], seed=0, balanced=True).codes[:, 0], minlength=4)
    assert plain.max() - plain.min() > 1                 # plain k-means follows the data
    assert sorted(bal) == [25, 26, 26, 26]               # 103 = 25 + 3 * 26


def test_balanced_assign_hand_case():
    # 4 items, 2 clusters of 2; items 0,1,2 all prefer cluster 0; item 1 is the farthest of them
    dist = np.array([[0.0, 5.0], [2.0, 3.0], [1.0, 9.0], [4.0, 0.5]])
    np.testing.assert_array_equal(balanced_assign(dist), [0, 1, 0, 1])


def test_bad_vectors_raise_input_error():
    with pytest.raises(InputError, match="NaN"):
        residual_kmeans(np.array([[0.0, np.nan], [1.0, 1.0]]), [2])
    with pytest.raises(InputError, match="shape"):
        residual_kmeans(np.zeros(5), [2])
