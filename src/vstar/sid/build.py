"""The semantic-ID stage end to end: item vectors -> tokenizer -> collision handling -> report."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from vstar.core.errors import InputError
from vstar.sid.collisions import resolve_collisions, sid_report
from vstar.sid.config import SidConfig
from vstar.sid.embed import MODEL_NAME, embed_texts_cached, load_vectors
from vstar.sid.index_io import load_index_json
from vstar.sid.kmeans import fit_residual_kmeans
from vstar.sid.rqvae import fit_rqvae
from vstar.sid.types import SemanticIds


def item_vectors(cfg: SidConfig, item_text: Sequence[str] | None, n_items: int,
                 cache_dir: str | os.PathLike | None,
                 show_progress: bool = True) -> tuple[np.ndarray | None, str]:
    """(vectors [n_items, D] or None, where they came from): user vectors > text embeddings > none."""
    if cfg.vectors_path:
        return load_vectors(cfg.vectors_path, n_items), f"vectors_path:{cfg.vectors_path}"
    if item_text is not None:
        if len(item_text) != n_items:
            raise InputError(f"expected one text per item ({n_items}), got {len(item_text)}",
                             field="item_text")
        emb = embed_texts_cached(item_text, cache_dir, cfg.embed_batch_size, show_progress)
        return emb, f"text:{MODEL_NAME}"
    return None, "none"


def build_sids(cfg: SidConfig, item_text: Sequence[str] | None, n_items: int, item_ids: Sequence,
               cache_dir: str | os.PathLike | None = None, show_progress: bool = True,
               vectors: np.ndarray | None = None, vectors_source: str = "given"
               ) -> tuple[SemanticIds, dict, np.ndarray | None]:
    """Collision-free SIDs for a catalogue (unless ``cfg.collisions == "none"``).

    Item vectors come from ``cfg.vectors_path`` if set, else from embedding ``item_text``
    (cached in ``cache_dir``), else there are none. The tokenizer quantises ``vectors``
    [n_items, D] when given (e.g. collaborative vectors, ``sid.vectors="sasrec"``), else those item
    vectors; without any, only ``method="index_json"`` works. Returns ``(sids, report,
    item vectors)``; the item vectors (or None) are returned because later stages use them
    (semantic rewards, intra-list distance).
    """
    cfg.validate()
    if len(item_ids) != n_items:
        raise InputError(f"expected {n_items} item ids, got {len(item_ids)}", field="item_ids")
    t0 = time.time()
    item_emb, source = item_vectors(cfg, item_text, n_items, cache_dir, show_progress)
    emb = item_emb
    if vectors is not None:
        if vectors.ndim != 2 or len(vectors) != n_items or not np.isfinite(vectors).all():
            raise InputError(f"expected finite vectors [{n_items}, D], got {vectors.shape}",
                             field="vectors")
        emb, source = np.ascontiguousarray(vectors, dtype=np.float32), vectors_source
    t_vectors = time.time() - t0
    if emb is None and cfg.method != "index_json":
        raise InputError(f"method {cfg.method!r} needs item vectors, but the dataset has no item "
                         "text: give sid.vectors_path (.npy or .safetensors, one row per item) "
                         "or use sid.method=index_json with sid.index_path", field="sid.vectors_path")

    extra: dict = {}
    q_vectors, codebooks = emb, None  # the vectors the tokenizer quantised and its codebooks
    if cfg.method in ("rkmeans", "balanced_kmeans"):
        raw, codebooks = fit_residual_kmeans(emb, list(cfg.codebook_sizes), cfg.seed,
                                             balanced=cfg.method == "balanced_kmeans",
                                             niter=cfg.kmeans_niter,
                                             balanced_iters=cfg.balanced_iters,
                                             show_progress=show_progress)
    elif cfg.method == "rqvae":
        model, extra["rqvae"] = fit_rqvae(emb, cfg, show_progress)
        q_vectors, codes = model.encode_codes(torch.from_numpy(emb))
        codebooks = model.codebook_vectors()
        raw = SemanticIds(codes=codes, codebook_sizes=[int(k) for k in cfg.codebook_sizes])
    else:  # index_json
        sizes = None if cfg.codebook_sizes is None else list(cfg.codebook_sizes)
        raw = load_index_json(cfg.index_path, item_ids, sizes)
    sids = resolve_collisions(raw, cfg.collisions, q_vectors, codebooks)

    report = {
        "method": cfg.method,
        "collisions": cfg.collisions,
        "seed": cfg.seed,
        "vectors": source,
        "vector_dim": None if emb is None else int(emb.shape[1]),
        **sid_report(raw, sids),
        **extra,
        "seconds_vectors": round(t_vectors, 3),
        "seconds_total": round(time.time() - t0, 3),
    }
    return sids, report, item_emb
