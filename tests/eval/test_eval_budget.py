import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.data.types import SplitRows
from vstar.decode import SidTrie, VEDConfig
from vstar.eval.budget import budget_curve, plot_budget_curve
from vstar.model import ModelConfig, SidGenerator, SidVocab, ValueHead, ValueHeadConfig
from vstar.testing import CountingLM, random_catalogue

SIZES = (4, 5, 3)


def _catalogue(n_items=40, sizes=SIZES, seed=0):
    return random_catalogue(n_items, sizes, seed)


def _model(vocab, block_size=64, seed=0):
    torch.manual_seed(seed)
    model = SidGenerator(ModelConfig(history="codes", n_layer=2, n_head=2, n_embd=32, dropout=0.0), vocab_size=vocab.size, block_size=block_size).eval()
    with torch.no_grad():
        model.wte.weight.normal_(0, 1.0)             # far from uniform
    return model


def _head(seed=0):
    torch.manual_seed(seed)
    return ValueHead(32, ValueHeadConfig(hidden=16, init_std=0.5)).eval()


def _rows(n_items, n_users=12, seed=1):
    rng = np.random.default_rng(seed)
    histories = [rng.integers(0, n_items, size=rng.integers(1, 6)) for _ in range(n_users)]
    return SplitRows(np.arange(n_users), histories, rng.integers(0, n_items, size=n_users))



def test_both_decoders_stay_within_the_same_budget_per_width():
    codes = _catalogue(n_items=60, sizes=(6, 6, 4))
    vocab, trie = SidVocab([6, 6, 4]), SidTrie(codes, [6, 6, 4])
    rows = _rows(60)
    counting = CountingLM(_model(vocab))
    records = budget_curve(counting, _head(), vocab, trie, rows, widths=(3, 6), ks=(1, 5),
                           ved_cfg=VEDConfig(init_beam=2), batch_size=5, warmup=False)
    assert [(r["width"], r["decoder"]) for r in records] == [(3, "beam"), (3, "ved"),
                                                             (6, "beam"), (6, "ved")]
    L = vocab.n_levels
    measured = 0.0
    for r in records:
        assert r["budget_per_user"] == (L - 1) * r["width"]
        assert r["max_forward_tokens_per_user"] <= r["budget_per_user"]
        assert r["decode_forward_tokens_per_user"] <= r["budget_per_user"]
        for key in ("HR@1", "HR@5", "NDCG@1", "NDCG@5", "wall_seconds_per_user",
                    "invalid_rate", "distinct_items", "items_per_user", "n_users"):
            assert key in r
        assert 0.0 <= r["NDCG@5"] <= r["HR@5"] <= 1.0 and r["HR@1"] <= r["HR@5"]
        assert r["invalid_rate"] == 0.0 and r["n_users"] == 12
        assert 1 <= r["distinct_items"] <= 60
        measured += r["decode_forward_tokens_per_user"] * r["n_users"]
        if r["decoder"] == "beam":                  # beam always spends exactly (L-1)*W
            assert r["decode_forward_tokens_per_user"] == r["budget_per_user"]
            assert r["items_per_user"] == r["width"]
        else:
            assert r["ved_init_beam"] <= 2 and r["ved_expansions_per_user"] > 0
    assert counting.decode_tokens == pytest.approx(measured)   # the records' cost is the real one


def test_full_width_finds_every_target_and_ved_stops_when_the_trie_is_exhausted():
    codes = _catalogue(n_items=40)
    vocab, trie = SidVocab(list(SIZES)), SidTrie(codes, list(SIZES))
    rows = _rows(40, n_users=6)
    records = budget_curve(_model(vocab), _head(), vocab, trie, rows, widths=(50,), ks=(50,),
                           batch_size=4, warmup=False)
    beam, ved = records
    n_prefixes = len(np.unique(codes[:, :1], axis=0)) + len(np.unique(codes[:, :2], axis=0))
    for r in records:                                 # 40 items < W = 50: every list holds all
        assert r["HR@50"] == 1.0
        assert r["distinct_items"] == 40 and r["items_per_user"] == 40
    assert beam["decode_forward_tokens_per_user"] == 100
    # VED evaluates each depth-1 and depth-2 prefix of the trie once, then has nothing to expand
    assert ved["decode_forward_tokens_per_user"] == n_prefixes < 100


def test_plot_is_written_and_needs_the_metric(tmp_path):
    records = [{"decoder": d, "width": w, "decode_forward_tokens_per_user": t, "HR@10": h}
               for d, w, t, h in [("beam", 10, 20, 0.1), ("beam", 20, 40, 0.15),
                                  ("ved", 10, 18, 0.12), ("ved", 20, 35, 0.16)]]
    path = plot_budget_curve(records, tmp_path / "sub" / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]   # no temp file left
    with pytest.raises(InputError, match="NDCG@10"):
        plot_budget_curve(records, tmp_path / "x.png", metric="NDCG@10")
