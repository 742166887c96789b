"""The SID generator: a small decoder-only causal transformer with a KV cache (nanoGPT-like).

Everything downstream (beam search, VED, RL) talks to it through one call::

    out = model(tokens, cache=None, pad_mask=None)   # GeneratorOutput(logits, hidden, cache)

``hidden`` is the last layer's (post-norm) state the value head reads; ``cache`` holds keys and
values so that decoding feeds one token per step. A Hugging Face causal LM with added SID tokens can
take this model's place by implementing the same call (see ``SidLM`` in ``interface.py``).

    model = SidGenerator(ModelConfig(), vocab_size=vocab.size, block_size=1 + 21 * vocab.n_levels)
    save_generator(path, model, vocab)          # a ``generator`` checkpoint (vstar.core.checkpoint)
    model = load_generator(path, vocab)         # checks the SID codebooks match
"""

from __future__ import annotations

import math
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vstar.core import checkpoint
from vstar.core.errors import InputError
from vstar.model.config import ModelConfig
from vstar.model.vocab import SidVocab


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    keys[i], values[i]: [B, H, T, Dh]; mask: [B, T] (True = real token, False = left padding);
    next_pos: [B] position id the next token gets.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    next_pos: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def index_select(self, idx: torch.Tensor) -> "KVCache":
        """Rows ``idx`` of the batch (repeat a user's cache over beams, reorder beams)."""
        return KVCache([k.index_select(0, idx) for k in self.keys],
                       [v.index_select(0, idx) for v in self.values],
                       self.mask.index_select(0, idx), self.next_pos.index_select(0, idx))


@dataclass
class GeneratorOutput:
    logits: torch.Tensor  # [B, T, V]
    hidden: torch.Tensor  # [B, T, D]
    cache: KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, past_k, past_v, attn_mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # [B, H, T_past + T, Dh]
            v = torch.cat([past_v, v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
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

    def forward(self, x, past_k, past_v, attn_mask):
        a, k, v = self.attn(self.ln_1(x), past_k, past_v, attn_mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k, v


class SidGenerator(nn.Module):
    """Decoder-only transformer over SID tokens; weights of the output layer tied to the input."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, block_size: int):
        """``vocab_size``: ``SidVocab.size``; ``block_size``: the longest token sequence,
        BOS + (max_history + 1) * L."""
        super().__init__()
        if vocab_size <= 0 or block_size <= 0:
            raise ValueError(f"vocab_size and block_size must be positive, got {vocab_size}, "
                             f"{block_size}")
        self.cfg = cfg
        self.vocab_size, self.block_size = int(vocab_size), int(block_size)
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

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None,
                pad_mask: torch.Tensor | None = None) -> GeneratorOutput:
        """tokens [B, T]; pad_mask [B, T] (True = real) for left-padded prompts; cache from a
        previous call continues those sequences (then the new tokens are all real)."""
        B, T = tokens.shape
        dev = tokens.device
        if pad_mask is None:
            pad_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        if cache is None:
            pos = (pad_mask.long().cumsum(1) - 1).clamp(min=0)           # [B, T]
            full_mask = pad_mask
            past_len = 0
        else:
            pos = cache.next_pos[:, None] + (pad_mask.long().cumsum(1) - 1).clamp(min=0)
            full_mask = torch.cat([cache.mask, pad_mask], dim=1)           # [B, T_past + T]
            past_len = cache.length
        if int(pos.max()) >= self.block_size:
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

        x = self.drop(self.wte(tokens) + self.wpe(pos))
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            pk = cache.keys[i] if cache is not None else None
            pv = cache.values[i] if cache is not None else None
            x, k, v = block(x, pk, pv, attn_mask)
            keys.append(k)
            values.append(v)
        hidden = self.ln_f(x)                                               # [B, T, D]
        logits = self.lm_head(hidden)                                       # [B, T, V]
        last_pos = pos[:, -1] + 1
        return GeneratorOutput(logits, hidden, KVCache(keys, values, full_mask, last_pos))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_generator(path: str | os.PathLike, model: SidGenerator, vocab: SidVocab) -> Path:
    """Write a ``generator`` checkpoint: weights, size and the SID codebooks it was trained on."""
    return checkpoint.save_generator(path, model.state_dict(),
                                     model_config=dataclasses.asdict(model.cfg),
                                     vocab_size=model.vocab_size, block_size=model.block_size,
                                     codebook_sizes=vocab.codebook_sizes)


def load_generator(path: str | os.PathLike, vocab: SidVocab) -> SidGenerator:
    """The generator saved at ``path``, in eval mode; InputError if its SID codebooks are not
    ``vocab``'s (a checkpoint trained on other SIDs would decode the wrong items)."""
    ckpt = checkpoint.load_generator(path)
    if list(ckpt.codebook_sizes) != vocab.codebook_sizes:
        raise InputError(f"checkpoint SID codebooks {ckpt.codebook_sizes} differ from the "
                         f"current SIDs {vocab.codebook_sizes}", file=str(path))
    try:
        model = SidGenerator(ModelConfig(**ckpt.model_config), ckpt.vocab_size, ckpt.block_size)
        model.load_state_dict(ckpt.state_dict)
    except (TypeError, RuntimeError) as err:
        raise InputError(f"weights do not fit the saved model config ({err})",
                         file=str(path)) from None
    return model.eval()
