"""A Hugging Face causal LM behind ``SidLM``: the same call as ``SidGenerator``, any backbone.

    model = new_hf_model(cfg, vocab, max_history)   # cfg.backbone == "hf"
    out = model(tokens, cache=None, pad_mask=None)  # GeneratorOutput(logits, hidden, cache)
    save_hf_model(folder, model, vocab)             # save_pretrained + sid_vocab.json
    model = load_hf_model(folder, vocab)            # AutoModelForCausalLM.from_pretrained

**Tokens.** vstar's vocabulary (``SidVocab``: PAD, BOS, one token per SID code) is a block of
``sid_vocab_size`` rows of the HF embedding table starting at ``token_offset``: 0 for a model
built from a config (its whole vocabulary is the SID vocabulary), the original vocabulary size
for a pretrained model (the SID tokens are appended and the embeddings resized). vstar token t
is HF token ``token_offset + t``; the logits returned are those of the SID block only, computed
from the last hidden state with the matching rows of the output embedding (a pretrained model's
text vocabulary is never scored: decoding never looks outside the codes).

**Item-level history** (``model.history: items``, as ``SidGenerator``): a history item is one
input token (ids from ``sid_vocab_size`` on, ``SidVocab.item_tokens``), embedded as the sum of
its L code tokens' input embeddings plus, with ``model.item_id_embedding``, a learned item-ID
embedding (``embed_item_tokens``, shared with ``SidGenerator``); the model then reads
``inputs_embeds``. Item tokens are input only: the logits stay those of the SID block.
Teacher-forced training (``forward(..., teacher_forced=True)``) uses ``item_layout``'s positions
and mask, passed as ``position_ids`` and a 4-d additive float mask (transformers uses a 4-d mask
as given); decoding reads a prompt ``BOS <i_1>..<i_n>`` at positions 0..n and then the codes,
through the cache as with token-level history. The item code table and the item-ID embedding
are saved beside the HF weights (``sid_items.safetensors``).

**Text prompts** (``model.hf_prompt: titles``): each history item token is preceded by the first
``model.hf_title_tokens`` tokens of its item text (``title_tokens``; vstar ids from
``SidVocab.text_start``). A text token is embedded with the HF row ``text_offset + w``: the
model's own text rows for a pretrained model (offset 0, its tokenizer), rows appended after the
SID block for a model built from a config (offset ``sid_vocab_size``). Text tokens are anchors
of ``item_layout`` like item tokens: later items' codes see them, their own item's codes do not.

**Cache.** ``past_key_values`` is a ``DynamicCache`` built from a ``KVCache``'s per-layer keys
and values ([B, H_kv, T, Dh]) and read back after the call; the cache's mask is the HF
``attention_mask`` (left padding and VED's masked ancestors are zeros) and its ``next_pos``
gives explicit ``position_ids``, exactly as ``SidGenerator`` numbers positions (a padded prompt
position counts nothing).

**Shared history.** For the families in ``SHARED_HISTORY_FAMILIES`` (Qwen2, Llama, GPT-2: their
attention layers call the function named by ``config._attn_implementation``) the wrapper takes a
``SharedKVCache`` as ``SidGenerator`` does (``share_history = True``): the ``DynamicCache`` then
holds only the rows' own suffix keys/values, the 4-d mask over them is built here, and for the
duration of the call the model's attention is ``_shared_history_attention`` (registered with
transformers' ``AttentionInterface``), which runs ``shared_prefix_attention`` over [the user's
history, read once per user | the row's suffix] (``history_views``, passed down as the
``vstar_history`` keyword). Beam search then never copies a history per beam. Other families
(or a sliding-window / cross-attention config) keep ``share_history = False`` with a log line:
decoders give them per-row caches (``vstar.model.interface.rows_cache``), and a
``SharedKVCache`` passed anyway is materialised. Setting ``share_history = False`` on a
supported model takes the per-row path too (the reference the tests compare against).

**Hidden.** The base model's last hidden state (after its final norm) is ``hidden``, the state
the value head reads (``vstar.model.value``).

Nothing is downloaded: a pretrained model is read from a local folder (``local_files_only``);
tests build tiny random Qwen2 / Llama / GPT-2 models from configs. ``transformers`` is imported
when a model is built or loaded, not when vstar is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vstar.core import checkpoint
from vstar.core.errors import InputError
from vstar.model.cache import KVCache, SharedKVCache, history_views, shared_prefix_attention
from vstar.model.config import ModelConfig
from vstar.model.generator import GeneratorOutput, embed_item_tokens, item_layout
from vstar.model.vocab import BOS, PAD, SidVocab

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config attributes that would change the logits after the output layer: the wrapper computes
# the SID logits itself, so a model using one is refused rather than scored wrongly
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")
# dropout attributes of the common configs, set from model.dropout when built from a config
_DROPOUTS = ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout")
# families whose attention layers apply positions before the cache and call the registered
# attention function with (module, q, k, v, 4-d mask, dropout, scaling, **kwargs): checked by
# tests/model/test_model_hf.py against the per-row path
SHARED_HISTORY_FAMILIES = ("qwen2", "llama", "gpt2")
_SHARED_ATTENTION = "vstar_shared_history"


class HFSidLM(nn.Module):
    """``SidLM`` over a ``transformers`` causal LM (``lm``) with the SID vocabulary at
    ``token_offset`` (module docstring)."""

    def __init__(self, lm: nn.Module, cfg: ModelConfig, sid_vocab_size: int,
                 token_offset: int = 0, item_code_tokens: torch.Tensor | None = None,
                 n_text: int = 0, text_offset: int = 0, item_prefix: list | None = None):
        """``item_code_tokens`` [N, L]: the code token ids (vstar ids, ``vocab.code_tokens``) of
        every catalogue item, required exactly when ``cfg.history == "items"``; ``n_text``
        text tokens (``SidVocab.n_text``, text prompts) at HF rows from ``text_offset``;
        ``item_prefix``: the vocabulary's text before each item (kept, and saved, as the
        ``item_prefix_tokens`` table so that a load can check it)."""
        super().__init__()
        if n_text and (item_code_tokens is None or text_offset < 0
                       or text_offset + n_text > lm.get_input_embeddings().num_embeddings):
            raise ValueError(f"{n_text} text tokens at row {text_offset} need item tokens and "
                             "must fit the model's embedding rows")
        if (cfg.history == "items") != (item_code_tokens is not None):
            raise ValueError("item_code_tokens are needed exactly when model.history is 'items'")
        n_rows = lm.get_input_embeddings().num_embeddings
        if token_offset < 0 or token_offset + sid_vocab_size > n_rows:
            raise ValueError(f"SID tokens [{token_offset}, {token_offset + sid_vocab_size}) do "
                             f"not fit the model's {n_rows} embedding rows")
        text_cfg = lm.config.get_text_config()
        used = [a for a in _LOGIT_TRANSFORMS if getattr(text_cfg, a, None) not in (None, 1, 1.0)]
        if used:
            raise InputError(f"the {text_cfg.model_type} model transforms its logits ({used}); "
                             "the HF backbone scores SID tokens from the last hidden state and "
                             "does not support that", field="model.hf_name_or_path")
        self.lm = lm
        self.cfg = cfg
        self.sid_vocab_size = int(sid_vocab_size)
        self.token_offset = int(token_offset)
        self.max_positions = getattr(text_cfg, "max_position_embeddings", None)
        self.n_text, self.text_offset = int(n_text), int(text_offset)
        if item_prefix is not None:
            self.register_buffer("item_prefix_tokens", prefix_table(item_prefix))
        if item_code_tokens is not None:
            self.register_buffer("item_code_tokens", torch.as_tensor(item_code_tokens).long())
        else:
            self.item_code_tokens = None
        self.item_emb = None
        if item_code_tokens is not None and cfg.item_id_embedding:
            table = lm.get_input_embeddings().weight
            self.item_emb = nn.Embedding(int(item_code_tokens.shape[0]), table.shape[1],
                                         device=table.device, dtype=table.dtype)
            nn.init.normal_(self.item_emb.weight, mean=0.0,
                            std=float(getattr(text_cfg, "initializer_range", 0.02)))
        # True: takes a SharedKVCache (vstar.model.interface.shares_history; module docstring)
        reason = _shared_history_unsupported(lm)
        self.share_history = reason is None
        if reason is not None:
            log.info("HF backbone %s: no shared-history cache (%s); decoders copy each "
                     "user's history per beam", text_cfg.model_type, reason)

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        """vstar's output vocabulary (``SidVocab.size``), as ``SidGenerator.vocab_size``."""
        return self.sid_vocab_size

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, T, D] of vstar tokens: the HF rows at ``token_offset``; an item
        token the sum of its codes' rows (+ its item-ID embedding; ``embed_item_tokens``)."""
        table = self.lm.get_input_embeddings()

        def rows(t: torch.Tensor) -> torch.Tensor:
            return table(t + self.token_offset)

        if self.item_code_tokens is None:
            return rows(tokens)
        if not self.n_text:
            return embed_item_tokens(tokens, self.sid_vocab_size, rows, self.item_code_tokens,
                                     self.item_emb)
        start = self.sid_vocab_size + int(self.item_code_tokens.shape[0])   # SidVocab.text_start
        text = tokens >= start
        x = embed_item_tokens(tokens.masked_fill(text, 0), self.sid_vocab_size, rows,
                              self.item_code_tokens, self.item_emb)
        where = text.nonzero(as_tuple=True)
        if where[0].numel():
            x = x.index_put(where, table(tokens[where] - start + self.text_offset))
        return x

    def _inputs(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The token keyword of the HF call: ``input_ids`` (token-level history, the model's
        own embedding) or ``inputs_embeds`` (item tokens have no row of their own)."""
        if self.item_code_tokens is None:
            return {"input_ids": tokens + self.token_offset}
        return {"inputs_embeds": self.embed(tokens)}

    def sid_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., sid_vocab_size] (float32) of the SID tokens from hidden states."""
        out = self.lm.get_output_embeddings()
        rows = slice(self.token_offset, self.token_offset + self.sid_vocab_size)
        bias = out.bias[rows] if getattr(out, "bias", None) is not None else None
        return F.linear(hidden, out.weight[rows], bias).float()

    def forward(self, tokens: torch.Tensor, cache: KVCache | SharedKVCache | None = None,
                pad_mask: torch.Tensor | None = None,
                teacher_forced: bool = False) -> GeneratorOutput:
        """tokens [B, T] (vstar ids); pad_mask [B, T] (True = real) for padded prompts; cache
        from a previous call continues those sequences (its new tokens are all real).
        ``teacher_forced``: whole training sequences (right-padded); with item-level history
        they get ``item_layout``'s positions and mask, otherwise it changes nothing (as
        ``SidGenerator.forward``)."""
        from transformers import DynamicCache

        B, T = tokens.shape
        dev = tokens.device
        if pad_mask is None:
            pad_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        if teacher_forced and self.item_code_tokens is not None:
            if cache is not None:
                raise ValueError("teacher_forced sequences are read whole, without a cache")
            return self._forward_layout(tokens, pad_mask)
        if isinstance(cache, SharedKVCache):
            if self.share_history:
                return self._forward_shared(tokens, cache, pad_mask)
            cache = cache.materialize()
        step = (pad_mask.long().cumsum(1) - 1).clamp(min=0)                 # [B, T]
        if cache is None:
            pos, full_mask, past = step, pad_mask, DynamicCache()
        else:
            pos = cache.next_pos[:, None] + step
            full_mask = torch.cat([cache.mask, pad_mask], dim=1)
            past = _dynamic_cache(cache)
        self._check_positions(pos)
        out = self.lm.base_model(**self._inputs(tokens),
                                 attention_mask=full_mask.long(), position_ids=pos,
                                 past_key_values=past, use_cache=True)
        hidden = out.last_hidden_state                                       # [B, T, D]
        layers = out.past_key_values.layers
        new_cache = KVCache([layer.keys for layer in layers], [layer.values for layer in layers],
                            full_mask, pos[:, -1] + 1)
        return GeneratorOutput(self.sid_logits(hidden), hidden, new_cache)

    def _forward_layout(self, tokens: torch.Tensor, pad_mask: torch.Tensor) -> GeneratorOutput:
        """Teacher-forced item-level sequences: ``item_layout``'s positions, and its mask as a
        4-d additive float mask (0 = attend; transformers passes a 4-d mask through as given,
        and both its eager and SDPA attention add a float mask)."""
        from transformers import DynamicCache

        pos, layout = item_layout(tokens, pad_mask, self.sid_vocab_size)
        self._check_positions(pos)
        inputs = self._inputs(tokens)
        dtype = inputs["inputs_embeds"].dtype
        attn = torch.zeros(layout.shape, dtype=dtype, device=tokens.device)
        attn = attn.masked_fill(~layout, torch.finfo(dtype).min)[:, None]   # [B, 1, T, T]
        out = self.lm.base_model(**inputs, attention_mask=attn, position_ids=pos,
                                 past_key_values=DynamicCache(), use_cache=True)
        hidden = out.last_hidden_state                                       # [B, T, D]
        layers = out.past_key_values.layers
        new_cache = KVCache([layer.keys for layer in layers], [layer.values for layer in layers],
                            pad_mask, pos[:, -1] + 1)
        return GeneratorOutput(self.sid_logits(hidden), hidden, new_cache)

    def _check_positions(self, pos: torch.Tensor) -> None:
        if self.max_positions is not None and int(pos.max()) >= self.max_positions:
            raise ValueError(f"sequence position {int(pos.max())} exceeds the model's "
                             f"max_position_embeddings {self.max_positions}; shorten histories "
                             "(data.max_history) or raise model.hf_config.max_position_embeddings")

    def _forward_shared(self, tokens: torch.Tensor, cache: SharedKVCache,
                        pad_mask: torch.Tensor) -> GeneratorOutput:
        """``forward`` continuing a ``SharedKVCache``: the model sees only the rows' suffix
        cache; every layer's attention adds the user's history (``_shared_history_attention``).
        The mask is ``SidGenerator``'s: query i sees the real suffix keys up to itself, and
        always itself."""
        B, T = tokens.shape
        dev = tokens.device
        pos = cache.next_pos[:, None] + (pad_mask.long().cumsum(1) - 1).clamp(min=0)
        self._check_positions(pos)
        full_mask = torch.cat([cache.mask, pad_mask], dim=1)                # [B, t + T]
        t = cache.suffix_length
        q_idx = torch.arange(T, device=dev)[:, None] + t
        k_idx = torch.arange(t + T, device=dev)[None, :]
        attn = ((k_idx <= q_idx)[None] & full_mask[:, None, :]) | (k_idx == q_idx)[None]
        past = _dynamic_cache(KVCache(cache.keys, cache.values, cache.mask, cache.next_pos))
        with _attention_implementation(self.lm, _SHARED_ATTENTION):
            out = self.lm.base_model(**self._inputs(tokens),
                                     attention_mask=attn[:, None], position_ids=pos,
                                     past_key_values=past, use_cache=True,
                                     vstar_history=history_views(cache))
        hidden = out.last_hidden_state                                       # [B, T, D]
        layers = out.past_key_values.layers
        new_cache = SharedKVCache(cache.prefix, cache.row_user, [layer.keys for layer in layers],
                                  [layer.values for layer in layers], full_mask, pos[:, -1] + 1)
        return GeneratorOutput(self.sid_logits(hidden), hidden, new_cache)


def _shared_history_unsupported(lm: nn.Module) -> str | None:
    """Why ``lm`` cannot take a ``SharedKVCache`` (None if it can)."""
    cfg = lm.config.get_text_config()
    if cfg.model_type not in SHARED_HISTORY_FAMILIES:
        return f"model_type {cfg.model_type!r} is not one of {SHARED_HISTORY_FAMILIES}"
    if getattr(cfg, "add_cross_attention", False) or getattr(cfg, "is_encoder_decoder", False):
        return "cross-attention"
    if getattr(cfg, "use_sliding_window", False) or "sliding_attention" in (
            getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention"
    if getattr(cfg, "reorder_and_upcast_attn", False):
        return "reorder_and_upcast_attn"
    return None


def _shared_history_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: torch.Tensor | None,
                              dropout: float = 0.0, scaling: float | None = None,
                              vstar_history: list | None = None, **kwargs: Any
                              ) -> tuple[torch.Tensor, None]:
    """The attention function of ``HFSidLM._forward_shared`` (transformers' signature):
    query [N, Hq, T, Dh]; key, value [N, Hkv, S, Dh] (the rows' suffix and new tokens);
    attention_mask [N, 1, T, S] bool. Grouped-query heads attend as one [Hkv, g*T] block of
    queries per key head. Returns ([N, T, Hq, Dh], no weights)."""
    if vstar_history is None or attention_mask is None:
        raise RuntimeError("the shared-history attention runs only inside HFSidLM's "
                           "SharedKVCache call (vstar_history and a 4-d mask are required)")
    view = vstar_history[module.layer_idx]
    N, Hq, T, Dh = query.shape
    Hkv = key.shape[1]
    g = Hq // Hkv
    mask = attention_mask.expand(N, 1, T, key.shape[2])
    if g > 1:                # head h reads key head h // g: [N, Hkv, g, T] -> [N, Hkv, g*T]
        query = query.reshape(N, Hkv, g * T, Dh)
        mask = mask.repeat(1, 1, g, 1)
    y = shared_prefix_attention(query, key, value, mask, view.keys, view.values, view.mask,
                                view.groups, dropout, scale=scaling)
    return y.reshape(N, Hq, T, Dh).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def _attention_implementation(lm: nn.Module, name: str):
    """``lm``'s attention layers call ``name``'s function inside the block (registered on
    first use), their own implementation again after it."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _shared_history_attention)
    before = lm.config._attn_implementation
    lm.config._attn_implementation = name
    try:
        yield
    finally:
        lm.config._attn_implementation = before


def _dynamic_cache(cache: KVCache) -> Any:
    """A ``DynamicCache`` holding ``cache``'s tensors themselves. ``DynamicCache(ddp_cache_data)``
    would copy every layer (a concatenation onto an empty tensor): with per-beam caches that
    copy was a third of beam search's time. Falls back to it if the layer class differs."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    past = DynamicCache()
    if not hasattr(past, "layers") or not hasattr(DynamicLayer, "lazy_initialization"):
        return DynamicCache(ddp_cache_data=list(zip(cache.keys, cache.values)))
    for k, v in zip(cache.keys, cache.values):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)          # dtype, device, initialised
        layer.keys, layer.values = k, v
        past.layers.append(layer)
    return past


def _dtype(cfg: ModelConfig) -> torch.dtype:
    if cfg.dtype not in DTYPES:
        raise InputError(f"expected one of {sorted(DTYPES)}, got {cfg.dtype!r}",
                         field="model.dtype")
    return DTYPES[cfg.dtype]


def build_hf_config(cfg: ModelConfig, sid_vocab_size: int, max_positions: int,
                    extra_rows: int = 0) -> Any:
    """The ``transformers`` config of a model built from scratch: ``model.hf_config`` (its
    ``model_type`` and any attribute overrides) over vstar's sizes (n_layer, n_head, n_embd,
    4 x n_embd feed-forward, model.dropout), the SID vocabulary with PAD/BOS (+ ``extra_rows``
    text rows after it), tied input and output embeddings (as ``SidGenerator``) and
    ``max_positions`` positions."""
    from transformers import AutoConfig

    over = dict(cfg.hf_config)
    model_type = over.pop("model_type", None)
    if not model_type:
        raise InputError("expected a model_type (qwen2, llama, gpt2, ...)",
                         field="model.hf_config.model_type")
    for name in ("vocab_size", "pad_token_id", "bos_token_id"):
        if name in over:
            raise InputError("set by the SID vocabulary, not configurable",
                             field=f"model.hf_config.{name}")
    try:
        base = AutoConfig.for_model(model_type)
    except ValueError as err:
        raise InputError(f"unknown model_type {model_type!r} ({str(err).splitlines()[0]})",
                         field="model.hf_config.model_type") from None
    sizes = {"hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
             "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head,
             "intermediate_size": 4 * cfg.n_embd, "max_position_embeddings": max_positions,
             **{name: cfg.dropout for name in _DROPOUTS}}
    kwargs = {k: v for k, v in sizes.items() if hasattr(base, k)}
    kwargs.update(vocab_size=sid_vocab_size + extra_rows, pad_token_id=PAD, bos_token_id=BOS,
                  eos_token_id=None, tie_word_embeddings=True)
    kwargs.update(over)
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"invalid {model_type} config ({str(err).splitlines()[0]})",
                         field="model.hf_config") from None


def _local_folder(path: str | os.PathLike, field: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError("expected a local Hugging Face model folder with config.json "
                         "(vstar never downloads models)", file=str(folder), field=field)
    return folder


def new_hf_model(cfg: ModelConfig, vocab: SidVocab, max_history: int,
                 item_codes: torch.Tensor | None = None) -> HFSidLM:
    """A Hugging Face backbone for these SIDs: the pretrained model at ``model.hf_name_or_path``
    with the SID tokens appended (embeddings resized; ``model.hf_config`` overrides its config),
    or a randomly initialised one built by ``build_hf_config``; in ``model.dtype``. With
    ``model.history: items`` (a vocabulary with item tokens, ``make_vocab``) ``item_codes``
    [N, L] are every item's codes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    items = cfg.history == "items"
    if vocab.item_history != items:
        raise ValueError(f"model.history={cfg.history!r} needs a vocabulary with"
                         f"{'' if items else 'out'} item tokens (make_vocab)")
    if (cfg.hf_prompt == "titles") != (vocab.item_prefix is not None):
        raise ValueError(f"model.hf_prompt={cfg.hf_prompt!r} needs a vocabulary with"
                         f"{'' if cfg.hf_prompt == 'titles' else 'out'} item text "
                         "(vstar.model.backbone.make_model_vocab)")
    if items and item_codes is None:
        raise ValueError("model.history='items' needs every item's codes (item_codes)")
    item_tokens = vocab.code_tokens(torch.as_tensor(item_codes)) if items else None
    dtype = _dtype(cfg)
    if cfg.hf_name_or_path:
        folder = _local_folder(cfg.hf_name_or_path, "model.hf_name_or_path")
        over = {k: v for k, v in cfg.hf_config.items() if k != "model_type"}
        config = AutoConfig.from_pretrained(folder, local_files_only=True, **over)
        lm = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype,
                                                  local_files_only=True)
        offset = lm.get_input_embeddings().num_embeddings
        if vocab.n_text > offset:
            raise InputError(f"the tokenizer has {vocab.n_text} tokens, the model only "
                             f"{offset} text rows", field="model.hf_tokenizer")
        lm.resize_token_embeddings(offset + vocab.size)
        text_offset = 0
    else:
        L = vocab.n_levels                                    # as SidGenerator's block_size
        per_item = 1 + (cfg.hf_title_tokens if vocab.item_prefix is not None else 0)
        block = 1 + max_history * per_item + L if items else 1 + (max_history + 1) * L
        config = build_hf_config(cfg, vocab.size, block, extra_rows=vocab.n_text)
        lm = AutoModelForCausalLM.from_config(config).to(dtype)
        offset, text_offset = 0, vocab.size
    return HFSidLM(lm, cfg, vocab.size, offset, item_code_tokens=item_tokens,
                   n_text=vocab.n_text, text_offset=text_offset, item_prefix=vocab.item_prefix)


def save_hf_model(path: str | os.PathLike, model: HFSidLM, vocab: SidVocab) -> Path:
    """The model in the Hugging Face layout (``save_pretrained``: config.json,
    model.safetensors) plus ``sid_vocab.json`` (``vstar.core.checkpoint.save_hf_generator``)."""
    extra = {k: v for k, v in model.state_dict().items() if not k.startswith("lm.")}
    return checkpoint.save_hf_generator(
        path, lambda folder: model.lm.save_pretrained(folder),
        codebook_sizes=vocab.codebook_sizes, token_offset=model.token_offset,
        sid_vocab_size=model.sid_vocab_size, model_config=dataclasses.asdict(model.cfg),
        extra_state=extra)


def load_hf_model(path: str | os.PathLike, vocab: SidVocab,
                  item_codes: torch.Tensor | None = None) -> HFSidLM:
    """The model ``save_hf_model`` wrote, in eval mode; InputError if its SID vocabulary is not
    ``vocab``'s, or (item-level history) if its items' codes are not ``item_codes`` [N, L]: a
    model trained on other SIDs would decode the wrong items."""
    from transformers import AutoModelForCausalLM

    ckpt = checkpoint.load_hf_generator(path)
    if ckpt.codebook_sizes != vocab.codebook_sizes or ckpt.sid_vocab_size != vocab.size:
        raise InputError(f"checkpoint SID codebooks {ckpt.codebook_sizes} differ from the "
                         f"current SIDs {vocab.codebook_sizes}", file=str(path))
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in ckpt.model_config.items() if k in fields})
    items = ckpt.extra_state.get("item_code_tokens")
    if (cfg.history == "items") != (items is not None):
        raise InputError(f"the model config says model.history={cfg.history!r} but the folder "
                         f"{'has' if items is not None else 'lacks'} the item code table "
                         f"({checkpoint.HF_ITEMS_FILE})", file=str(path), field="model.history")
    if (items is not None) != vocab.item_history:
        saved, wanted = ("items", "codes") if items is not None else ("codes", "items")
        raise InputError(f"the checkpoint was trained with model.history={saved!r}, the "
                         f"configured vocabulary is for {wanted!r}", file=str(path),
                         field="model.history")
    if items is not None and (items.shape[0] != vocab.n_items or (
            item_codes is not None and not torch.equal(
                items, vocab.code_tokens(torch.as_tensor(item_codes))))):
        raise InputError("the checkpoint's item SIDs differ from the current SIDs",
                         file=str(path), field="item_code_tokens")
    if (cfg.hf_prompt == "titles") != (vocab.item_prefix is not None):
        raise InputError(f"the checkpoint was trained with model.hf_prompt={cfg.hf_prompt!r}, "
                         "the configured vocabulary "
                         f"{'lacks' if cfg.hf_prompt == 'titles' else 'has'} item text",
                         file=str(path), field="model.hf_prompt")
    saved = ckpt.extra_state.get("item_prefix_tokens")
    if vocab.item_prefix is not None and (
            saved is None or not torch.equal(saved, prefix_table(vocab.item_prefix))):
        raise InputError("the checkpoint's item titles differ from the current item text "
                         "tokenised now (another tokenizer, hf_title_tokens or dataset?)",
                         file=str(path), field="model.hf_tokenizer")
    lm = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=_dtype(cfg),
                                              local_files_only=True)
    # text rows: the model's own (pretrained, SID block appended) or after the SID block
    text_offset = 0 if ckpt.token_offset > 0 else ckpt.sid_vocab_size
    model = HFSidLM(lm, cfg, ckpt.sid_vocab_size, ckpt.token_offset, item_code_tokens=items,
                    n_text=vocab.n_text, text_offset=text_offset, item_prefix=vocab.item_prefix)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("lm.")}
    if set(own) != set(ckpt.extra_state):
        raise InputError(f"the folder's item tensors {sorted(ckpt.extra_state)} do not fit the "
                         f"model config (expected {sorted(own)})", file=str(path),
                         field="model.item_id_embedding")
    model.load_state_dict(ckpt.extra_state, strict=False)
    return model.eval()


def prefix_table(item_prefix: list) -> torch.Tensor:
    """The text before each item (``SidVocab.item_prefix``) as one tensor [N, W] (W the longest,
    at least 1), padded with -1: what a saved model records of its prompts."""
    width = max([len(w) for w in item_prefix] + [1])
    table = torch.full((len(item_prefix), width), -1, dtype=torch.long)
    for i, w in enumerate(item_prefix):
        table[i, :len(w)] = torch.as_tensor(w, dtype=torch.long)
    return table


def title_tokens(cfg: ModelConfig, item_text: list[str] | None) -> tuple[list[np.ndarray], int]:
    """The text prompt of every item (``model.hf_prompt: titles``): the first
    ``model.hf_title_tokens`` tokenizer ids of its item text (the loaders put the title first),
    no special tokens; and the tokenizer's vocabulary size. The tokenizer is read from the local
    folder ``model.hf_tokenizer`` (else ``model.hf_name_or_path``); nothing is downloaded."""
    from transformers import AutoTokenizer

    if not item_text:
        raise InputError("expected item text for the titles: the dataset has none (a "
                         "loader with item text fields or data.text_cols)",
                         field="model.hf_prompt")
    field = "model.hf_tokenizer" if cfg.hf_tokenizer.strip() else "model.hf_name_or_path"
    name = cfg.hf_tokenizer.strip() or cfg.hf_name_or_path.strip()
    if not name:
        raise InputError("expected a local tokenizer folder for model.hf_prompt=titles",
                         field="model.hf_tokenizer")
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise InputError("expected a local tokenizer folder (vstar never downloads)",
                         file=str(folder), field=field)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"no tokenizer could be read ({str(err).splitlines()[0]})",
                         file=str(folder), field=field) from None
    ids = tokenizer(list(item_text), add_special_tokens=False)["input_ids"]
    return [np.asarray(w[:cfg.hf_title_tokens], dtype=np.int64) for w in ids], len(tokenizer)