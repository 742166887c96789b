"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention next-item recommender.

One readable file, nanoGPT-style: attention, feed-forward, block, model, training loop.

- Tokens: item ``i`` is token ``i + 1``; token 0 is padding. Histories are left-padded, so the
  newest item always sits in the last slot and gets the last learned position.
- Blocks are pre-LN causal self-attention + point-wise feed-forward (Eq. 4 of the paper, ReLU,
  inner width = hidden), with dropout; a final LayerNorm.
- Scores: the dot product of the last hidden state with the item embedding table (Eq. 6, shared
  item embeddings), over the **whole catalogue**.
- Loss: cross-entropy over all items (full softmax, no sampled negatives).

Training objective (docs/protocol.md "Baselines"). The training rows are cut into token windows
by ``vstar.data.windows.build_windows`` (the same windows as the SID generator's SFT): with
``windows="chunks"`` (default) each user's training sequence is read once, in windows of
``max_len`` + 1 items, and the loss is taken at **every position** whose next item is a training
target (SASRec's own recipe); ``windows="rows"`` gives every row exactly its own history, with the
loss at its last position. Either way every training interaction is a target exactly once.

Early stopping reads ``validate(model) -> {"NDCG@k": ...}``, passed by the caller (the pipeline
ranks the validation rows with ``model.rank`` and scores them with ``vstar.eval.metrics``).
Checkpoints are ``sasrec`` checkpoints of ``vstar.core.checkpoint``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vstar.baselines.config import SASRecConfig
from vstar.core.device import resolve_device
from vstar.core import checkpoint
from vstar.core.errors import InputError
from vstar.core.repro import set_seed
from vstar.data.types import Splits

logger = logging.getLogger(__name__)

PAD = 0  # padding token; item i is token i + 1


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise InputError(f"hidden ({cfg.hidden}) must be divisible by heads ({cfg.heads})",
                             field="heads")
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape                                        # x  # [B, T, D]
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(                      # [B, H, T, D/H]
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    """Point-wise feed-forward network (SASRec Eq. 4)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.relu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + ffn(LN(x))."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.ffn(self.ln2(x))


class SASRec(nn.Module):
    """Next-item scores over the full catalogue from a left-padded history of item tokens."""

    def __init__(self, cfg: SASRecConfig, n_items: int):
        super().__init__()
        if n_items < 1:
            raise InputError(f"n_items must be >= 1, got {n_items}", field="n_items")
        self.cfg, self.n_items = cfg, n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=PAD)  # token i+1 = item i
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.apply(self._init_weights)
        self.fit_log: list[dict[str, float]] = []  # filled by train_sasrec: one entry per evaluation

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (left-padded, T <= max_len) -> logits [B, n_items] for the next item."""
        h = self.hidden_states(tokens)[:, -1]                                             # [B, D]
        return h @ self.item_emb.weight[1:].T                                            # [B, n_items] Eq. 6

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (left-padded, T <= max_len) -> final states [B, T, D]; the state at t
        scores the item after t."""
        B, T = tokens.shape
        if T > self.cfg.max_len:
            raise InputError(f"history length {T} exceeds max_len {self.cfg.max_len}", field="tokens")
        # positions count from the right: the newest item is always at position max_len - 1
        pos = torch.arange(self.cfg.max_len - T, self.cfg.max_len, device=tokens.device)  # [T]
        x = self.drop(self.item_emb(tokens) + self.pos_emb(pos))                         # [B, T, D]
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()          # [T, T]
        real = (tokens != PAD)[:, None, None, :]                                          # [B, 1, 1, T]
        eye = torch.eye(T, dtype=torch.bool, device=tokens.device)   # a padded slot sees itself: no NaN
        mask = (causal & real) | eye                                                      # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)                                                               # [B, T, D]

    @torch.no_grad()
    def rank(self, histories: list[np.ndarray], k: int, batch_size: int = 512) -> np.ndarray:
        """Top-``k`` items of the full catalogue for each history: int64 [R, k], best first.

        Histories longer than ``max_len`` keep their most recent items. Items already in the
        history are not removed (repeat interactions are allowed).
        """
        if not 1 <= k <= self.n_items:
            raise InputError(f"k must be in 1..{self.n_items} (the catalogue size), got {k}", field="k")
        was_training = self.training
        self.eval()
        device = self.item_emb.weight.device
        tokens = encode_histories(histories, self.cfg.max_len, self.n_items)  # [R, max_len]
        out = []
        for start in range(0, len(tokens), batch_size):
            batch = _trim_padding(tokens[start:start + batch_size]).to(device)
            out.append(self(batch).topk(k, dim=1).indices.cpu())              # [b, k]
        self.train(was_training)
        if not out:
            return np.zeros((0, k), dtype=np.int64)
        return torch.cat(out).numpy().astype(np.int64)


def encode_histories(histories: list[np.ndarray], max_len: int, n_items: int) -> torch.Tensor:
    """Left-padded token matrix int64 [R, max_len]: item i -> token i + 1, padding 0.

    Histories longer than ``max_len`` keep their last ``max_len`` items.
    """
    tokens = torch.zeros(len(histories), max_len, dtype=torch.long)
    for r, history in enumerate(histories):
        h = np.asarray(history, dtype=np.int64)[-max_len:] if max_len else np.zeros(0, np.int64)
        if h.size and (h.min() < 0 or h.max() >= n_items):
            raise InputError(f"history {r} holds item {int(h[(h < 0) | (h >= n_items)][0])}, "
                             f"outside 0..{n_items - 1}", field="histories")
        if h.size:
            tokens[r, max_len - h.size:] = torch.from_numpy(h + 1)
    return tokens


def encode_windows(rows, max_len: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows (``vstar.data.windows``) as left-padded inputs and next-item targets.

    inputs [N, max_len]: window items except the last (token = item + 1); targets [N, max_len]:
    the item after each input position where that item is a row's target, -100 elsewhere.
    """
    from vstar.data.windows import build_windows

    windows, flags = build_windows(rows, max_len, mode)
    inputs = torch.zeros(len(windows), max_len, dtype=torch.long)
    targets = torch.full((len(windows), max_len), -100, dtype=torch.long)
    for n, (w, f) in enumerate(zip(windows, flags)):
        k = len(w) - 1
        inputs[n, max_len - k:] = torch.from_numpy(w[:-1] + 1)
        tgt = torch.from_numpy(w[1:].copy())
        tgt[~torch.from_numpy(f[1:].copy())] = -100
        targets[n, max_len - k:] = tgt
    return inputs, targets


def _trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row (positions count from the right)."""
    width = max(int((tokens != PAD).sum(1).max()) if len(tokens) else 1, 1)
    return tokens[:, -width:]


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def sasrec_device(cfg: SASRecConfig) -> torch.device:
    """``sasrec.device``; ``run`` (the default, which the pipeline replaces by the run's
    device) means ``auto`` here: CUDA if available, else the CPU."""
    return resolve_device("auto") if cfg.device == "run" else torch.device(cfg.device)


def train_sasrec(splits: Splits, n_items: int, cfg: SASRecConfig | None = None, seed: int = 0,
                 validate: Callable[[SASRec], dict] | None = None,
                 checkpoint_path: str | Path | None = None,
                 log: logging.Logger = logger) -> SASRec:
    """Train SASRec on ``splits.train``; early-stop on ``validate(model)["NDCG@<eval_k>"]``.

    ``validate`` is called every ``cfg.eval_every`` epochs and returns metrics by name (at least
    ``NDCG@<eval_k>``); without it the model of the last epoch is kept. Returns the model in eval
    mode holding the best validation state (also saved to ``checkpoint_path`` if given).
    ``model.fit_log`` lists every evaluation (epoch, train loss, valid metrics, seconds).
    """
    cfg = cfg if cfg is not None else SASRecConfig()
    for name in ("max_epochs", "eval_every", "patience", "batch_size", "eval_k", "max_len"):
        if int(getattr(cfg, name)) < 1:
            raise InputError(f"must be >= 1, got {getattr(cfg, name)}", field=name)
    if len(splits.train) == 0 or len(splits.valid) == 0:
        raise InputError("SASRec needs non-empty train and valid rows", field="splits")
    for name, rows in (("train", splits.train), ("valid", splits.valid)):
        t = np.asarray(rows.targets)
        if t.min() < 0 or t.max() >= n_items:
            raise InputError(f"{name} targets must lie in 0..{n_items - 1}", field=f"{name}.targets")
    set_seed(seed)
    device = sasrec_device(cfg)

    model = SASRec(cfg, n_items).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tokens, targets = encode_windows(splits.train, cfg.max_len, cfg.windows)  # [N, max_len] x2
    shuffle = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("SASRec: %d params, %d train rows in %d windows, %d valid rows, %d items",
             n_params, len(splits.train), len(tokens), len(splits.valid), n_items)

    best_score, best_state, best_epoch, bad_evals = -1.0, None, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="SASRec", unit="epoch", disable=None)
    for epoch in bar:
        model.train()
        total, n_seen = 0.0, 0
        for idx in torch.randperm(len(targets), generator=shuffle).split(cfg.batch_size):
            batch = _trim_padding(tokens[idx]).to(device)                     # [B, T]
            tgt = targets[idx][:, -batch.shape[1]:].to(device)                 # [B, T]
            sup = tgt >= 0
            h = model.hidden_states(batch)[sup]                                # [M, D]
            logits = h @ model.item_emb.weight[1:].T                           # [M, n_items]
            loss = F.cross_entropy(logits, tgt[sup])                          # full softmax
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * int(sup.sum())
            n_seen += int(sup.sum())
        if validate is None or (epoch % cfg.eval_every and epoch != cfg.max_epochs):
            continue
        metrics = validate(model)
        key = f"NDCG@{cfg.eval_k}"
        if key not in metrics:
            raise InputError(f"validation returned {sorted(metrics)}, not {key!r}",
                             field="sasrec.eval_k")
        score = metrics[key]
        entry = {"epoch": epoch, "train_loss": total / n_seen,
                 **{f"valid_{k}": v for k, v in metrics.items()},
                 "seconds": time.perf_counter() - t0}
        model.fit_log.append(entry)
        bar.set_postfix(loss=f"{entry['train_loss']:.4f}", ndcg=f"{score:.4f}")
        log.info("epoch %d loss %.4f valid NDCG@%d %.4f", epoch, entry["train_loss"], cfg.eval_k, score)
        if score > best_score:
            best_score, best_epoch, bad_evals = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_evals += 1
            if bad_evals >= cfg.patience:
                log.info("early stop at epoch %d (best epoch %d)", epoch, best_epoch)
                break
    bar.close()

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log.info("SASRec best valid NDCG@%d %.4f at epoch %d (%.1f s)",
             cfg.eval_k, best_score, best_epoch, time.perf_counter() - t0)
    if checkpoint_path is not None:
        save_sasrec(model, checkpoint_path)
    return model


# ---------------------------------------------------------------------------------------------
# checkpoints (safetensors only)
# ---------------------------------------------------------------------------------------------

def _config_dict(cfg: Any) -> dict:
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    from omegaconf import OmegaConf  # a DictConfig built from SASRecConfig
    return OmegaConf.to_container(cfg, resolve=True)


def save_sasrec(model: SASRec, path: str | Path) -> None:
    """Write a ``sasrec`` checkpoint: weights, config and n_items."""
    checkpoint.save_sasrec(path, model.state_dict(), n_items=model.n_items,
                           config=_config_dict(model.cfg))


def load_sasrec(path: str | Path, cfg: SASRecConfig, n_items: int) -> SASRec:
    """Rebuild a SASRec from ``cfg`` and ``n_items`` and load the weights saved at ``path``."""
    state, saved_items, _ = checkpoint.load_sasrec(path)
    model = SASRec(cfg, n_items)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found or saved_items != n_items:
        diff = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
        raise InputError(f"checkpoint does not match SASRecConfig/n_items={n_items} (saved "
                         f"n_items={saved_items}): tensors {diff[:4]} differ (expected "
                         f"{[expected.get(n) for n in diff[:4]]}, found "
                         f"{[found.get(n) for n in diff[:4]]})", file=str(path))
    model.load_state_dict(state)
    model.to(sasrec_device(cfg))
    model.eval()
    return model
