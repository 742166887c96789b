"""Supervised fine-tuning of the generator: next-item SID cross-entropy on every training target.

Each training row (history, target) is one supervised next item. Rows of a user that are prefixes of
a longer row share one token window, so a user's sequence is read once and every item in it that is
a training target contributes its L code tokens to the loss. The loss at level l is a softmax over
that level's codes only (the decoder never looks outside them), or with ``sft.loss="trie"`` over
the codes the SID trie allows after the target's prefix: exactly the distribution constrained
decoding ranks with (docs/method.md, "SFT loss").
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vstar.core import checkpoint, dist
from vstar.core.device import autocast as autocast_region
from vstar.core.device import module_device
from vstar.core.errors import InputError, check_finite
from vstar.core.scalars import NullScalars, Scalars
from vstar.data.types import Splits, SplitRows
from vstar.data.windows import build_windows
from vstar.decode.trie import SidTrie
from vstar.model.backbone import SidModel
from vstar.model.generator import item_head_logits
from vstar.model.vocab import BOS, PAD, SidVocab
from vstar.train.config import SFT_LOSSES, SFTConfig
from vstar.train.schedule import lr_factor

Validate = Callable[[SidModel, SplitRows], dict]   # (model, validation rows) -> metrics

log = logging.getLogger(__name__)


def encode_windows(windows, flags, item_codes: torch.Tensor, vocab: SidVocab):
    """Right-padded token windows [N, T], next-token targets [N, T] (-100 where unsupervised)
    and the SID level of each target [N, T].

    With item-level history (``vocab.n_items > 0``) each item's last code token is replaced by
    the item's token (``SidGenerator.item_layout``); targets and levels are the same. With text
    before item tokens (``vocab.item_prefix``) the item's text tokens come between its codes and
    its item token (``_encode_text_windows``)."""
    if vocab.item_prefix is not None:
        return _encode_text_windows(windows, flags, item_codes, vocab)
    L = vocab.n_levels
    T = 1 + L * max(len(w) for w in windows)
    tokens = torch.full((len(windows), T), PAD, dtype=torch.long)
    targets = torch.full((len(windows), T), -100, dtype=torch.long)
    levels = torch.zeros((len(windows), T), dtype=torch.long)
    for n, (w, f) in enumerate(zip(windows, flags)):
        toks = vocab.code_tokens(item_codes[torch.as_tensor(w)]).reshape(-1)   # [len*L]
        tokens[n, 0] = BOS
        tokens[n, 1:1 + len(toks)] = toks
        sup = np.repeat(f, L)                                                   # [len*L]
        pos = np.nonzero(sup)[0]                    # token j is predicted at position j
        targets[n, pos] = toks[pos]
        levels[n, pos] = torch.as_tensor(pos % L)
        if vocab.item_history:                          # <i_k> at k * L, k = 1..len(w)
            tokens[n, L:1 + L * len(w):L] = vocab.item_tokens(torch.as_tensor(w))
    return tokens, targets, levels


def _encode_text_windows(windows, flags, item_codes: torch.Tensor, vocab: SidVocab):
    """``encode_windows`` for prompts with text: ``BOS c(1,1)..c(1,L-1) w(1) <i_1> c(2,1) ..``.
    The codes of item k are predicted at the previous anchor (BOS or <i_{k-1}>) and at its own
    first L-1 codes, so an item's targets stay consecutive; its text comes after its codes (the
    text of the item being predicted is never visible to its codes, ``item_layout``), exactly
    where a prompt has it before the item token."""
    L = vocab.n_levels
    seqs, tgts = [], []
    for w, f in zip(windows, flags):
        toks = vocab.code_tokens(item_codes[torch.as_tensor(w)])                # [len, L]
        seq, tgt = [torch.tensor([BOS])], []
        for k, item in enumerate(w):
            head = toks[k, :L - 1]
            seq += [head, vocab.item_sequence(int(item))]
            sup = toks[k] if f[k] else torch.full((L,), -100, dtype=torch.long)
            tgt += [sup, torch.full((len(seq[-1]) - 1,), -100, dtype=torch.long)]   # text
        seqs.append(torch.cat(seq))
        tgts.append(torch.cat(tgt + [torch.tensor([-100])]))  # the last item token: no target
    T = max(len(x) for x in seqs)
    tokens = torch.full((len(seqs), T), PAD, dtype=torch.long)
    targets = torch.full((len(seqs), T), -100, dtype=torch.long)
    for n, (x, t) in enumerate(zip(seqs, tgts)):
        tokens[n, :len(x)] = x
        targets[n, :len(t)] = t
    levels = torch.zeros_like(targets)
    for l in range(L):
        sl = vocab.level_slice(l)
        levels[(targets >= sl.start) & (targets < sl.stop)] = l
    return tokens, targets, levels


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group: int = 50) -> list[np.ndarray]:
    """One epoch's batches of window indices, windows of similar length together.

    The windows are shuffled, cut into groups of ``group * batch_size``, each group sorted by
    length (longest first) and cut into batches of ``batch_size``; the batch order is shuffled.
    A batch is then padded only to its own longest window (``train_sft`` trims right padding),
    so an epoch computes on far fewer padding tokens than uniformly drawn batches, while each
    batch still mixes users from across the training set. Gives ``ceil(len / batch_size)``
    batches, every index exactly once (only the last group's last batch may be short)."""
    perm = rng.permutation(len(lengths))
    span = group * batch_size
    batches = []
    for s in range(0, len(perm), span):
        chunk = perm[s:s + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def target_nodes(targets: torch.Tensor, levels: torch.Tensor, vocab: SidVocab,
                 trie: SidTrie) -> torch.Tensor:
    """The trie node (prefix id at the token's depth) of every supervised target token [N, T];
    0 elsewhere. A supervised item's L code tokens are consecutive, so the prefix of the level-l
    token is read from the l tokens before it."""
    nodes = torch.zeros_like(targets)
    for l in range(1, vocab.n_levels):
        at = (levels[:, 1:] == l) & (targets[:, 1:] >= 0)                    # [N, T-1]
        prev = torch.where(at, targets[:, :-1] - vocab.level_slice(l - 1).start, 0)
        child = trie.step(l - 1, torch.where(at, nodes[:, :-1], 0), prev)
        nodes[:, 1:] = torch.where(at, child, nodes[:, 1:])
    return nodes


def target_items(targets: torch.Tensor, levels: torch.Tensor, item_codes: torch.Tensor,
                 vocab: SidVocab) -> torch.Tensor:
    """The catalogue item of every supervised target, at the position of its first code [N, T]
    (-100 elsewhere): what the item-level loss (``sft_loss``'s ``items``) predicts there. An
    item's L code targets are consecutive in every window layout (``encode_windows``), and SIDs
    are collision-free, so its codes name it."""
    L = vocab.n_levels
    n, t = ((targets >= 0) & (levels == 0)).nonzero(as_tuple=True)
    codes = torch.stack([targets[n, t + l] - vocab.level_slice(l).start for l in range(L)], 1)
    found = SidTrie(torch.as_tensor(item_codes), vocab.codebook_sizes).item_of(codes)   # [M]
    if bool((found < 0).any()):
        raise ValueError("a supervised target's codes are no catalogue item's SID")
    items = torch.full_like(targets, -100)
    items[n, t] = found
    return items


@torch.no_grad()
def _teacher_softmax(teacher: torch.nn.Module, windows: list[np.ndarray],
                     flags: list[np.ndarray], chunk: int):
    """Yields (start, p [c, I], items [c]) for consecutive chunks of the windows' supervised
    items (window by window, in order): p the teacher's item softmax given the window's (at most
    ``max_len``) items before each one, right-aligned as when it ranks a history, on the
    teacher's device; items what follows, as a list of ints."""
    max_len = teacher.cfg.max_len
    was_training = teacher.training
    teacher.eval()
    dev = module_device(teacher)
    prefixes, items = [], []                    # what the teacher reads, what follows it
    for w, f in zip(windows, flags):
        for i in np.flatnonzero(f):
            prefixes.append(w[max(0, i - max_len):i])
            items.append(int(w[i]))
    try:
        for s in range(0, len(items), chunk):
            part = prefixes[s:s + chunk]
            inputs = torch.zeros(len(part), max(len(h) for h in part), dtype=torch.long)
            for r, h in enumerate(part):        # right-aligned, as the teacher ranks histories
                inputs[r, inputs.shape[1] - len(h):] = torch.from_numpy(np.asarray(h) + 1)
            yield s, torch.softmax(teacher(inputs.to(dev)).float(), dim=-1), items[s:s + chunk]
    finally:
        teacher.train(was_training)


def _supervised_rows(sup: torch.Tensor, n_rows: int, what: str) -> torch.Tensor:
    """[N, T] long: the row of each True of ``sup`` in row-major order (-1 elsewhere), checked
    against the ``n_rows`` teacher targets made for them."""
    row = torch.full(sup.shape, -1, dtype=torch.long)
    row[sup] = torch.arange(int(sup.sum()))
    if int(sup.sum()) != n_rows:
        raise ValueError(f"{int(sup.sum())} supervised {what} but {n_rows} teacher targets")
    return row


@torch.no_grad()
def teacher_code_targets(teacher: torch.nn.Module, windows: list[np.ndarray],
                         flags: list[np.ndarray], item_codes: torch.Tensor, vocab: SidVocab,
                         targets: torch.Tensor, chunk: int = 1024
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A SASRec teacher's distribution over each supervised code, for distillation.

    For the item at window position i the teacher reads the window's (at most ``max_len``)
    items before it, right-aligned as when it ranks a history, and gives p(item); the soft
    target of SID level l is that distribution summed over the items that share the true item's
    first l codes, grouped by their level-l code (so it is the teacher's p(code_l | history,
    true prefix), the quantity the generator's level-l softmax estimates).

    Returns (soft [S, K_max] float32, row [N, T] long): ``soft[row[n, t]]`` is the target of the
    supervised token ``targets[n, t]`` (``encode_windows``'s layout), row -1 elsewhere.
    """
    L, K = vocab.n_levels, max(vocab.codebook_sizes)
    dev = module_device(teacher)              # computed where the teacher is, kept on the CPU
    codes = torch.as_tensor(item_codes).long().to(dev)                          # [I, L]
    n_items = sum(int(f.sum()) for f in flags)
    soft = torch.zeros(n_items * L, K)
    for s, p, items in _teacher_softmax(teacher, windows, flags, chunk):
        c = len(items)
        true = codes[torch.as_tensor(items, device=dev)]                        # [c, L]
        same = torch.ones_like(p, dtype=torch.bool)
        for lvl in range(L):
            q = torch.zeros(c, K, device=dev).scatter_add_(1, codes[:, lvl].expand(c, -1),
                                                           p * same)
            soft[(s + torch.arange(c)) * L + lvl] = (q / q.sum(1, keepdim=True)).cpu()
            same &= codes[None, :, lvl] == true[:, lvl, None]
    return soft, _supervised_rows(targets >= 0, len(soft), "tokens")


@torch.no_grad()
def teacher_item_targets(teacher: torch.nn.Module, windows: list[np.ndarray],
                         flags: list[np.ndarray], items: torch.Tensor, chunk: int = 1024
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A SASRec teacher's item softmax before each supervised item, for ``sft.item_distill``.

    Returns (soft [S, I] float16, row [N, T] long): ``soft[row[n, t]]`` is the teacher's
    distribution over the catalogue where ``items[n, t]`` (``target_items``) names a target,
    row -1 elsewhere. float16 halves the S x I table (33 k x 4 k items: 0.3 GB on Scientific)."""
    n_items = sum(int(f.sum()) for f in flags)
    soft = None
    for s, p, _ in _teacher_softmax(teacher, windows, flags, chunk):
        if soft is None:
            soft = torch.zeros(n_items, p.shape[1], dtype=torch.float16)
        soft[s:s + len(p)] = p.half().cpu()
    if soft is None:
        soft = torch.zeros(0, 0, dtype=torch.float16)
    return soft, _supervised_rows(items >= 0, len(soft), "items")


def sft_loss(model: SidModel, vocab: SidVocab, tokens, targets, levels,
             label_smoothing: float = 0.0, trie: SidTrie | None = None,
             nodes: torch.Tensor | None = None, soft: torch.Tensor | None = None,
             distill: float = 0.0, items: torch.Tensor | None = None,
             item_loss: float = 0.0, item_soft: torch.Tensor | None = None,
             item_distill: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of the supervised code tokens, softmax over each token's level, or,
    given ``trie`` and the targets' ``nodes`` (``target_nodes``), over the trie-valid codes.

    ``label_smoothing`` eps: (1 - eps) * NLL + eps * the mean NLL over the codes the softmax
    covers (the token's level, or its trie-valid codes). ``soft`` [N, T, K_max] (the teacher's
    code distributions, ``teacher_code_targets``) and ``distill`` a: (1 - a) * that loss +
    a * KL(soft || the generator's distribution). ``items`` [N, T] (``target_items``) and
    ``item_loss`` b: plus b * the mean cross-entropy of the target items over the whole
    catalogue, item i scored h . e_i at its first code's position, e_i the item token's input
    embedding (``model.embed``; item-level history only). ``item_soft`` [M, I] (a teacher's
    item distributions at the M targets of ``items``, row-major, ``teacher_item_targets``) and
    ``item_distill`` c: that cross-entropy becomes (1 - c) * CE + c * KL(item_soft || head)."""
    pad_mask = tokens != PAD
    if vocab.item_history:                            # item-level history: its training layout
        out = model(tokens, pad_mask=pad_mask, teacher_forced=True)
    else:
        out = model(tokens, pad_mask=pad_mask)
    logits = out.logits.float()           # the loss in float32 under autocast (no-op otherwise)
    extra = torch.zeros((), device=logits.device)
    if item_loss:
        at = items >= 0
        head = item_head_logits(model, vocab, out.hidden[at]).float()
        extra = F.cross_entropy(head, items[at])
        if item_distill:
            kl = F.kl_div(torch.log_softmax(head, -1), item_soft.float(), reduction="batchmean")
            extra = (1.0 - item_distill) * extra + item_distill * kl
        extra = item_loss * extra
    return _code_loss(vocab, logits, targets, levels, label_smoothing, trie, nodes, soft,
                      distill) + extra


def _code_loss(vocab: SidVocab, logits, targets, levels, label_smoothing, trie, nodes, soft,
               distill) -> torch.Tensor:
    """``sft_loss``'s loss of the supervised code tokens, from the logits [B, T, V]."""
    sel = targets >= 0
    lg, tg, lv = logits[sel], targets[sel], levels[sel]                        # [M, V], [M], [M]
    level_of_token = torch.full((vocab.size,), -1, dtype=torch.long, device=lg.device)
    for l in range(vocab.n_levels):
        level_of_token[vocab.level_slice(l)] = l
    in_level = level_of_token[None, :] == lv[:, None]                          # [M, V]
    if trie is not None:
        nd = nodes[sel]
        in_level = torch.zeros_like(in_level)
        for l in range(vocab.n_levels):
            rows = (lv == l).nonzero(as_tuple=True)[0]
            in_level[rows, vocab.level_slice(l)] = trie.allowed(l, nd[rows])
    lg = lg.masked_fill(~in_level, float("-inf"))
    if not label_smoothing and not distill:
        return F.cross_entropy(lg, tg)
    lp = torch.log_softmax(lg, dim=-1)                                          # [M, V]
    nll = -lp.gather(1, tg[:, None]).squeeze(1)
    uniform = -(lp.masked_fill(~in_level, 0.0).sum(1) / in_level.sum(1))
    loss = ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()
    if not distill:
        return loss
    q = soft[sel]                                                               # [M, K_max]
    kl = torch.zeros((), device=lg.device)
    for l in range(vocab.n_levels):
        rows = (lv == l).nonzero(as_tuple=True)[0]
        sl = vocab.level_slice(l)
        ql, lpl = q[rows, :sl.stop - sl.start], lp[rows, sl]
        kl = kl + torch.where(ql > 0, ql * (ql.clamp(min=1e-30).log() - lpl), 0.0).sum()
    return (1.0 - distill) * loss + distill * kl / len(tg)


@torch.no_grad()
def held_out_loss(model: SidModel, vocab: SidVocab, tokens, targets, levels,
                  batch_size: int, trie: SidTrie | None = None,
                  nodes: torch.Tensor | None = None, autocast: str = "none") -> float:
    """Mean NLL per supervised code over held-out windows, in eval mode: ``sft_loss`` without
    label smoothing; with ``trie`` and ``nodes``, of the trie-constrained distribution decoding
    ranks with (so comparable across ``sft.loss`` settings). Set beside the training loss, it
    shows over-fitting that ranking metrics hide. Windows (on the CPU) go to the model's device
    a batch at a time; ``autocast``: ``run.autocast``'s region around the forward."""
    was_training = model.training
    model.eval()
    dev = module_device(model)
    total, count = 0.0, 0
    order = torch.argsort((tokens != PAD).sum(1), stable=True)   # batches of similar lengths:
    for s in range(0, len(tokens), batch_size):                  # little padding to compute
        rows = order[s:s + batch_size]
        tk, tg, lv = tokens[rows], targets[rows], levels[rows]
        keep = int((tk != PAD).sum(1).max())
        n = int((tg >= 0).sum())
        nd = None if nodes is None else nodes[rows][:, :keep].to(dev)
        with autocast_region(dev, autocast):
            loss = sft_loss(model, vocab, tk[:, :keep].to(dev), tg[:, :keep].to(dev),
                            lv[:, :keep].to(dev), 0.0, trie, nd)
        total += n * float(loss)
        count += n
    model.train(was_training)
    return total / max(1, count)


def micro_batches(idx: torch.Tensor, lengths: np.ndarray, k: int) -> list[torch.Tensor]:
    """The rows ``idx`` of a batch as ``k`` micro-batches of consecutive lengths (``lengths``:
    non-padding tokens per window): sorted by length (stably) and cut into ``k`` near-equal
    parts, so that each part, trimmed to its own longest row, computes few padding tokens
    (``sft.micro_batches``). ``k`` <= 1: the batch as it is."""
    if k <= 1 or len(idx) <= 1:
        return [idx]
    order = idx[torch.as_tensor(np.argsort(lengths[idx.numpy()], kind="stable"))]
    return [part for part in torch.tensor_split(order, min(k, len(order))) if len(part)]


def _rows_of(soft: torch.Tensor | None, row: torch.Tensor | None, idx: torch.Tensor, keep: int,
             dev: torch.device) -> torch.Tensor | None:
    """The teacher rows of a batch's supervised positions, row-major (``teacher_item_targets``)."""
    if soft is None:
        return None
    r = row[idx][:, :keep]
    return soft[r[r >= 0]].to(dev)


def train_sft(model: SidModel, vocab: SidVocab, trie: SidTrie, splits: Splits,
              cfg: SFTConfig, seed: int = 0, validate: Validate | None = None,
              progress: bool = True, checkpoint_path: str | os.PathLike | None = None,
              resume: bool = False, teacher: torch.nn.Module | None = None,
              scalars: Scalars | None = None,
              autocast: str = "none",
              item_teacher: torch.nn.Module | None = None) -> tuple[SidModel, list[dict]]:
    """Train with AdamW, a linear warm-up and a cosine (or constant, ``cfg.schedule``) learning
    rate; keep the best validation state (early stopping).

    Every ``cfg.eval_every`` epochs, ``validate(model, rows)`` scores a fixed seeded subset of
    ``cfg.val_max_users`` validation rows and must return ``cfg.val_metric`` (the pipeline passes
    beam-search ranking of width ``cfg.val_beam``, ``vstar.experiments.pipeline``). Without
    ``validate`` the model of the last epoch is kept. Returns the model and the per-epoch history
    (train loss, validation metrics, seconds).

    With ``checkpoint_path`` the whole training state (weights, best weights, optimiser, LR
    schedule, RNGs, early-stopping state, history) is saved there after every epoch (an
    ``sft_state`` checkpoint); with ``resume`` and that file present, training continues from it
    and ends with exactly the weights and history of an uninterrupted run.

    Under torchrun (``vstar.core.dist``) each rank trains on its share of every global batch of
    ``cfg.batch_size`` windows, its loss weighted by its share of the batch's supervised tokens,
    and gradients are summed over ranks before clipping: a step equals the single-process step.
    Rank 0 alone writes the checkpoint; validation decodes each rank's share of the users.

    ``scalars`` (``vstar.core.scalars``, e.g. TensorBoard) gets the curves, x = optimiser steps:
    ``sft/loss`` and ``sft/lr`` every step, and after every epoch its record (``sft/epoch/...``:
    train loss, seconds, and on evaluated epochs the validation NLL and metrics).

    Device: the model's (``vstar.core.device``). The token windows are built on the CPU and each
    batch is moved to the model's device; the trie must be there too (it is where the trie-loss
    masks and the validation decoding read it). ``autocast`` (``run.autocast``): the forward and
    the loss run in that region, the backward outside it; the loss itself is float32.
    """
    dev = module_device(model)
    torch.manual_seed(dist.rank_seed(seed))       # dropout: each rank its own stream
    rng = np.random.default_rng(seed)
    windows, flags = build_windows(splits.train, splits.max_history, cfg.windows)
    item_codes = trie.codes.cpu()                 # windows are encoded on the CPU
    tokens, targets, levels = encode_windows(windows, flags, item_codes, vocab)
    if cfg.loss not in SFT_LOSSES:
        raise InputError(f"expected one of {SFT_LOSSES}, got {cfg.loss!r}", field="sft.loss")

    def nodes_of(tg: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:   # on the trie, kept on CPU
        return target_nodes(tg.to(trie.device), lv.to(trie.device), vocab, trie).cpu()

    nodes = nodes_of(targets, levels) if cfg.loss == "trie" else None
    loss_trie = trie if cfg.loss == "trie" else None
    soft = soft_row = None
    if cfg.distill > 0:
        if teacher is None:
            raise InputError("sft.distill > 0 needs a teacher model", field="sft.distill")
        soft, soft_row = teacher_code_targets(teacher, windows, flags, item_codes, vocab,
                                              targets)
        log.info("SFT: distilling %d code distributions of the SASRec teacher (weight %.2f)",
                 len(soft), cfg.distill)
    item_tg = None
    if cfg.item_loss > 0:
        if not vocab.item_history:
            raise InputError("sft.item_loss > 0 scores items by their input embedding, which "
                             "needs model.history=items", field="sft.item_loss")
        item_tg = target_items(targets, levels, item_codes, vocab)
    item_soft = item_row = None
    if cfg.item_distill > 0:
        if item_tg is None or item_teacher is None:
            raise InputError("sft.item_distill > 0 needs sft.item_loss > 0 and a teacher model",
                             field="sft.item_distill")
        item_soft, item_row = teacher_item_targets(item_teacher, windows, flags, item_tg)
        log.info("SFT: distilling %d item distributions of a %d-wide SASRec into the item head "
                 "(weight %.2f)", len(item_soft), item_teacher.cfg.hidden, cfg.item_distill)
    log.info("SFT: %d training rows in %d windows, %d supervised tokens", len(splits.train),
             len(windows), int((targets >= 0).sum()))
    val = splits.valid
    if 0 < cfg.val_max_users < len(val):
        val = val.subset(np.sort(rng.choice(len(val), cfg.val_max_users, replace=False)))
    val_windows = [np.r_[h[-splits.max_history:], t] for h, t in zip(val.histories, val.targets)]
    val_batches = encode_windows(val_windows, [np.r_[np.zeros(len(w) - 1, bool), True]
                                               for w in val_windows], item_codes, vocab) \
        if len(val) else None
    val_nodes = (nodes_of(val_batches[1], val_batches[2]) if val_batches is not None else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(windows) / cfg.batch_size)
    lengths = (tokens != PAD).sum(1).numpy()
    tokens_per_batch = float((targets >= 0).sum()) / steps_per_epoch
    total = steps_per_epoch * cfg.max_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.schedule))
    best, best_state, bad, history = -1.0, None, 0, []
    start = 0
    if resume and checkpoint_path is not None and os.path.isfile(checkpoint_path):
        state = checkpoint.load_sft_state(checkpoint_path)
        model.load_state_dict(state.model)
        best_state = state.best_model
        opt_state = opt.state_dict()
        for pid, tensors in state.optimizer_state.items():
            opt_state["state"].setdefault(pid, {}).update(tensors)
        opt.load_state_dict(opt_state)
        sched.load_state_dict(state.lr_schedule)
        for group, lr in zip(opt.param_groups, sched.get_last_lr()):   # the restored schedule's
            group["lr"] = lr                                          # rate, not step 0's
        torch.set_rng_state(dist.pick_rng_state(state.torch_rng))
        rng.bit_generator.state = state.numpy_rng
        best, bad = float(state.early_stopping["best"]), int(state.early_stopping["bad"])
        history, start = list(state.history), state.epoch
        log.info("SFT resumed from %s after epoch %d", checkpoint_path, start)
    scalars = scalars or NullScalars()
    if start:                      # curves an interrupted run logged after its checkpoint: hidden
        scalars.restart_at(start * steps_per_epoch + 1)
    dist.broadcast_module(model)                     # every rank starts from rank 0's weights
    for epoch in range(start, cfg.max_epochs):
        if bad >= cfg.patience:                        # resumed after the early stop
            break
        model.train()
        t0 = time.perf_counter()
        if cfg.group_by_length:
            batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        else:
            perm = rng.permutation(len(windows))
            batches = [perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                       for s in range(steps_per_epoch)]
        losses = []
        for s in tqdm(range(steps_per_epoch), desc=f"sft epoch {epoch}",
                      disable=not progress or not dist.is_main(), leave=False):
            batch = torch.as_tensor(batches[s])
            idx = dist.shard(batch)
            opt.zero_grad(set_to_none=True)
            # this rank's share of the global batch's mean loss (1 with one process), times the
            # batch's weight: with length-grouped batches (of very different token counts) the
            # mean loss is scaled by the batch's supervised tokens over their epoch mean, so that
            # every supervised token weighs the same over an epoch, as with random batches
            n_local = int((targets[idx] >= 0).sum())   # this rank's supervised tokens
            share = dist.global_share(n_local)
            if cfg.group_by_length:
                share *= int((targets[batch] >= 0).sum()) / tokens_per_batch
            value = torch.zeros((), device=dev)
            # micro-batches (sft.micro_batches): the rows sorted by length and cut into parts,
            # each trimmed of its own padding and weighted by its share of the supervised tokens,
            # so that the gradients add up to the whole batch's mean loss
            for part in micro_batches(idx, lengths, cfg.micro_batches):
                n_part = int((targets[part] >= 0).sum())
                if not n_part:
                    continue
                tk, tg, lv = tokens[part], targets[part], levels[part]
                keep = int((tk != PAD).sum(1).max())          # trim right padding of these rows
                nd = None if nodes is None else nodes[part][:, :keep].to(dev)
                sb = (None if soft is None
                      else soft[soft_row[part][:, :keep].clamp(min=0)].to(dev))
                with autocast_region(dev, autocast):      # forward + loss; backward outside
                    loss = sft_loss(model, vocab, tk[:, :keep].to(dev), tg[:, :keep].to(dev),
                                    lv[:, :keep].to(dev), cfg.label_smoothing, loss_trie, nd, sb,
                                    cfg.distill,
                                    None if item_tg is None else item_tg[part][:, :keep].to(dev),
                                    cfg.item_loss, _rows_of(item_soft, item_row, part, keep, dev),
                                    cfg.item_distill)
                weight = share * n_part / n_local
                if weight != 1.0:
                    loss = loss * weight
                loss.backward()
                value = value + loss.detach()              # no device sync per part
            dist.all_reduce_grads(model.parameters())
            value = dist.all_sum([float(value)])[0]         # the global batch's mean loss
            check_finite(torch.tensor(value), "sft loss", len(losses) + 1 + epoch * steps_per_epoch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = opt.param_groups[0]["lr"]               # the rate this step used
            opt.step()
            sched.step()
            losses.append(value)
            scalars.log("sft", {"loss": value, "lr": lr}, epoch * steps_per_epoch + len(losses))
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                  "train_seconds": time.perf_counter() - t0}
        if validate is not None and ((epoch + 1) % cfg.eval_every == 0
                                     or epoch == cfg.max_epochs - 1):
            if val_batches is not None:
                record["valid_nll"] = held_out_loss(model, vocab, *val_batches, cfg.batch_size,
                                                    trie, val_nodes, autocast)
            record.update(validate(model, val))
            if cfg.val_metric not in record:
                raise InputError(f"validation returned {sorted(record)}, not {cfg.val_metric!r}",
                                 field="sft.val_metric")
            score = record[cfg.val_metric]
            if score > best:
                best, bad = score, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        history.append(record)
        scalars.log("sft/epoch", {k: v for k, v in record.items() if k != "epoch"},
                    (epoch + 1) * steps_per_epoch)
        log.info("SFT epoch %d: loss %.4f, valid NLL/code %.4f, valid %s %.4f (best %.4f), "
                 "%.1fs", epoch, record["train_loss"], record.get("valid_nll", float("nan")),
                 cfg.val_metric, record.get(cfg.val_metric, float("nan")), best,
                 record["train_seconds"])
        torch_rng = dist.gather_rng_state(torch.get_rng_state())   # every rank's stream
        if checkpoint_path is not None and dist.is_main():
            checkpoint.save_sft_state(
                checkpoint_path, model=model.state_dict(), best_model=best_state,
                optimizer_state=opt.state_dict()["state"], torch_rng=torch_rng,
                epoch=epoch + 1, numpy_rng=rng.bit_generator.state,
                lr_schedule=sched.state_dict(), early_stopping={"best": best, "bad": bad},
                history=history)
        if bad >= cfg.patience:
            log.info("SFT: early stop after epoch %d (no gain for %d evaluations)", epoch, bad)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history
