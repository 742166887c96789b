"""Distillation from a SASRec teacher (sft.distill): the soft targets are the teacher's code
marginals given the true prefix, and the loss they give is a real KL."""

import dataclasses
import itertools

import numpy as np
import torch

from vstar.baselines.config import SASRecConfig
from vstar.baselines.sasrec import SASRec
from vstar.data.types import SplitRows, Splits
from vstar.data.windows import build_windows
from vstar.decode import SidTrie
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.model.generator import make_vocab, new_generator
from vstar.train.sft import (SFTConfig, encode_windows, sft_loss, teacher_code_targets,
                             train_sft)


def _world(seed=0, n_items=24):
    rng = np.random.default_rng(seed)
    codes = np.array(list(itertools.product(range(3), range(4), range(2))))  # 24 distinct SIDs
    codes = codes[rng.permutation(n_items)]
    seqs = [list(rng.integers(0, n_items, size=int(rng.integers(3, 12)))) for _ in range(15)]
    users, hists, targets = [], [], []
    for u, s in enumerate(seqs):
        for t in range(1, len(s)):
            users.append(u)
            hists.append(np.asarray(s[max(0, t - 5):t]))
            targets.append(s[t])
    rows = SplitRows(np.asarray(users), hists, np.asarray(targets))
    torch.manual_seed(seed)
    teacher = SASRec(SASRecConfig(hidden=16, heads=2, max_len=5), n_items).eval()
    return codes, rows, teacher


def test_soft_targets_are_the_teachers_code_marginals_given_the_true_prefix():
    codes, rows, teacher = _world()
    vocab = SidVocab([3, 4, 2])
    windows, flags = build_windows(rows, 5, "chunks")
    _, targets, levels = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
    soft, row = teacher_code_targets(teacher, windows, flags, torch.as_tensor(codes), vocab,
                                     targets, chunk=7)
    assert soft.shape == (int((targets >= 0).sum()), 4)
    checked = 0
    for n, (w, f) in enumerate(zip(windows, flags)):
        for i in np.flatnonzero(f):
            hist = torch.as_tensor(w[:i] + 1)[None]
            with torch.no_grad():
                p = torch.softmax(teacher(hist), -1)[0].numpy()          # brute force
            true = codes[w[i]]
            for lvl in range(3):
                same = np.all(codes[:, :lvl] == true[:lvl], axis=1)
                q = np.bincount(codes[same, lvl], weights=p[same], minlength=4)
                t = 3 * i + lvl                   # item i's level-lvl code is predicted here
                got = soft[row[n, t]].numpy()
                assert row[n, t] >= 0 and levels[n, t] == lvl
                np.testing.assert_allclose(got, q / q.sum(), rtol=1e-4, atol=1e-6)
                checked += 1
    assert checked == 3 * len(rows)


def test_distilling_one_hot_targets_is_the_cross_entropy_and_uniform_ones_the_entropy_gap():
    codes, rows, _ = _world(1)
    vocab = SidVocab([3, 4, 2])
    windows, flags = build_windows(rows, 5, "chunks")
    tokens, targets, levels = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
    torch.manual_seed(0)
    model = SidGenerator(ModelConfig(n_layer=1, n_head=2, n_embd=16, history="codes"),
                         vocab.size, 64).eval()
    one_hot = torch.zeros(*targets.shape, 4)
    sup = targets >= 0
    for l in range(3):
        at = sup & (levels == l)
        one_hot[at, targets[at] - vocab.level_slice(l).start] = 1.0
    ce = sft_loss(model, vocab, tokens, targets, levels)
    assert torch.allclose(sft_loss(model, vocab, tokens, targets, levels, soft=one_hot,
                                   distill=1.0), ce, atol=1e-6)
    # KL(uniform || p) = -log K - mean log p: the label-smoothing term minus log K per token
    sizes = torch.tensor([3.0, 4.0, 2.0])
    uniform = torch.zeros(*targets.shape, 4)
    for l, k in enumerate((3, 4, 2)):
        uniform[sup & (levels == l), :k] = 1.0 / k
    smooth = sft_loss(model, vocab, tokens, targets, levels, label_smoothing=1.0)
    kl = smooth - sizes.log()[levels[sup]].mean()
    assert torch.allclose(sft_loss(model, vocab, tokens, targets, levels, soft=uniform,
                                   distill=1.0), kl, atol=1e-5)
    mixed = sft_loss(model, vocab, tokens, targets, levels, soft=uniform, distill=0.25)
    assert torch.allclose(mixed, 0.75 * ce + 0.25 * kl, atol=1e-5)


def _training_world(seed):
    """(splits, vocab, trie, teacher, new_model): the toy world set up for train_sft."""
    codes, rows, teacher = _world(seed)
    splits = Splits("leave_one_out", rows, rows, rows, 5)
    vocab = make_vocab(ModelConfig(), [3, 4, 2], len(codes))
    trie = SidTrie(codes, [3, 4, 2])
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16)
    def new_model():
        return new_generator(cfg, vocab, torch.as_tensor(codes), 5)
    return splits, vocab, trie, teacher, new_model


def test_train_sft_with_a_teacher_runs_and_requires_one():
    splits, vocab, trie, teacher, new_model = _training_world(2)
    model = new_model()
    sft = SFTConfig(max_epochs=2, batch_size=8, warmup_steps=1, distill=0.5)
    model, history = train_sft(model, vocab, trie, splits, sft, teacher=teacher, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)
    import pytest
    from vstar.core.errors import InputError
    with pytest.raises(InputError, match="sft.distill"):
        train_sft(new_model(), vocab, trie, splits, sft, progress=False)


def test_item_soft_targets_are_the_teachers_item_softmax_before_each_target():
    from vstar.train.sft import target_items, teacher_item_targets
    codes, rows, teacher = _world(3)
    vocab = make_vocab(ModelConfig(), [3, 4, 2], len(codes))
    windows, flags = build_windows(rows, 5, "chunks")
    _, targets, levels = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
    items = target_items(targets, levels, torch.as_tensor(codes), vocab)
    soft, row = teacher_item_targets(teacher, windows, flags, items, chunk=5)
    assert soft.dtype == torch.float16 and soft.shape == (len(rows), len(codes))
    checked = 0
    for n, (w, f) in enumerate(zip(windows, flags)):
        for i in np.flatnonzero(f):
            with torch.no_grad():
                p = torch.softmax(teacher(torch.as_tensor(w[:i] + 1)[None]), -1)[0]
            t = 3 * i                                    # item i's first code is predicted here
            assert items[n, t] == w[i] and row[n, t] >= 0
            torch.testing.assert_close(soft[row[n, t]].float(), p, rtol=2e-3, atol=1e-4)
            checked += 1
    assert checked == len(rows) and int((row >= 0).sum()) == len(rows)


def _item_batch(seed):
    from vstar.train.sft import target_items
    codes, rows, teacher = _world(seed)
    vocab = make_vocab(ModelConfig(), [3, 4, 2], len(codes))
    windows, flags = build_windows(rows, 5, "chunks")
    tokens, targets, levels = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
    items = target_items(targets, levels, torch.as_tensor(codes), vocab)
    torch.manual_seed(seed)
    model = new_generator(ModelConfig(n_layer=1, n_head=2, n_embd=16), vocab,
                          torch.as_tensor(codes), 5).eval()
    return codes, rows, teacher, vocab, model, (tokens, targets, levels), items


def test_item_distillation_is_a_kl_to_the_teacher_that_one_hot_targets_turn_into_the_ce():
    from vstar.model.generator import item_head_logits
    codes, _, _, vocab, model, (tk, tg, lv), items = _item_batch(4)
    at = items >= 0
    m = int(at.sum())
    code_only = sft_loss(model, vocab, tk, tg, lv)
    ce_head = sft_loss(model, vocab, tk, tg, lv, items=items, item_loss=1.0) - code_only
    one_hot = torch.zeros(m, len(codes)).scatter_(1, items[at][:, None], 1.0)
    got = sft_loss(model, vocab, tk, tg, lv, items=items, item_loss=1.0, item_soft=one_hot,
                   item_distill=1.0) - code_only
    torch.testing.assert_close(got, ce_head, atol=1e-5, rtol=1e-5)
    soft = torch.softmax(torch.randn(m, len(codes)), -1)           # by hand: sum p log(p / q)
    with torch.no_grad():
        out = model(tk, pad_mask=tk != 0, teacher_forced=True)
        log_q = torch.log_softmax(item_head_logits(model, vocab, out.hidden[at]).float(), -1)
    kl = (soft * (soft.log() - log_q)).sum(1).mean()
    got = sft_loss(model, vocab, tk, tg, lv, items=items, item_loss=2.0, item_soft=soft,
                   item_distill=0.25) - code_only
    torch.testing.assert_close(got, 2.0 * (0.75 * ce_head + 0.25 * kl), atol=1e-5, rtol=1e-5)


def test_item_distillation_pulls_the_head_towards_the_teacher():
    """The mechanism: with c = 1 the head moves to the teacher's item softmax (a sharpened one
    here, so that it differs from the untrained head's near-uniform one), closer than the
    labels alone (c = 0) take it from the same start."""
    from vstar.model.generator import item_head_logits
    from vstar.train.sft import teacher_item_targets
    codes, rows, teacher, vocab, model, (tk, tg, lv), items = _item_batch(5)
    windows, flags = build_windows(rows, 5, "chunks")
    soft, _ = teacher_item_targets(teacher, windows, flags, items)
    soft = torch.softmax(8.0 * soft.float().log(), -1)
    at = items >= 0
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def kl_to_teacher():
        with torch.no_grad():
            out = model(tk, pad_mask=tk != 0, teacher_forced=True)
            log_q = torch.log_softmax(item_head_logits(model, vocab, out.hidden[at]), -1)
            return float((soft * (soft.clamp(min=1e-12).log() - log_q)).sum(1).mean())

    def trained_kl(c):
        model.load_state_dict(start)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            sft_loss(model, vocab, tk, tg, lv, items=items, item_loss=1.0, item_soft=soft,
                     item_distill=c).backward()
            opt.step()
        return kl_to_teacher()

    untrained = kl_to_teacher()
    distilled, labels = trained_kl(1.0), trained_kl(0.0)
    assert distilled < 0.5 * untrained and distilled < 0.5 * labels


def test_train_sft_distils_into_the_item_head_and_requires_a_teacher():
    import pytest
    from vstar.core.errors import InputError
    splits, vocab, trie, teacher, new_model = _training_world(6)
    sft = SFTConfig(max_epochs=2, batch_size=8, warmup_steps=1, item_loss=1.0, item_distill=0.5)
    model, history = train_sft(new_model(), vocab, trie, splits, sft, item_teacher=teacher,
                               progress=False)
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)
    with pytest.raises(InputError, match="sft.item_distill"):
        train_sft(new_model(), vocab, trie, splits, sft, progress=False)


def test_micro_batches_take_the_whole_batchs_step_with_less_padding():
    """sft.micro_batches: the rows of a batch sorted by length and cut into parts, each trimmed
    of its own padding and weighted by its share of the supervised tokens, take the step of the
    whole batch, with every loss term on (label smoothing, code and item distillation)."""
    from vstar.train.sft import micro_batches
    codes, rows, teacher = _world(3)
    splits = Splits("leave_one_out", rows, rows, rows, 5)
    vocab = make_vocab(ModelConfig(), [3, 4, 2], len(codes))
    trie = SidTrie(codes, [3, 4, 2])
    windows, _ = build_windows(rows, 5, "chunks")
    lengths = np.array([len(w) for w in windows])
    assert lengths.min() < lengths.max()                       # rows of different lengths
    sft = SFTConfig(max_epochs=2, batch_size=len(windows) // 2 + 1, warmup_steps=1, lr=1e-2,
                    label_smoothing=0.1, distill=0.5, item_loss=1.0, item_distill=0.5)

    def trained(parts):
        torch.manual_seed(0)
        model = new_generator(ModelConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.0), vocab,
                              torch.as_tensor(codes), 5)
        cfg = dataclasses.replace(sft, micro_batches=parts)
        model, history = train_sft(model, vocab, trie, splits, cfg, teacher=teacher,
                                   item_teacher=teacher, progress=False)
        return model.state_dict(), [h["train_loss"] for h in history]

    whole, whole_loss = trained(1)
    for parts in (2, 3):
        state, loss = trained(parts)
        np.testing.assert_allclose(loss, whole_loss, rtol=1e-5)   # the batch's mean loss
        for name, value in whole.items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # the parts: every row once, lengths in order, fewer tokens to compute than the whole batch
    idx = torch.randperm(len(windows))
    parts = micro_batches(idx, lengths, 3)
    assert len(parts) == 3 and sorted(torch.cat(parts).tolist()) == sorted(idx.tolist())
    assert all(lengths[a.numpy()].max() <= lengths[b.numpy()].min()
               for a, b in zip(parts, parts[1:]))
    assert (sum(len(p) * lengths[p.numpy()].max() for p in parts)
            < len(idx) * lengths.max())
    assert micro_batches(idx, lengths, 1) == [idx]
