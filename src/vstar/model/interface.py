"""The small surface decoding and RL need from a generator, so another backbone can replace ours."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from vstar.model.cache import KVCache, SharedKVCache
from vstar.model.generator import GeneratorOutput


@runtime_checkable
class SidLM(Protocol):
    """What beam search, sampling, VED and the RL trainer call.

    A Hugging Face causal LM with added SID tokens fits behind a thin wrapper that maps
    ``past_key_values`` to ``KVCache`` and returns the last hidden layer as ``hidden``.
    A model whose ``share_history`` attribute is True also takes a ``SharedKVCache`` (one copy
    of each user's history, per-row caches of the generated codes) and returns one; decoders use
    it then (``rows_cache``), and the per-row ``KVCache`` otherwise.
    """

    @property
    def hidden_size(self) -> int: ...

    def __call__(self, tokens: torch.Tensor, cache: KVCache | SharedKVCache | None = None,
                 pad_mask: torch.Tensor | None = None) -> GeneratorOutput: ...


def shares_history(model: SidLM) -> bool:
    """True if ``model`` takes a ``SharedKVCache`` (``SidGenerator.share_history``)."""
    return bool(getattr(model, "share_history", False))


def rows_cache(model: SidLM, history: KVCache, row_user: torch.Tensor
               ) -> KVCache | SharedKVCache:
    """The cache of N decoding rows that continue a prefill, row n after user ``row_user[n]``'s
    history (beams or samples): a ``SharedKVCache`` with one copy of each history if the model
    shares histories, else the per-row copies ``history.index_select(row_user)``."""
    if shares_history(model):
        return SharedKVCache.repeat(history, row_user)
    return history.index_select(row_user)


def model_cache(model: SidLM, cache: SharedKVCache) -> KVCache | SharedKVCache:
    """``cache`` as ``model`` takes it: itself if the model shares histories, else the per-row
    ``KVCache`` it stands for (``SharedKVCache.materialize``)."""
    return cache if shares_history(model) else cache.materialize()
