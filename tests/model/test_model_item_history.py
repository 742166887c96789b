"""Item-level history (model.history="items"): one position per history item.

The mechanism that matters: training reads whole windows in ``item_layout``, decoding reads a
prompt of item tokens and then its own codes through the KV cache; both must compute the same
function, or SFT would train a model that beam search never runs.
"""

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.data.types import SplitRows, Splits
from vstar.decode import SidTrie, beam_search, rank_rows
from vstar.experiments.collab import ranking_metrics
from vstar.model import ModelConfig, load_generator, make_vocab, new_generator, save_generator
from vstar.model.vocab import BOS
from vstar.testing import random_catalogue, stepwise_code_logits
from vstar.train.config import SFTConfig
from vstar.train.sft import encode_windows, train_sft

SIZES = [4, 5, 3]


def _model(item_id=False, n_items=40, seed=0, max_history=6):
    codes = random_catalogue(n_items, SIZES, seed)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, dropout=0.0, history="items",
                      item_id_embedding=item_id)
    vocab = make_vocab(cfg, SIZES, n_items)
    torch.manual_seed(seed)
    model = new_generator(cfg, vocab, torch.as_tensor(codes), max_history).eval()
    with torch.no_grad():
        model.wte.weight.normal_(0, 1.0)                  # far from uniform
    return codes, vocab, model


def test_prompts_hold_one_token_per_item():
    codes, vocab, _ = _model()
    tokens, mask = vocab.encode_histories([np.array([3, 7]), np.array([5])], torch.as_tensor(codes))
    assert tokens.tolist() == [[BOS, vocab.size + 3, vocab.size + 7], [0, BOS, vocab.size + 5]]
    assert mask.tolist() == [[True, True, True], [False, True, True]]


@pytest.mark.parametrize("item_id", [False, True])
def test_training_layout_computes_what_decoding_computes(item_id):
    codes, vocab, model = _model(item_id=item_id)
    window = np.array([3, 17, 8, 25])
    if item_id:
        with torch.no_grad():
            model.item_emb.weight.normal_(0, 1.0)
    tokens, targets, levels = encode_windows([window], [np.ones(4, bool)], torch.as_tensor(codes),
                                             vocab)
    L = vocab.n_levels
    teacher = model(tokens, teacher_forced=True).logits[0]             # [T, V]
    for k in range(len(window)):                   # predict item k from items < k, code by code
        step_logits = stepwise_code_logits(model, vocab, codes, window[:k], window[k])
        for level in range(L):                     # the window predicts code l of item k at k*L+l
            torch.testing.assert_close(teacher[k * L + level], step_logits[level],
                                       rtol=1e-4, atol=1e-4)
            assert targets[0, k * L + level] == vocab.token_of(level, torch.tensor(
                codes[window[k], level]))


def test_history_codes_are_not_visible_to_later_items():
    """Changing an earlier item's code tokens in the window (not its item token) changes
    nothing downstream: only item tokens carry the history."""
    codes, vocab, model = _model()
    tokens, *_ = encode_windows([np.array([3, 17, 8])], [np.ones(3, bool)], torch.as_tensor(codes),
                                vocab)
    other = tokens.clone()
    other[0, 1] = vocab.token_of(0, torch.tensor((codes[3, 0] + 1) % SIZES[0]))   # c(1,1)
    a = model(tokens, teacher_forced=True).logits
    b = model(other, teacher_forced=True).logits
    torch.testing.assert_close(a[0, 3:], b[0, 3:])                 # from <i_1> on: identical
    assert not torch.allclose(a[0, 1:3], b[0, 1:3])                 # item 1's own codes differ


def test_beam_search_returns_valid_distinct_items():
    codes, vocab, model = _model()
    trie = SidTrie(codes, SIZES)
    tokens, mask = vocab.encode_histories([np.array([1, 2, 3]), np.array([4])],
                                          torch.as_tensor(codes))
    res = beam_search(model, vocab, trie, tokens, mask, 10)
    assert (res.items >= 0).all() and res.n_invalid == 0
    assert all(len(set(r)) == 10 for r in res.items.tolist())
    np.testing.assert_array_equal(codes[res.items.numpy()], res.codes.numpy())


def test_sft_learns_a_successor_pattern_with_item_history():
    torch.manual_seed(0)
    n = 20
    codes = np.array([[i // 5, i % 5, 0] for i in range(n)])
    seqs = [[(s + t) % n for t in range(8)] for s in range(n) for _ in range(3)]
    rows = []
    for s in seqs:
        for t in range(1, 6):
            rows.append((s[max(0, t - 5):t], s[t]))
    train = SplitRows(np.arange(len(rows)), [np.asarray(h) for h, _ in rows],
                      np.asarray([y for _, y in rows]))
    valid = SplitRows(np.arange(len(seqs)), [np.asarray(s[-7:-2]) for s in seqs],
                      np.asarray([s[-2] for s in seqs]))
    splits = Splits("leave_one_out", train, valid, valid, 5)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, dropout=0.0, history="items")
    vocab = make_vocab(cfg, [4, 5, 1], n)
    trie = SidTrie(codes, [4, 5, 1])
    model = new_generator(cfg, vocab, torch.as_tensor(codes), 5)
    scfg = SFTConfig(lr=1e-2, batch_size=32, max_epochs=30, patience=30, warmup_steps=5,
                     val_beam=5, windows="rows")

    def validate(model, rows):
        ranked, _ = rank_rows(model, vocab, trie, rows, scfg.val_beam, max_history=5)
        return ranking_metrics(ranked, rows.targets, 10)

    model, history = train_sft(model, vocab, trie, splits, scfg, validate=validate, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["HR@10"] for h in history) == 1.0


def test_checkpoint_round_trip_and_sid_mismatch(tmp_path):
    codes, vocab, model = _model(item_id=True)
    save_generator(tmp_path / "g.safetensors", model, vocab)
    back = load_generator(tmp_path / "g.safetensors", vocab, codes)
    tokens, mask = vocab.encode_histories([np.array([1, 2])], torch.as_tensor(codes))
    torch.testing.assert_close(back(tokens, pad_mask=mask).logits, model(tokens, pad_mask=mask).logits)
    permuted = codes[np.roll(np.arange(len(codes)), 1)]
    with pytest.raises(InputError, match="item SIDs differ"):
        load_generator(tmp_path / "g.safetensors", vocab, permuted)


def test_config_and_vocabulary_must_agree():
    codes = torch.as_tensor(random_catalogue(40, SIZES, 0))
    token_vocab = make_vocab(ModelConfig(history="codes"), SIZES, 40)
    item_vocab = make_vocab(ModelConfig(history="items"), SIZES, 40)
    assert item_vocab.item_history and not token_vocab.item_history
    with pytest.raises(InputError, match="model.history"):
        new_generator(ModelConfig(history="item"), token_vocab, codes, 5)
    with pytest.raises(ValueError, match="item tokens"):
        new_generator(ModelConfig(history="items"), token_vocab, codes, 5)
    with pytest.raises(ValueError, match="item tokens"):
        new_generator(ModelConfig(history="codes"), item_vocab, codes, 5)


def test_a_checkpoint_of_the_other_history_input_is_refused(tmp_path):
    codes, vocab, model = _model()
    save_generator(tmp_path / "g.safetensors", model, vocab)
    with pytest.raises(InputError, match="model.history='items'"):
        load_generator(tmp_path / "g.safetensors", make_vocab(ModelConfig(history="codes"),
                                                              SIZES, 40))
