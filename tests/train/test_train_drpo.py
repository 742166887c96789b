"""DRPO and its baselines: the offline log, each mode's weights by hand, the soft_nll loss, and
the collapse the hard filter avoids (the naive advantage gradient keeps pushing negatives)."""

import math

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.data.types import SplitRows
from vstar.train.config import RLConfig
from vstar.train.drpo import (DRPOTrainer, build_offline_log, drpo_loss, normalised_advantage,
                              sample_weights, topk_threshold)
from vstar.testing import toy_rl_world


def test_the_offline_log_centres_ratings_and_injects_random_items():
    rows = SplitRows(np.arange(3), [np.array([0]), np.array([1]), np.array([2])],
                     np.array([3, 4, 5]), np.array([5.0, 1.0, 3.0]))
    log = build_offline_log(rows, n_items=6, rating_center=3.0, negatives=1.0,
                            negative_return=-2.5, seed=0)
    assert len(log) == 6 and log.injected.tolist() == [False] * 3 + [True] * 3
    assert log.returns.tolist() == [2.0, -2.0, 0.0, -2.5, -2.5, -2.5]
    assert log.items[:3].tolist() == [3, 4, 5] and log.rows[:3].tolist() == [0, 1, 2]
    assert (log.items[3:] != rows.targets[log.rows[3:]]).all()   # never the logged item
    no_ratings = SplitRows(rows.users, rows.histories, rows.targets)
    assert build_offline_log(no_ratings, 6, negatives=0.0).returns.tolist() == [1.0] * 3


def test_each_mode_weights_the_log_as_written():
    r = np.array([2.0, -2.0, 0.0, -2.0, -2.0, -2.0])
    assert topk_threshold(r, 0.3) == 0.0                        # ceil(1.8) = 2nd best
    assert sample_weights("topk", r, alpha=0.3).tolist() == [3.0, 0, 3.0, 0, 0, 0]
    ties = np.array([1.0, 1.0, 1.0, 0.0])                       # ties at q are all kept
    assert sample_weights("topk", ties, alpha=0.25).tolist() == pytest.approx([4 / 3] * 3 + [0])
    two = np.array([0.0, 10.0])                                 # A = (-1, 1)
    assert normalised_advantage(two).tolist() == pytest.approx([-1.0, 1.0])
    assert sample_weights("naive", two).tolist() == pytest.approx([-1.0, 1.0])
    assert sample_weights("positive", two).tolist() == pytest.approx([0.0, 1.0])
    assert sample_weights("awr", two, tau=1.0, max_weight=2.0).tolist() == \
        pytest.approx([math.exp(-1), 2.0])
    with pytest.raises(InputError, match="drpo_alpha"):
        topk_threshold(r, 0.0)
    with pytest.raises(InputError, match="drpo_mode"):
        sample_weights("hard", r)


def test_soft_nll_scales_only_the_negatives_by_their_nll():
    logp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    w = torch.tensor([1.0, -1.0])
    neg = torch.tensor([False, True])
    # sample 0: -(1 * -1) = 1; sample 1: w = -exp(-4 / 2), loss = -(w * -2) = -2 exp(-2)
    assert drpo_loss(logp, w, neg, "soft_nll", 1.0).tolist() == \
        pytest.approx([1.0, -2 * math.exp(-2)])
    assert drpo_loss(logp, w, neg, "naive").tolist() == pytest.approx([1.0, -2.0])


def _toy():
    return toy_rl_world(ratings=True)


def _train(mode):
    vocab, trie, model, rows = _toy()
    log = build_offline_log(rows, 30, negatives=0.5, seed=0)
    cfg = RLConfig(steps=60, users_per_step=64, lr=1e-2, warmup_steps=1, schedule="constant",
                   drpo_mode=mode)
    return DRPOTrainer(model, vocab, trie, rows, log, cfg, max_history=5).train()


def test_the_naive_gradient_on_negatives_grows_while_drpo_has_none_and_stays_bounded():
    naive, drpo = _train("naive"), _train("topk")
    g = [h["grad_norm_neg"] for h in naive]
    assert np.mean(g[-10:]) > 3 * np.mean(g[:5]), (g[:5], g[-10:])        # repulsion grows
    nll = [h["max_token_nll"] for h in naive]
    assert nll[-1] > 20 and nll[-1] > nll[30] > nll[0]                    # and diverges
    assert naive[-1]["entropy"] < 0.2
    assert all(h["grad_norm_neg"] == 0.0 for h in drpo)                   # filtered out
    assert max(h["max_token_nll"] for h in drpo) < nll[-1] / 2
    for h in naive + drpo:
        assert all(math.isfinite(v) for k, v in h.items() if k not in ("nll_neg_mean",))
