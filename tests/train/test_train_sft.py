import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vstar.data.types import SplitRows, Splits
from vstar.decode import SidTrie, rank_rows
from vstar.experiments.collab import ranking_metrics
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.core.scalars import Scalars
from vstar.data.windows import build_windows
from vstar.train.schedule import lr_factor
from vstar.train.sft import (SFTConfig, encode_windows, length_grouped_batches, sft_loss,
                             train_sft)


def _loo_rows(sequences, max_history):
    users, hists, targets = [], [], []
    for u, seq in enumerate(sequences):
        for t in range(1, len(seq)):
            users.append(u)
            hists.append(np.asarray(seq[max(0, t - max_history):t]))
            targets.append(seq[t])
    return SplitRows(np.asarray(users), hists, np.asarray(targets))


def test_windows_supervise_every_row_exactly_once():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 30, size=n)) for n in (2, 5, 9, 23, 47)]
    rows = _loo_rows(seqs, max_history=4)
    for mode in ("rows", "chunks"):
        windows, flags = build_windows(rows, 4, mode)
        supervised = sorted((int(w[j]), tuple(w[max(0, j - 4):j])) for w, f in zip(windows, flags)
                            for j in np.nonzero(f)[0])
        assert sum(int(f.sum()) for f in flags) == len(rows)
        assert all(len(w) <= 5 for w in windows)
        if mode == "rows":  # exact: each target sees exactly its row's history
            expected = sorted((int(t), tuple(h)) for h, t in zip(rows.histories, rows.targets))
            assert supervised == expected
    # chunks read each user's sequence once: far fewer windows than rows
    assert len(build_windows(rows, 4, "chunks")[0]) < len(build_windows(rows, 4, "rows")[0])


def test_length_grouped_batches_cover_every_window_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 64, size=1000)
    batches = length_grouped_batches(lengths, 32, np.random.default_rng(1), group=8)
    assert len(batches) == -(-1000 // 32)                       # as many steps as random batches
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert sum(len(b) < 32 for b in batches) == 1               # only the last one is short
    padded = sum(len(b) * lengths[b].max() for b in batches)    # tokens a trimmed batch computes
    perm = np.random.default_rng(1).permutation(1000)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(perm, len(batches)))
    assert padded < 0.7 * random_padded
    # batches of the same group are length-sorted, but the batch order is shuffled: the longest
    # batches do not all come first (a fixed curriculum would)
    first = [lengths[b].max() for b in batches[:8]]
    assert first != sorted(first, reverse=True)
    # seeded: the same generator state gives the same epoch
    again = length_grouped_batches(lengths, 32, np.random.default_rng(1), group=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_encoded_targets_are_next_tokens_of_supervised_items():
    vocab = SidVocab([3, 3])
    codes = torch.tensor([[0, 0], [1, 2], [2, 1]])
    tokens, targets, levels = encode_windows([np.array([0, 1, 2])], [np.array([False, True, False])],
                                             codes, vocab)
    # tokens: BOS a0 b0 a1 b2 a2 b1 ; item 1's codes (tokens 3 and 10) are predicted at positions 2, 3
    assert tokens[0].tolist() == [1, 2, 5, 3, 7, 4, 6]
    assert targets[0].tolist() == [-100, -100, 3, 7, -100, -100, -100]
    assert levels[0, 2:4].tolist() == [0, 1]


def test_sft_learns_a_deterministic_successor_pattern():
    torch.manual_seed(0)
    n, L = 20, 2
    codes = np.array([[i // 5, i % 5] for i in range(n)])
    seqs = [[(s + t) % n for t in range(8)] for s in range(n) for _ in range(3)]
    rows = _loo_rows([s[:-2] for s in seqs], 5)
    valid = SplitRows(np.arange(len(seqs)), [np.asarray(s[-7:-2]) for s in seqs],
                      np.asarray([s[-2] for s in seqs]))
    splits = Splits("leave_one_out", rows, valid, valid, 5)
    vocab = SidVocab([4, 5])
    trie = SidTrie(codes, [4, 5])
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=32, dropout=0.0), vocab_size=vocab.size, block_size=1 + 6 * L)
    cfg = SFTConfig(lr=1e-2, batch_size=32, max_epochs=40, patience=40, warmup_steps=5, val_beam=5)

    def validate(model, rows):                     # what the pipeline passes: beam-search ranking
        ranked, _ = rank_rows(model, vocab, trie, rows, cfg.val_beam, max_history=5)
        return ranking_metrics(ranked, rows.targets, 10)

    model, history = train_sft(model, vocab, trie, splits, cfg, validate=validate, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["HR@10"] for h in history) == 1.0
    assert max(h["NDCG@10"] for h in history) > 0.95


def _successor_world():
    """20 items of 2-level codes, each user's next item the successor of the last: the model, its
    vocabulary, trie and splits."""
    torch.manual_seed(0)
    codes = np.array([[i // 5, i % 5] for i in range(20)])
    seqs = [[(s + t) % 20 for t in range(6)] for s in range(20)]
    rows = _loo_rows([s[:-2] for s in seqs], 5)
    splits = Splits("leave_one_out", rows, rows, rows, 5)
    vocab = SidVocab([4, 5])
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16, dropout=0.0),
                         vocab_size=vocab.size, block_size=13)
    return model, vocab, SidTrie(codes, [4, 5]), splits


def test_sft_without_validation_trains_every_epoch_and_keeps_the_last():
    model, vocab, trie, splits = _successor_world()
    cfg = SFTConfig(batch_size=16, max_epochs=3, patience=1, warmup_steps=1)
    _, history = train_sft(model, vocab, trie, splits, cfg, progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2]          # no early stop without scores
    assert all("NDCG@10" not in h for h in history)


def test_lr_factor_warms_up_then_decays_to_zero_or_holds():
    cos = [lr_factor(s, 20, 5, "cosine") for s in range(25)]
    const = [lr_factor(s, 20, 5, "constant") for s in range(25)]
    assert const[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and const[4:] == [1.0] * 21
    assert cos == pytest.approx([w * 0.5 * (1 + math.cos(math.pi * min(s, 20) / 20))
                                 for s, w in enumerate(const)])
    assert all(a >= b for a, b in zip(cos[4:], cos[5:])) and cos[20:] == [0.0] * 5
    assert lr_factor(0, 10, 0) == lr_factor(0, 10, 1) == 1.0       # no warm-up
    with pytest.raises(ValueError, match="linear"):
        lr_factor(0, 10, 1, "linear")


class _LrLog(Scalars):
    def __init__(self):
        self.lr = []

    def log(self, prefix, values, step):
        if "lr" in values:                                # the per-step record
            self.lr.append(values["lr"])


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_sft_follows_its_schedule_over_every_step(schedule):
    model, vocab, trie, splits = _successor_world()
    cfg = SFTConfig(lr=1e-2, batch_size=8, max_epochs=4, warmup_steps=3, schedule=schedule)
    log = _LrLog()
    train_sft(model, vocab, trie, splits, cfg, progress=False, scalars=log)
    total = len(log.lr)                                   # every step logs the rate it used
    assert total > 8 and total % cfg.max_epochs == 0
    assert log.lr == pytest.approx([1e-2 * lr_factor(s, total, 3, schedule) for s in range(total)])
    assert log.lr[0] < log.lr[1] < log.lr[2] == max(log.lr)   # warm-up over 3 steps
    assert (log.lr[-1] < 1e-3) if schedule == "cosine" else (log.lr[-1] == pytest.approx(1e-2))


def test_label_smoothing_stays_within_the_level_and_is_finite():
    torch.manual_seed(0)
    vocab = SidVocab([4, 5])
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16, dropout=0.0),
                         vocab_size=vocab.size, block_size=13)
    codes = torch.tensor([[i // 5, i % 5] for i in range(20)])
    tokens, targets, levels = encode_windows([np.array([0, 7, 13])], [np.ones(3, bool)], codes,
                                             vocab)
    plain = sft_loss(model, vocab, tokens, targets, levels)
    assert torch.isclose(sft_loss(model, vocab, tokens, targets, levels, 0.0), plain)
    smooth = sft_loss(model, vocab, tokens, targets, levels, label_smoothing=1.0)
    # eps = 1: the mean NLL over the level's codes, i.e. cross-entropy to the uniform
    # distribution over that level (4 or 5 codes), finite although other levels are -inf
    logits = model(tokens).logits[0]
    sel = targets[0] >= 0
    expected = []
    for t, lv in zip(logits[sel], levels[0][sel]):
        lp = torch.log_softmax(t[vocab.level_slice(int(lv))], -1)
        expected.append(-lp.mean())
    assert torch.isfinite(smooth)
    torch.testing.assert_close(smooth, torch.stack(expected).mean())


def test_trie_loss_is_the_decoders_constrained_nll():
    """sft.loss="trie": the NLL of each supervised code under the softmax over the trie-valid
    codes after its prefix, i.e. what constrained decoding scores (decode.trie)."""
    from vstar.decode.trie import constrained_log_probs
    from vstar.model.generator import make_vocab, new_generator
    from vstar.train.sft import target_nodes
    torch.manual_seed(0)
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 2, 3], [2, 0, 0]])
    trie = SidTrie(codes, [3, 3, 4])
    for history in ("codes", "items"):
        cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, history=history)
        vocab = make_vocab(cfg, [3, 3, 4], 5)
        windows = [np.array([0, 3, 1, 4]), np.array([2, 1])]
        flags = [np.array([False, True, True, True]), np.array([False, True])]
        tk, tg, lv = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
        nodes = target_nodes(tg, lv, vocab, trie)
        sel = tg >= 0
        # the node of each supervised code is its prefix's id in the trie
        items = [3, 1, 4, 1]
        expected = [trie.prefix_ids[d][i].item() for i in items for d in range(3)]
        assert nodes[sel].tolist() == expected
        model = new_generator(cfg, vocab, codes, 20).eval()
        with torch.no_grad():
            logits = model(tk, pad_mask=tk != 0, teacher_forced=True).logits[sel]
            nll = []
            for row, (t, l, n) in enumerate(zip(tg[sel], lv[sel], nodes[sel])):
                sl = vocab.level_slice(int(l))
                lp = constrained_log_probs(logits[row, sl], trie.allowed(int(l), n))
                nll.append(-lp[int(t) - sl.start])
            loss = sft_loss(model, vocab, tk, tg, lv, trie=trie, nodes=nodes)
            assert torch.allclose(loss, torch.stack(nll).mean(), atol=1e-5)
            # a prefix with a single child costs nothing under the trie loss
            assert min(float(x) for x in nll) < 1e-6
            assert loss < sft_loss(model, vocab, tk, tg, lv)


def _item_world():
    from vstar.model.generator import make_vocab, new_generator
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 2, 3], [2, 0, 0], [2, 1, 1]])
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    vocab = make_vocab(cfg, [3, 3, 4], len(codes))
    model = new_generator(cfg, vocab, torch.as_tensor(codes), 20)
    return codes, vocab, model


def test_target_items_name_each_supervised_item_at_its_first_code():
    from vstar.train.sft import target_items
    codes, vocab, _ = _item_world()
    windows = [np.array([0, 3, 1, 4]), np.array([2, 1])]
    flags = [np.array([False, True, False, True]), np.array([False, True])]
    for v in (vocab, SidVocab([3, 3, 4])):                     # item-level and token-level layout
        tk, tg, lv = encode_windows(windows, flags, torch.as_tensor(codes), v)
        items = target_items(tg, lv, torch.as_tensor(codes), v)
        first = (tg >= 0) & (lv == 0)
        assert torch.equal(items >= 0, first)
        assert items[first].tolist() == [3, 4, 1]               # row-major: window 0, then 1
    bad = tg.clone()
    bad[first] = vocab.level_slice(0).start + 1                 # code 1 starts no catalogue SID
    import pytest
    with pytest.raises(ValueError, match="no catalogue item"):
        target_items(bad, lv, torch.as_tensor(codes), vocab)


def test_item_loss_adds_a_full_catalogue_softmax_over_input_item_embeddings():
    from vstar.train.sft import target_items
    torch.manual_seed(0)
    codes, vocab, model = _item_world()
    model.eval()
    windows, flags = [np.array([0, 3, 1, 4])], [np.array([False, True, True, True])]
    tk, tg, lv = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
    items = target_items(tg, lv, torch.as_tensor(codes), vocab)
    plain = sft_loss(model, vocab, tk, tg, lv)
    with torch.no_grad():
        hidden = model(tk, pad_mask=tk != 0, teacher_forced=True).hidden[0]
        table = model.wte(model.item_code_tokens).sum(1) + model.item_emb.weight      # [I, D]
        at = items[0] >= 0
        ce = F.cross_entropy(hidden[at] @ table.T, items[0][at])
    both = sft_loss(model, vocab, tk, tg, lv, items=items, item_loss=0.5)
    torch.testing.assert_close(both, plain + 0.5 * ce)
    # the mechanism: the item-ID row of an item no window holds (item 5) gets a gradient only
    # from the catalogue softmax, as every row of SASRec's output layer does
    for weight, moved in ((0.0, False), (0.5, True)):
        model.zero_grad()
        sft_loss(model, vocab, tk, tg, lv, items=items, item_loss=weight).backward()
        grad = model.item_emb.weight.grad
        assert (grad is not None and bool(grad[5].abs().sum() > 0)) == moved


def test_item_loss_needs_item_level_history():
    import pytest
    from vstar.core.errors import InputError
    codes = np.array([[i // 5, i % 5] for i in range(20)])
    seqs = [[(s + t) % 20 for t in range(6)] for s in range(20)]
    rows = _loo_rows([s[:-2] for s in seqs], 5)
    splits = Splits("leave_one_out", rows, rows, rows, 5)
    vocab = SidVocab([4, 5])
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16),
                         vocab_size=vocab.size, block_size=13)
    with pytest.raises(InputError, match="sft.item_loss"):
        train_sft(model, vocab, SidTrie(codes, [4, 5]), splits,
                  SFTConfig(max_epochs=1, item_loss=0.5), progress=False)
