"""Every checkpoint vstar writes or reads: safetensors files, one writer and one reader per kind.

A checkpoint is a safetensors file (weights only: loading one never runs code) whose metadata
says what it holds: ``vstar_kind`` (one of ``KINDS``) and ``vstar_format``, plus the kind's own
fields, each stored JSON-encoded. Readers check the kind, so an RL state passed where a generator
is expected is a clear error naming the file, not a shape mismatch three calls later.

    kind          writer / reader                    holds
    generator     save_generator / load_generator    the SID generator's weights, its size
                                                     (model config, vocabulary, block size) and
                                                     the SID codebook sizes it was trained on
    rl_state      save_rl_state / load_rl_state      policy + value head weights, optimiser
                                                     moments, step, RNG states, LR schedule,
                                                     the RL config (enough to resume bit-exactly)
    sft_state     save_sft_state / load_sft_state    SFT after an epoch: weights, best weights,
                                                     optimiser moments, RNG states, LR schedule,
                                                     early-stopping state and history
    sasrec        save_sasrec / load_sasrec          SASRec weights, its config and n_items
    embeddings    save_embeddings / load_embeddings  a float32 [N, D] matrix of item embeddings
    semantic_scorer  save_semantic_scorer /          A2PO's semantic judge: the aggregator MLP's
                  load_semantic_scorer               weights, its input size, width, recency
                                                     decay and aspect names
    hf_generator  save_hf_generator /                a folder in the Hugging Face layout
                  load_hf_generator                  (``save_pretrained``: config.json,
                                                     model.safetensors) plus ``sid_vocab.json``:
                                                     the SID codebooks, where the SID tokens
                                                     start in the HF vocabulary, the model config;
                                                     with item-level history also
                                                     ``sid_items.safetensors`` (kind
                                                     ``hf_items``: the wrapper's item code table
                                                     and item-ID embedding)

This is the only module that spells tensor keys or metadata fields of a checkpoint. Functions take
and return plain tensors and dicts, so no model class is imported here (the model stage builds its
modules from what ``load_generator`` returns).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from vstar.core.errors import InputError
from vstar.core.io import atomic_dir, atomic_path, atomic_write_json, read_json, to_jsonable

FORMAT_VERSION = 1
KINDS = ("generator", "rl_state", "sft_state", "sasrec", "embeddings", "semantic_scorer",
         "hf_items")

_KIND, _FORMAT = "vstar_kind", "vstar_format"
# rl_state sections: tensors are stored as "<section>.<key>"
_POLICY, _VALUE, _OPT = "policy.", "value.", "opt."
_SAMPLER_RNG = "sampler_rng"
# sft_state sections
_MODEL, _BEST, _TORCH_RNG = "model.", "best.", "torch_rng"
EMBEDDINGS_KEY = "embeddings"   # also the tensor name of user-supplied vector files
HF_SID_FILE = "sid_vocab.json"  # beside a Hugging Face model folder's config.json
HF_ITEMS_FILE = "sid_items.safetensors"  # ... and the wrapper's own tensors (item-level history)


# ---------------------------------------------------------------------------------------------
# the container: tensors + JSON metadata + kind
# ---------------------------------------------------------------------------------------------

def _write(path: str | os.PathLike, kind: str, tensors: Mapping[str, Any],
           meta: Mapping[str, Any]) -> Path:
    """Tensors (moved to CPU, contiguous; shared storage copied) + metadata, atomically."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"expected a tensor, got {type(value).__name__}", field=key)
        t = value.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and ptr in seen:          # tied weights: safetensors refuses shared storage
            t = t.clone()
        seen.add(ptr)
        out[str(key)] = t
    record = {_KIND: kind, _FORMAT: FORMAT_VERSION, **meta}
    encoded = {str(k): json.dumps(to_jsonable(v, f"metadata.{k}")) for k, v in record.items()}
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=encoded)
    return path


def _read(path: str | os.PathLike, kind: str, device: str = "cpu") -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint of ``kind``; InputError naming the file otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{kind} checkpoint not found", file=str(path))
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            raw_meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:   # truncated, corrupt
        raise InputError(f"not a readable safetensors file ({_first_line(err)})",
                         file=str(path)) from None
    meta = {}
    for key, text in raw_meta.items():
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"metadata value is not JSON: {text[:80]!r}", file=str(path),
                             field=key) from None
    found = meta.get(_KIND)
    if found != kind:
        what = f"a {found!r} checkpoint" if found else "not a vstar checkpoint (no vstar_kind)"
        raise InputError(f"expected a {kind!r} checkpoint, found {what}", file=str(path),
                         field=_KIND)
    if meta.get(_FORMAT) != FORMAT_VERSION:
        raise InputError(f"checkpoint format {meta.get(_FORMAT)!r}, this vstar reads "
                         f"{FORMAT_VERSION}", file=str(path), field=_FORMAT)
    return tensors, meta


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _require(meta: dict, keys: tuple[str, ...], path: str | os.PathLike, kind: str) -> None:
    for key in keys:
        if key not in meta:
            raise InputError(f"{kind} checkpoint lacks the metadata field {key!r}",
                             file=str(path), field=key)


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """The ``vstar_kind`` of a safetensors file (None when it has none or cannot be read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(_KIND)
    except (SafetensorError, OSError):
        return None
    try:
        return json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------

@dataclass
class GeneratorCheckpoint:
    state_dict: dict
    model_config: dict          # the model section (n_layer, n_head, n_embd, dropout)
    vocab_size: int
    block_size: int
    codebook_sizes: list[int]


def save_generator(path: str | os.PathLike, state_dict: Mapping[str, Any], *,
                   model_config: Mapping[str, Any], vocab_size: int, block_size: int,
                   codebook_sizes: list[int]) -> Path:
    return _write(path, "generator", state_dict,
                  {"model_config": dict(model_config), "vocab_size": int(vocab_size),
                   "block_size": int(block_size),
                   "codebook_sizes": [int(k) for k in codebook_sizes]})


def load_generator(path: str | os.PathLike) -> GeneratorCheckpoint:
    tensors, meta = _read(path, "generator")
    _require(meta, ("model_config", "vocab_size", "block_size", "codebook_sizes"), path,
             "generator")
    return GeneratorCheckpoint(tensors, meta["model_config"], int(meta["vocab_size"]),
                               int(meta["block_size"]), list(meta["codebook_sizes"]))


# ---------------------------------------------------------------------------------------------
# generator in the Hugging Face layout
# ---------------------------------------------------------------------------------------------

@dataclass
class HFGeneratorCheckpoint:
    path: Path                  # the folder: ``AutoModelForCausalLM.from_pretrained(path)``
    codebook_sizes: list[int]
    token_offset: int           # HF token id of vstar token 0 (PAD); SID tokens follow it
    sid_vocab_size: int         # vstar's output vocabulary (PAD, BOS, every code)
    model_config: dict          # the model section it was built with
    # the wrapper's tensors outside the HF model (its state_dict entries: the item code table
    # and item-ID embedding of item-level history); empty without them
    extra_state: dict = field(default_factory=dict)


def save_hf_generator(path: str | os.PathLike, write_model: Callable[[Path], None], *,
                      codebook_sizes: list[int], token_offset: int, sid_vocab_size: int,
                      model_config: Mapping[str, Any],
                      extra_state: Mapping[str, Any] | None = None) -> Path:
    """A Hugging Face model folder: ``write_model(folder)`` writes the weights and config
    (``save_pretrained``), then ``sid_vocab.json`` records the SID vocabulary and
    ``sid_items.safetensors`` holds ``extra_state`` (if any); the folder replaces ``path``
    atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_model(tmp)
        if not (tmp / "config.json").is_file():
            raise InputError("the model writer left no config.json (save_pretrained)",
                             file=str(path))
        atomic_write_json(tmp / HF_SID_FILE, to_jsonable(
            {_KIND: "hf_generator", _FORMAT: FORMAT_VERSION,
             "codebook_sizes": [int(k) for k in codebook_sizes],
             "token_offset": int(token_offset), "sid_vocab_size": int(sid_vocab_size),
             "model_config": dict(model_config)}, "sid_vocab"))
        if extra_state:
            _write(tmp / HF_ITEMS_FILE, "hf_items", extra_state, {})
    return path


def load_hf_generator(path: str | os.PathLike) -> HFGeneratorCheckpoint:
    """The SID vocabulary of a folder written by ``save_hf_generator`` (the weights are read by
    ``from_pretrained``); InputError naming the file if it is missing or malformed."""
    path = Path(path)
    meta_path = path / HF_SID_FILE
    if not path.is_dir() or not meta_path.is_file():
        raise InputError("not a vstar Hugging Face generator folder (expected config.json, "
                         f"model.safetensors and {HF_SID_FILE})", file=str(meta_path))
    meta, _ = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get(_KIND) != "hf_generator":
        raise InputError("expected an 'hf_generator' vocabulary file", file=str(meta_path),
                         field=_KIND)
    if meta.get(_FORMAT) != FORMAT_VERSION:
        raise InputError(f"checkpoint format {meta.get(_FORMAT)!r}, this vstar reads "
                         f"{FORMAT_VERSION}", file=str(meta_path), field=_FORMAT)
    _require(meta, ("codebook_sizes", "token_offset", "sid_vocab_size", "model_config"),
             meta_path, "hf_generator")
    extra = (_read(path / HF_ITEMS_FILE, "hf_items")[0] if (path / HF_ITEMS_FILE).exists()
             else {})
    return HFGeneratorCheckpoint(path, [int(k) for k in meta["codebook_sizes"]],
                                 int(meta["token_offset"]), int(meta["sid_vocab_size"]),
                                 dict(meta["model_config"]), extra)


# ---------------------------------------------------------------------------------------------
# RL state (resume)
# ---------------------------------------------------------------------------------------------

@dataclass
class RLState:
    policy: dict                # generator state_dict
    value_head: dict            # value head state_dict
    optimizer_state: dict       # {param id: {name: tensor}} (torch optimiser "state")
    sampler_rng: Any            # torch.Generator state (uint8 tensor)
    step: int
    numpy_rng: dict             # numpy bit_generator.state
    lr_schedule: dict           # LR scheduler state_dict
    config: dict                # the RL config the state was trained with
    trainer: dict = field(default_factory=dict)   # the trainer's own small state (JSON values)


def _pack_optimizer(optimizer_state: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """An optimizer's per-parameter state as flat tensors ``opt.<param id>.<name>``."""
    import torch

    return {f"{_OPT}{pid}.{name}": torch.as_tensor(v)
            for pid, state in optimizer_state.items() for name, v in state.items()}


def _unpack_optimizer(tensors: Mapping[str, Any]) -> dict[int, dict]:
    """The inverse of ``_pack_optimizer``: {param id: {name: tensor}}."""
    opt: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith(_OPT):
            pid, name = key[len(_OPT):].split(".", 1)
            opt.setdefault(int(pid), {})[name] = v
    return opt


def save_rl_state(path: str | os.PathLike, *, policy: Mapping[str, Any],
                  value_head: Mapping[str, Any], optimizer_state: Mapping[int, Mapping[str, Any]],
                  sampler_rng: Any, step: int, numpy_rng: Mapping[str, Any],
                  lr_schedule: Mapping[str, Any], config: Mapping[str, Any],
                  trainer: Mapping[str, Any] | None = None) -> Path:
    # _write detaches, copies to contiguous CPU tensors and un-shares tied weights
    tensors: dict[str, Any] = {f"{_POLICY}{k}": v for k, v in policy.items()}
    tensors.update({f"{_VALUE}{k}": v for k, v in value_head.items()})
    tensors.update(_pack_optimizer(optimizer_state))
    tensors[_SAMPLER_RNG] = sampler_rng
    return _write(path, "rl_state", tensors,
                  {"step": int(step), "numpy_rng": dict(numpy_rng),
                   "lr_schedule": dict(lr_schedule), "config": dict(config),
                   "trainer": dict(trainer or {})})


def load_rl_state(path: str | os.PathLike) -> RLState:
    tensors, meta = _read(path, "rl_state")
    _require(meta, ("step", "numpy_rng", "lr_schedule", "config"), path, "rl_state")
    policy = {k[len(_POLICY):]: v for k, v in tensors.items() if k.startswith(_POLICY)}
    value = {k[len(_VALUE):]: v for k, v in tensors.items() if k.startswith(_VALUE)}
    opt = _unpack_optimizer(tensors)
    if not policy or not value or _SAMPLER_RNG not in tensors:
        raise InputError("an RL state needs policy, value-head and sampler tensors",
                         file=str(path))
    return RLState(policy, value, opt, tensors[_SAMPLER_RNG], int(meta["step"]),
                   meta["numpy_rng"], meta["lr_schedule"], meta["config"],
                   dict(meta.get("trainer") or {}))


# ---------------------------------------------------------------------------------------------
# SFT state (per-epoch checkpoint, resume)
# ---------------------------------------------------------------------------------------------

@dataclass
class SFTState:
    model: dict                 # generator state_dict after ``epoch`` epochs
    best_model: dict | None     # the best validated state_dict so far (None: none yet)
    optimizer_state: dict       # {param id: {name: tensor}}
    torch_rng: Any              # torch CPU RNG state (dropout)
    epoch: int                  # epochs done
    numpy_rng: dict             # numpy bit_generator.state (batch order)
    lr_schedule: dict
    early_stopping: dict        # best score, evaluations without gain
    history: list               # per-epoch records so far


def save_sft_state(path: str | os.PathLike, *, model: Mapping[str, Any],
                   best_model: Mapping[str, Any] | None,
                   optimizer_state: Mapping[int, Mapping[str, Any]], torch_rng: Any, epoch: int,
                   numpy_rng: Mapping[str, Any], lr_schedule: Mapping[str, Any],
                   early_stopping: Mapping[str, Any], history: list) -> Path:
    tensors: dict[str, Any] = {f"{_MODEL}{k}": v for k, v in model.items()}
    tensors.update({f"{_BEST}{k}": v for k, v in (best_model or {}).items()})
    tensors.update(_pack_optimizer(optimizer_state))
    tensors[_TORCH_RNG] = torch_rng
    return _write(path, "sft_state", tensors,
                  {"epoch": int(epoch), "numpy_rng": dict(numpy_rng),
                   "lr_schedule": dict(lr_schedule), "early_stopping": dict(early_stopping),
                   "history": list(history)})


def load_sft_state(path: str | os.PathLike) -> SFTState:
    tensors, meta = _read(path, "sft_state")
    _require(meta, ("epoch", "numpy_rng", "lr_schedule", "early_stopping", "history"), path,
             "sft_state")
    model = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    best = {k[len(_BEST):]: v for k, v in tensors.items() if k.startswith(_BEST)}
    opt = _unpack_optimizer(tensors)
    if not model or _TORCH_RNG not in tensors:
        raise InputError("an SFT state needs model and RNG tensors", file=str(path))
    return SFTState(model, best or None, opt, tensors[_TORCH_RNG], int(meta["epoch"]),
                    meta["numpy_rng"], meta["lr_schedule"], meta["early_stopping"],
                    meta["history"])


# ---------------------------------------------------------------------------------------------
# SASRec
# ---------------------------------------------------------------------------------------------

def save_sasrec(path: str | os.PathLike, state_dict: Mapping[str, Any], *, n_items: int,
                config: Mapping[str, Any]) -> Path:
    return _write(path, "sasrec", state_dict, {"n_items": int(n_items), "config": dict(config)})


def load_sasrec(path: str | os.PathLike) -> tuple[dict, int, dict]:
    """(state_dict, n_items, config) of a SASRec checkpoint."""
    tensors, meta = _read(path, "sasrec")
    _require(meta, ("n_items", "config"), path, "sasrec")
    return tensors, int(meta["n_items"]), meta["config"]


# ---------------------------------------------------------------------------------------------
# item embeddings (the text-embedding cache)
# ---------------------------------------------------------------------------------------------

def save_embeddings(path: str | os.PathLike, emb: Any, *, model: str) -> Path:
    """A float32 numpy matrix [N, D] and the name of the model that produced it."""
    import numpy as np
    import torch

    return _write(path, "embeddings",
                  {EMBEDDINGS_KEY: torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))},
                  {"model": str(model)})


def load_embeddings(path: str | os.PathLike) -> tuple[Any, str]:
    """(float32 numpy [N, D], model name)."""
    tensors, meta = _read(path, "embeddings")
    if EMBEDDINGS_KEY not in tensors:
        raise InputError(f"expected a tensor named {EMBEDDINGS_KEY!r}", file=str(path))
    return tensors[EMBEDDINGS_KEY].numpy(), str(meta.get("model", ""))


# ---------------------------------------------------------------------------------------------
# A2PO's semantic judge (vstar.train.semantic_reward)
# ---------------------------------------------------------------------------------------------

def save_semantic_scorer(path: str | os.PathLike, state_dict: Mapping[str, Any], *, dim: int,
                         hidden: int, decay: float, aspects: list[str]) -> Path:
    return _write(path, "semantic_scorer", state_dict,
                  {"dim": int(dim), "hidden": int(hidden), "decay": float(decay),
                   "aspects": list(aspects)})


def load_semantic_scorer(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, {dim, hidden, decay, aspects}) of a semantic judge."""
    tensors, meta = _read(path, "semantic_scorer")
    _require(meta, ("dim", "hidden", "decay", "aspects"), path, "semantic_scorer")
    return tensors, {k: meta[k] for k in ("dim", "hidden", "decay", "aspects")}
