"""The SID generator: a small decoder-only causal transformer with a KV cache (nanoGPT-like).

Everything downstream (beam search, VED, RL) talks to it through one call::

    out = model(tokens, cache=None, pad_mask=None)   # GeneratorOutput(logits, hidden, cache)

``hidden`` is the last layer's (post-norm) state the value head reads; ``cache`` holds keys and
values so that decoding feeds one token per step. A Hugging Face causal LM with added SID tokens can
take this model's place by implementing the same call (see ``SidLM`` in ``interface.py``).

    vocab = make_vocab(cfg, codebook_sizes, n_items)      # item tokens with item-level history
    model = new_generator(cfg, vocab, item_codes, max_history=20)
    save_generator(path, model, vocab)          # a ``generator`` checkpoint (vstar.core.checkpoint)
    model = load_generator(path, vocab)         # checks the SID codebooks match
"""

from __future__ import annotations

import math
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vstar.core import checkpoint
from vstar.core.errors import InputError
from vstar.model.cache import (HistoryView, KVCache, SharedKVCache, history_views,
                               shared_prefix_attention)
from vstar.model.config import HISTORY_INPUTS, ModelConfig
from vstar.model.vocab import BOS, SidVocab


@dataclass
class GeneratorOutput:
    logits: torch.Tensor  # [B, T, V]
    hidden: torch.Tensor  # [B, T, D]
    cache: KVCache | SharedKVCache


def embed_item_tokens(tokens: torch.Tensor, vocab_size: int,
                      embed: Callable[[torch.Tensor], torch.Tensor],
                      item_code_tokens: torch.Tensor, item_emb: nn.Module | None = None
                      ) -> torch.Tensor:
    """Input embeddings [B, T, D] of a sequence that may hold item tokens (ids >= ``vocab_size``,
    ``SidVocab.item_tokens``): other tokens are ``embed(tokens)``; item i is the sum of
    ``embed`` over its code tokens ``item_code_tokens[i]`` [L], plus ``item_emb(i)`` if given.
    ``embed`` maps vstar token ids to embeddings (the generator's table, or an HF model's at
    its SID offset), so both backbones embed items the same way."""
    is_item = tokens >= vocab_size
    x = embed(tokens.masked_fill(is_item, 0))
    where = is_item.nonzero(as_tuple=True)
    if where[0].numel():
        item = tokens[where] - vocab_size                                   # [n]
        item_x = embed(item_code_tokens[item]).sum(-2)                      # [n, D]
        if item_emb is not None:
            item_x = item_x + item_emb(item)
        x = x.index_put(where, item_x.to(x.dtype))
    return x


def item_layout(tokens: torch.Tensor, pad_mask: torch.Tensor, vocab_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [B, T] and attention mask [B, T, T] (True = may attend) of teacher-forced
    item-level sequences; item tokens are the ids >= ``vocab_size``.

    A training window of items i_1..i_m is ``BOS c(1,1)..c(1,L-1) <i_1> c(2,1)..c(2,L-1)
    <i_2> ..``: each item's last code is replaced by its item token, so the same targets as
    the token-level window are predicted at the same places. BOS and item tokens ("anchors")
    see only earlier anchors; the code tokens of item k see the anchors before them (BOS,
    <i_1>..<i_{k-1}>) and the earlier codes of item k. Positions: BOS 0, <i_k> k, c(k,l)
    k - 1 + l. This is exactly what decoding sees: a prompt ``BOS <i_1>..<i_n>`` at positions
    0..n, then the codes of item n+1 at n+1, n+2, ... Both backbones train with it
    (``SidGenerator``, ``vstar.model.hf.HFSidLM``).
    """
    B, T = tokens.shape
    dev = tokens.device
    anchor = (tokens >= vocab_size) | (tokens == BOS)                      # [B, T]
    group = anchor.long().cumsum(1)                                        # BOS 1, <i_k> k + 1
    idx = torch.arange(T, device=dev)
    last_anchor = torch.where(anchor, idx, torch.full_like(idx, -1)).cummax(1).values
    pos = torch.where(anchor, group - 1, group - 1 + idx - last_anchor)
    pos = torch.where(pad_mask, pos, torch.zeros_like(pos))             # padding: any position
    code = ~anchor
    same_item = code[:, :, None] & code[:, None, :] & (group[:, :, None] == group[:, None, :])
    visible = anchor[:, None, :] | same_item                                # [B, Tq, Tk]
    causal = idx[None, :] <= idx[:, None]                                   # [Tq, Tk]
    mask = causal[None] & pad_mask[:, None, :] & visible
    return pos, mask | torch.eye(T, dtype=torch.bool, device=dev)[None]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, past_k, past_v, attn_mask, history: HistoryView | None = None):
        """x [B, T, C]; past_k / past_v [B, H, T_past, Dh] or None;
        attn_mask [B, 1, T, T_past + T]. ``history``: a shared history every row also attends
        to, before its past (``SharedKVCache``). Returns (output [B, T, C], the rows' keys and
        values [B, H, T_past + T, Dh])."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # [B, H, T_past + T, Dh]
            v = torch.cat([past_v, v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if history is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        else:
            y = shared_prefix_attention(q, k, v, attn_mask, history.keys, history.values,
                                        history.mask, history.groups, dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y)), k, v


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x, past_k, past_v, attn_mask, history: HistoryView | None = None):
        a, k, v = self.attn(self.ln_1(x), past_k, past_v, attn_mask, history)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k, v


class SidGenerator(nn.Module):
    """Decoder-only transformer over SID tokens; weights of the output layer tied to the input.

    With ``cfg.history == "items"`` a history item is one input token (``SidVocab`` with
    ``n_items``): its embedding is the sum of its L code embeddings (the same table the output
    layer uses), plus a learned item-ID embedding if ``cfg.item_id_embedding``. Item tokens and
    BOS take item-level positions (BOS 0, the k-th history item k); the codes of the item being
    generated follow, one token and one position each. Training on whole sequences uses
    ``forward(..., teacher_forced=True)`` (see ``item_layout``).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, block_size: int,
                 item_code_tokens: torch.Tensor | None = None):
        """``vocab_size``: ``SidVocab.size`` (the output vocabulary); ``block_size``: the
        longest position, BOS + (max_history + 1) * L (token-level history) or
        1 + max_history + L (item-level); ``item_code_tokens`` [N, L]: the code token ids of
        every catalogue item (``vocab.code_tokens(codes)``), required for item-level history."""
        super().__init__()
        if vocab_size <= 0 or block_size <= 0:
            raise ValueError(f"vocab_size and block_size must be positive, got {vocab_size}, "
                             f"{block_size}")
        if cfg.history not in HISTORY_INPUTS:
            raise InputError(f"expected one of {HISTORY_INPUTS}, got {cfg.history!r}",
                             field="model.history")
        items = cfg.history == "items"
        if items != (item_code_tokens is not None):
            raise ValueError("item_code_tokens are needed exactly when model.history is 'items'")
        self.cfg = cfg
        self.vocab_size, self.block_size = int(vocab_size), int(block_size)
        # Decoders continue a prefill with one copy of each user's history (``SharedKVCache``)
        # when this is True; False makes them copy it per beam (``KVCache.index_select``), the
        # path of backbones that only take a ``KVCache`` (``vstar.model.interface.shares_history``).
        self.share_history = True
        if items:
            self.register_buffer("item_code_tokens", torch.as_tensor(item_code_tokens).long())
        else:
            self.item_code_tokens = None
        self.item_emb = (nn.Embedding(int(item_code_tokens.shape[0]), cfg.n_embd)
                         if items and cfg.item_id_embedding else None)
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @property
    def hidden_size(self) -> int:
        return self.cfg.n_embd

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, D]; an item token is the sum of its codes' embeddings (+ its
        item-ID embedding) (``embed_item_tokens``)."""
        if self.item_code_tokens is None:
            return self.wte(tokens)
        return embed_item_tokens(tokens, self.vocab_size, self.wte, self.item_code_tokens,
                                 self.item_emb)

    def item_layout(self, tokens: torch.Tensor, pad_mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``item_layout`` of this model's vocabulary (teacher-forced item-level sequences)."""
        return item_layout(tokens, pad_mask, self.vocab_size)

    def forward(self, tokens: torch.Tensor, cache: KVCache | SharedKVCache | None = None,
                pad_mask: torch.Tensor | None = None,
                teacher_forced: bool = False) -> GeneratorOutput:
        """tokens [B, T]; pad_mask [B, T] (True = real) for left-padded prompts; cache from a
        previous call continues those sequences (then the new tokens are all real). With a
        ``SharedKVCache`` (``share_history``) row b continues its user's shared history and
        its own suffix, and the returned cache is a ``SharedKVCache`` with the suffix extended.
        ``teacher_forced``: whole training sequences (right-padded); with item-level history
        they get ``item_layout``'s positions and mask, otherwise it changes nothing."""
        B, T = tokens.shape
        dev = tokens.device
        if pad_mask is None:
            pad_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        layout_mask = None
        if teacher_forced and self.item_code_tokens is not None:
            if cache is not None:
                raise ValueError("teacher_forced sequences are read whole, without a cache")
            pos, layout_mask = self.item_layout(tokens, pad_mask)
            full_mask, past_len = pad_mask, 0
        elif cache is None:
            pos = (pad_mask.long().cumsum(1) - 1).clamp(min=0)           # [B, T]
            full_mask = pad_mask
            past_len = 0
        else:
            pos = cache.next_pos[:, None] + (pad_mask.long().cumsum(1) - 1).clamp(min=0)
            full_mask = torch.cat([cache.mask, pad_mask], dim=1)           # [B, T_past + T]
            past_len = int(cache.mask.shape[1])             # a SharedKVCache: its suffix only
        # positions are checked on the host for whole sequences (prefill, teacher forcing) and on
        # the CPU; a cached decode step on a GPU skips it (one device wait per step otherwise):
        # its positions follow a checked prefill by at most L-1
        if (cache is None or not pos.is_cuda) and int(pos.max()) >= self.block_size:
            raise ValueError(f"sequence position {int(pos.max())} exceeds block_size "
                             f"{self.block_size}; shorten histories (data.max_history)")
        # query i (absolute past_len + i) sees real keys j <= past_len + i, and always itself
        # (so that left-padding queries never see an empty row).
        q_idx = torch.arange(T, device=dev)[:, None] + past_len
        k_idx = torch.arange(past_len + T, device=dev)[None, :]
        causal = k_idx <= q_idx                                             # [T, T_all]
        attn_mask = causal[None] & full_mask[:, None, :]                    # [B, T, T_all]
        attn_mask = attn_mask | (k_idx == q_idx)[None]
        attn_mask = attn_mask[:, None]                                      # [B, 1, T, T_all]
        if layout_mask is not None:
            attn_mask = layout_mask[:, None]

        shared = isinstance(cache, SharedKVCache)
        history = history_views(cache) if shared else [None] * len(self.blocks)
        x = self.drop(self.embed(tokens) + self.wpe(pos))
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            pk = cache.keys[i] if cache is not None else None
            pv = cache.values[i] if cache is not None else None
            x, k, v = block(x, pk, pv, attn_mask, history[i])
            keys.append(k)
            values.append(v)
        hidden = self.ln_f(x)                                               # [B, T, D]
        logits = self.lm_head(hidden)                                       # [B, T, V]
        last_pos = pos[:, -1] + 1
        if shared:
            out_cache = SharedKVCache(cache.prefix, cache.row_user, keys, values, full_mask,
                                      last_pos)
        else:
            out_cache = KVCache(keys, values, full_mask, last_pos)
        return GeneratorOutput(logits, hidden, out_cache)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def item_head_logits(model, vocab: SidVocab, hidden: torch.Tensor) -> torch.Tensor:
    """The item head: logits [..., N] of every catalogue item from hidden states [..., D],
    h . e_i with e_i item i's input embedding (``model.embed`` of its item token: the sum of its
    code embeddings plus its item-ID row). ``sft.item_loss`` trains it; beam search can fuse
    it with the code softmax (``vstar.decode.beam.beam_search``'s ``item_head``). Item-level
    history only; either backbone (both have ``embed``)."""
    items = vocab.item_tokens(torch.arange(vocab.n_items, device=hidden.device))
    table = model.embed(items[None])[0]                                      # [N, D]
    return hidden.float() @ table.float().T


def save_generator(path: str | os.PathLike, model: SidGenerator, vocab: SidVocab) -> Path:
    """Write a ``generator`` checkpoint: weights, size and the SID codebooks it was trained on."""
    return checkpoint.save_generator(path, model.state_dict(),
                                     model_config=dataclasses.asdict(model.cfg),
                                     vocab_size=model.vocab_size, block_size=model.block_size,
                                     codebook_sizes=vocab.codebook_sizes)


def load_generator(path: str | os.PathLike, vocab: SidVocab,
                   item_codes: torch.Tensor | None = None) -> SidGenerator:
    """The generator saved at ``path``, in eval mode; InputError if its SID codebooks are not
    ``vocab``'s, or (item-level history) if its items' codes are not ``item_codes`` [N, L]:
    a checkpoint trained on other SIDs would decode the wrong items."""
    ckpt = checkpoint.load_generator(path)
    if list(ckpt.codebook_sizes) != vocab.codebook_sizes:
        raise InputError(f"checkpoint SID codebooks {ckpt.codebook_sizes} differ from the "
                         f"current SIDs {vocab.codebook_sizes}", file=str(path))
    items = ckpt.state_dict.get("item_code_tokens")
    if (items is not None) != vocab.item_history:
        saved, wanted = ("items", "codes") if items is not None else ("codes", "items")
        raise InputError(f"the checkpoint was trained with model.history={saved!r}, the "
                         f"configured vocabulary is for {wanted!r}", file=str(path),
                         field="model.history")
    if items is not None and item_codes is not None and not torch.equal(
            items, vocab.code_tokens(torch.as_tensor(item_codes))):
        raise InputError("the checkpoint's item SIDs differ from the current SIDs",
                         file=str(path), field="item_code_tokens")
    try:
        model = SidGenerator(ModelConfig(**ckpt.model_config), ckpt.vocab_size, ckpt.block_size,
                             item_code_tokens=items)
        model.load_state_dict(ckpt.state_dict)
    except (TypeError, RuntimeError) as err:
        raise InputError(f"weights do not fit the saved model config ({err})",
                         file=str(path)) from None
    return model.eval()


def make_vocab(cfg: ModelConfig, codebook_sizes: list[int], n_items: int) -> SidVocab:
    """The vocabulary a generator of config ``cfg`` reads: item tokens for item-level history."""
    return SidVocab(codebook_sizes, n_items=n_items if cfg.history == "items" else 0)


def new_generator(cfg: ModelConfig, vocab: SidVocab, item_codes: torch.Tensor,
                  max_history: int) -> SidGenerator:
    """A freshly initialised generator for these SIDs (``item_codes`` [N, L]) and histories of
    at most ``max_history`` items."""
    L = vocab.n_levels
    if vocab.item_history != (cfg.history == "items"):
        raise ValueError(f"model.history={cfg.history!r} needs a vocabulary with"
                         f"{'' if cfg.history == 'items' else 'out'} item tokens (make_vocab)")
    if vocab.item_history:
        return SidGenerator(cfg, vocab.size, block_size=1 + max_history + L,
                            item_code_tokens=vocab.code_tokens(torch.as_tensor(item_codes)))
    return SidGenerator(cfg, vocab.size, block_size=1 + (max_history + 1) * L)
