"""A2PO: the anchored fusion of a business and a semantic advantage, its ablations, the semantic
judge (aspect scores, aggregator training, checkpoint) and the trainer's per-step record."""

import math

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.data.types import SplitRows
from vstar.decode import SidTrie
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.train.a2po import A2POTrainer, a2po_advantages, a2po_fuse, business_values
from vstar.train.advantages import grpo_advantages
from vstar.train.config import RLConfig
from vstar.train.rl import RLTrainer
from vstar.train.semantic_reward import (ASPECTS, SemanticScorer, aspect_scores,
                                         history_tensors, train_semantic_scorer)


def test_fusion_adds_the_semantic_term_only_where_signs_agree_and_never_beyond_the_anchor():
    a_biz = torch.tensor([1.0, -0.5, 0.8, 0.0, 2.0])
    a_sem = torch.tensor([0.5, -1.0, -0.3, 0.7, 4.0])
    fused, lam = a2po_fuse(a_biz, a_sem)
    # by hand: lambda = min/max where signs agree: 0.5, 0.5, 0 (signs differ), 0 (0 vs +), 0.5
    assert lam.tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 0.5], abs=1e-6)
    assert fused.tolist() == pytest.approx([1.25, -1.0, 0.8, 0.0, 4.0], abs=1e-6)


def test_the_semantic_term_never_exceeds_the_business_advantage_on_random_values():
    g = torch.Generator().manual_seed(0)
    a_biz, a_sem = torch.randn(1000, generator=g), 5 * torch.randn(1000, generator=g)
    fused, lam = a2po_fuse(a_biz, a_sem)
    extra = fused - a_biz
    assert bool((extra.abs() <= a_biz.abs() + 1e-6).all())
    assert bool(((extra == 0) | (torch.sign(extra) == torch.sign(a_biz))).all())
    assert bool(((lam >= 0) & (lam <= 1)).all())


def test_a2po_modes_on_one_judged_and_one_unjudged_group_by_hand():
    r_biz = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    r_sem = torch.tensor([[0.2, 0.4, 0.0, 0.2], [0.9, 0.0, 0.3, 0.3]])
    valid = torch.ones(2, 4, dtype=torch.bool)
    judged = torch.tensor([True, False])
    s3 = math.sqrt(3)
    a_biz = [s3, -1 / s3, -1 / s3, -1 / s3]                  # z-score of (1, 0, 0, 0)
    a_sem = [0.0, math.sqrt(2), -math.sqrt(2), 0.0]          # z-score of (.2, .4, 0, .2)
    fusion, lam = a2po_advantages(r_biz, r_sem, valid, judged, "fusion", eps=0.0)
    # only candidate 2 agrees in sign: lambda = (1/sqrt3) / sqrt2, A = -1/sqrt3 - 1/sqrt3
    assert fusion[0].tolist() == pytest.approx([s3, -1 / s3, -2 / s3, -1 / s3], abs=1e-5)
    assert lam[0].tolist() == pytest.approx([0, 0, 1 / (s3 * math.sqrt(2)), 0], abs=1e-5)
    adv_sum, _ = a2po_advantages(r_biz, r_sem, valid, judged, "adv_sum", eps=0.0)
    assert adv_sum[0].tolist() == pytest.approx([a + b for a, b in zip(a_biz, a_sem)], abs=1e-5)
    reward_sum, _ = a2po_advantages(r_biz, r_sem, valid, judged, "reward_sum", eps=0.0)
    r = np.array([1.2, 0.4, 0.0, 0.2])
    assert reward_sum[0].tolist() == pytest.approx(((r - r.mean()) / r.std()).tolist(), abs=1e-5)
    for adv in (fusion, adv_sum, reward_sum):                # the unjudged group: A_biz alone
        assert adv[1].tolist() == pytest.approx(a_biz, abs=1e-5)
    assert lam[1].abs().sum() == 0
    with pytest.raises(InputError, match="rl.a2po"):
        a2po_advantages(r_biz, r_sem, valid, judged, "sum")


def test_business_values_are_scaled_to_mean_one_and_a_bad_column_is_refused():
    v = business_values(np.array([1.0, 3.0, np.nan]), "price")
    assert v.tolist() == pytest.approx([0.5, 1.5, 1.0])     # missing -> the mean
    with pytest.raises(InputError, match="price"):
        business_values(np.array([-1.0, 0.0]), "price")


def _emb2d():
    s = 1 / math.sqrt(2)
    return torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [-1.0, 0.0]])


def test_aspect_scores_by_hand():
    hist, mask = history_tensors([np.array([0, 1])])         # item 0 then item 1 (most recent)
    a = aspect_scores(_emb2d(), hist, mask, torch.tensor([[2, 3, -1]]), decay=0.7)
    f = np.array([0.7, 1.0]) / math.hypot(0.7, 1.0)          # recency-weighted history
    s = 1 / math.sqrt(2)
    # candidate 2 = (s, s): profile cos with (s, s) = 1; novelty 1 - s
    assert a[0, 0].tolist() == pytest.approx([1.0, s * f.sum(), 1 - s], abs=1e-5)
    # candidate 3 = (-1, 0): profile -s; future -f_0; novelty 1 - max(-1, 0) = 1
    assert a[0, 1].tolist() == pytest.approx([-s, -f[0], 1.0], abs=1e-5)
    assert a[0, 2].tolist() == [0.0, 0.0, 0.0]               # an empty slot


def _novelty_world(seed=0, n_items=60, n_rows=400):
    """The logged next item is always the history's *least* similar item among 8 drawn ones:
    learnable only by weighting novelty."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_items, 6)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    hists, targets = [], []
    for _ in range(n_rows):
        h = rng.choice(n_items, size=3, replace=False)
        pool = rng.choice(np.setdiff1d(np.arange(n_items), h), size=8, replace=False)
        targets.append(pool[np.argmin((emb[pool] @ emb[h].T).max(1))])
        hists.append(h)
    return emb, SplitRows(np.arange(n_rows), hists, np.asarray(targets))


def test_the_aggregator_learns_a_learnable_preference_and_round_trips(tmp_path):
    emb, rows = _novelty_world()
    scorer, losses = train_semantic_scorer(emb, rows, steps=150, batch_size=128, seed=0)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), (losses[:3], losses[-3:])
    hist, mask = history_tensors(rows.histories[:50])
    items = torch.as_tensor(rows.targets[:50])[:, None]
    a = aspect_scores(torch.as_tensor(emb), hist, mask, items)
    from vstar.train.semantic_reward import user_features
    m, _, _ = user_features(torch.as_tensor(emb), hist, mask)
    w = scorer.aggregator.weights(m, a).mean((0, 1))
    assert int(w.argmax()) == ASPECTS.index("novelty"), w
    scorer.save(tmp_path / "judge.safetensors")
    back = SemanticScorer.load(tmp_path / "judge.safetensors", emb)
    cand = torch.tensor([[0, 1, -1]] * 3)
    assert torch.equal(back.score(rows.histories[:3], cand), scorer.score(rows.histories[:3], cand))
    with pytest.raises(InputError, match="item embeddings"):
        SemanticScorer.load(tmp_path / "judge.safetensors", emb[:, :4])


def _toy(n_items=30, sizes=(4, 4, 4)):
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, 3)
    codes = grid[rng.choice(len(grid), n_items, replace=False)]
    vocab, trie = SidVocab(list(sizes)), SidTrie(codes, list(sizes))
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16,
                                     dropout=0.0), vocab_size=vocab.size, block_size=64)
    hist = [rng.integers(0, n_items, size=rng.integers(1, 5)) for _ in range(40)]
    rows = SplitRows(np.arange(40), hist, np.asarray([(h[-1] * 7 + 3) % n_items for h in hist]))
    emb = rng.normal(size=(n_items, 8)).astype(np.float32)
    return vocab, trie, model, rows, emb


@pytest.mark.parametrize("mode", ["fusion", "reward_sum", "adv_sum"])
def test_the_a2po_trainer_logs_both_rewards_and_judges_the_configured_share(mode):
    vocab, trie, model, rows, emb = _toy()
    scorer, _ = train_semantic_scorer(emb, rows, steps=5)
    cfg = RLConfig(decoder="beam", sibling=False, value_loss=False, n_candidates=8, steps=2,
                   users_per_step=6, a2po=mode, semantic_fraction=0.5)
    values = business_values(np.arange(1, 31, dtype=float), "v")
    trainer = A2POTrainer(model, vocab, trie, rows, cfg, max_history=5, item_emb=emb,
                          scorer=scorer, biz_values=values)
    rec = trainer.step()
    assert rec["semantic_groups"] == 0.5                      # ceil(0.5 * 6) = 3 of 6 groups
    assert math.isfinite(rec["reward_sem_mean"]) and rec["reward_biz_mean"] == rec["reward_mean"]
    assert (rec["a2po_sem_active"] > 0) == (mode == "fusion" and rec["a2po_lambda_mean"] > 0)
    assert all(math.isfinite(rec[k]) for k in ("loss_grpo", "adv_std", "grad_norm_policy"))


def test_without_judged_groups_a2po_is_grpo_on_the_business_reward_and_plain_rl_refuses_it():
    vocab, trie, model, rows, emb = _toy()
    scorer, _ = train_semantic_scorer(emb, rows, steps=2)
    cfg = RLConfig(decoder="beam", sibling=False, value_loss=False, n_candidates=8,
                   users_per_step=6, a2po="fusion", semantic_fraction=0.0)
    trainer = A2POTrainer(model, vocab, trie, rows, cfg, max_history=5, scorer=scorer)
    b = trainer.propose(np.arange(6))
    r = trainer.rewards(b)
    assert torch.equal(trainer.advantages(b, r), grpo_advantages(r, b.valid, cfg.adv_eps))
    assert trainer._a2po["r_sem"].abs().sum() == 0
    with pytest.raises(InputError, match="rl.a2po"):
        RLTrainer(model, vocab, trie, rows, cfg, max_history=5)
