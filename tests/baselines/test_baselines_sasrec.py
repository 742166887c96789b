"""SASRec: learns a deterministic pattern, checkpoints round-trip, seeded runs repeat."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vstar.baselines import SASRec, SASRecConfig, load_sasrec, save_sasrec, train_sasrec
from vstar.data.types import SplitRows, Splits
from vstar.core.errors import InputError
from vstar.eval.metrics import hit_rate, ndcg, target_ranks
from vstar.experiments.collab import ranking_metrics

N_ITEMS = 30


def _successor_splits(n_users: int = 60, length: int = 8, seed: int = 0) -> Splits:
    """Leave-one-out splits of sequences where item i is always followed by item (i + 1) % 30."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for user in range(n_users):
        seq = (rng.integers(N_ITEMS) + np.arange(length)) % N_ITEMS
        for t in range(1, length - 2):                      # every prefix of the training part
            train.append((user, seq[:t], seq[t]))
        valid.append((user, seq[:length - 2], seq[length - 2]))
        test.append((user, seq[:length - 1], seq[length - 1]))

    def rows(r):
        return SplitRows(np.array([u for u, _, _ in r]), [h.astype(np.int64) for _, h, _ in r],
                         np.array([t for _, _, t in r], dtype=np.int64))
    return Splits("leave_one_out", rows(train), rows(valid), rows(test), max_history=20)


def _cfg(**kw) -> SASRecConfig:
    base = dict(hidden=32, layers=1, heads=2, dropout=0.0, lr=1e-2, batch_size=64,
                max_epochs=25, patience=3)
    return SASRecConfig(**{**base, **kw})


def _train(splits, cfg, seed=0, **kw):
    """train_sasrec with the pipeline's early stopping: NDCG@10 of the validation rows."""
    def validate(model):
        ranked = model.rank(splits.valid.histories, cfg.eval_k, cfg.eval_batch_size)
        return ranking_metrics(ranked, splits.valid.targets, cfg.eval_k)
    return train_sasrec(splits, N_ITEMS, cfg, seed=seed, validate=validate, **kw)


@pytest.fixture(scope="module")
def trained():
    splits = _successor_splits()
    return splits, _train(splits, _cfg())


def test_learns_successor_pattern(trained):
    splits, model = trained
    for rows in (splits.valid, splits.test):
        ranked = model.rank(rows.histories, k=5)
        assert ranked.shape == (len(rows), 5) and ranked.dtype == np.int64
        assert hit_rate(target_ranks(ranked, rows.targets), 1) > 0.9
    # early stopping ran, and the returned weights are the best validation state, not the last
    scores = [e["valid_NDCG@10"] for e in model.fit_log]
    assert len(scores) < 25
    valid_ranks = target_ranks(model.rank(splits.valid.histories, k=10), splits.valid.targets)
    assert ndcg(valid_ranks, 10) == pytest.approx(max(scores))


def test_checkpoint_round_trip_gives_identical_rankings(trained, tmp_path):
    splits, model = trained
    path = tmp_path / "sasrec.safetensors"
    cfg = _cfg()
    save_sasrec(model, path)
    loaded = load_sasrec(path, cfg, N_ITEMS)
    h = splits.test.histories
    assert np.array_equal(loaded.rank(h, k=10), model.rank(h, k=10))
    with pytest.raises(InputError, match="does not match"):
        load_sasrec(path, cfg, N_ITEMS + 1)
    with pytest.raises(InputError, match="not found"):
        load_sasrec(tmp_path / "missing.safetensors", cfg, N_ITEMS)


def test_train_writes_checkpoint_of_best_state(tmp_path):
    splits = _successor_splits(n_users=20)
    path = tmp_path / "ckpt" / "best.safetensors"
    model = _train(splits, _cfg(max_epochs=2), checkpoint_path=path)
    loaded = load_sasrec(path, _cfg(max_epochs=2), N_ITEMS)
    assert np.array_equal(loaded.rank(splits.valid.histories, 10), model.rank(splits.valid.histories, 10))
    assert [p.name for p in path.parent.iterdir()] == ["best.safetensors"]  # no temp file left


def test_seeded_runs_repeat_and_seeds_differ():
    splits = _successor_splits(n_users=20)
    a = _train(splits, _cfg(max_epochs=2), seed=1)
    b = _train(splits, _cfg(max_epochs=2), seed=1)
    c = _train(splits, _cfg(max_epochs=2), seed=2)
    assert [e["train_loss"] for e in a.fit_log] == [e["train_loss"] for e in b.fit_log]
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name
    assert a.fit_log[0]["train_loss"] != c.fit_log[0]["train_loss"]


def test_padding_and_truncation_do_not_change_scores():
    torch.manual_seed(0)
    model = SASRec(_cfg(max_len=4, dropout=0.0), N_ITEMS).eval()
    short, long = np.array([3, 4]), np.array([9, 8, 7, 6, 5, 1, 2])
    alone = model.rank([short], k=N_ITEMS)
    with_longer = model.rank([short, long], k=N_ITEMS)       # short is left-padded in this batch
    assert np.array_equal(alone[0], with_longer[0])
    # a history longer than max_len keeps its most recent max_len items
    assert np.array_equal(model.rank([long], k=N_ITEMS), model.rank([long[-4:]], k=N_ITEMS))


def test_bad_input_raises():
    model = SASRec(_cfg(), N_ITEMS)
    with pytest.raises(InputError, match="histories"):
        model.rank([np.array([N_ITEMS])], k=5)
    with pytest.raises(InputError, match="k"):
        model.rank([np.array([0])], k=N_ITEMS + 1)
    with pytest.raises(InputError, match="divisible"):
        SASRec(_cfg(hidden=30, heads=4), N_ITEMS)
    with pytest.raises(InputError, match="max_epochs"):
        train_sasrec(_successor_splits(n_users=5), N_ITEMS, _cfg(max_epochs=0))


def test_omegaconf_config_with_dotlist_override(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(SASRecConfig), OmegaConf.from_dotlist(["hidden=16"]))
    assert cfg.layers == 2 and cfg.dropout == 0.2 and cfg.max_len == 20   # the documented defaults
    model = SASRec(cfg, N_ITEMS)
    assert model.item_emb.weight.shape == (N_ITEMS + 1, 16)              # + 1: padding token 0
    save_sasrec(model, tmp_path / "m.safetensors")
    loaded = load_sasrec(tmp_path / "m.safetensors", cfg, N_ITEMS)
    h = [np.array([1, 2, 3])]
    assert np.array_equal(loaded.rank(h, 5), model.eval().rank(h, 5))
