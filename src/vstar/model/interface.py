"""The small surface decoding and RL need from a generator, so another backbone can replace ours."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from vstar.model.generator import GeneratorOutput, KVCache


@runtime_checkable
class SidLM(Protocol):
    """What beam search, sampling, VED and the RL trainer call.

    A Hugging Face causal LM with added SID tokens fits behind a thin wrapper that maps
    ``past_key_values`` to ``KVCache`` and returns the last hidden layer as ``hidden``.
    """

    @property
    def hidden_size(self) -> int: ...

    def __call__(self, tokens: torch.Tensor, cache: KVCache | None = None,
                 pad_mask: torch.Tensor | None = None) -> GeneratorOutput: ...
