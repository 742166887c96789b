"""The generator of ``model.backbone``: build, save and load either backbone through one call.

    model = new_model(cfg, vocab, item_codes, max_history)  # SidGenerator or HFSidLM
    save_model(layout.generator_for(cfg.backbone), model, vocab)
    model = load_model(layout.generator_checkpoint, vocab, item_codes)

A ``SidGenerator`` is saved as one ``generator`` safetensors file, an ``HFSidLM`` as a Hugging
Face model folder (``save_pretrained`` + the SID vocabulary); ``load_model`` tells them apart by
the path (a folder is an HF model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from vstar.core.errors import InputError
from vstar.model.config import ModelConfig
from vstar.model.generator import (SidGenerator, load_generator, make_vocab, new_generator,
                                   save_generator)
from vstar.model.hf import HFSidLM, load_hf_model, new_hf_model, save_hf_model, title_tokens
from vstar.model.vocab import SidVocab

# what the trainers and decoders get: both implement ``SidLM`` and are torch modules
SidModel = Union[SidGenerator, HFSidLM]


def make_model_vocab(cfg: ModelConfig, codebook_sizes: list[int], n_items: int,
                     item_text: list[str] | None = None) -> SidVocab:
    """The vocabulary the configured generator reads: ``make_vocab``, plus each item's title
    tokens with ``model.hf_prompt: titles`` (``item_text``: the dataset's, one per item)."""
    if cfg.hf_prompt != "titles":
        return make_vocab(cfg, codebook_sizes, n_items)
    prefix, n_text = title_tokens(cfg, item_text)
    return SidVocab(codebook_sizes, n_items=n_items, item_prefix=prefix, n_text=n_text)


def new_model(cfg: ModelConfig, vocab: SidVocab, item_codes: torch.Tensor,
              max_history: int) -> SidModel:
    """A freshly initialised generator of ``cfg.backbone`` for these SIDs (``item_codes``
    [N, L]) and histories of at most ``max_history`` items."""
    if cfg.backbone == "hf":
        return new_hf_model(cfg, vocab, max_history,
                            item_codes if cfg.history == "items" else None)
    if cfg.backbone != "vstar":
        raise InputError(f"expected 'vstar' or 'hf', got {cfg.backbone!r}", field="model.backbone")
    return new_generator(cfg, vocab, item_codes, max_history)


def save_model(path: str | os.PathLike, model: SidModel, vocab: SidVocab) -> Path:
    """``model`` at ``path``: a safetensors file (``SidGenerator``) or an HF folder
    (``HFSidLM``)."""
    if isinstance(model, HFSidLM):
        return save_hf_model(path, model, vocab)
    return save_generator(path, model, vocab)


def load_model(path: str | os.PathLike, vocab: SidVocab,
               item_codes: torch.Tensor | None = None) -> SidModel:
    """The generator saved at ``path`` (an HF folder or a safetensors file), in eval mode."""
    if Path(path).is_dir():
        return load_hf_model(path, vocab, item_codes)
    return load_generator(path, vocab, item_codes)
