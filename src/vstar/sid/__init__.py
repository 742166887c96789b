"""Semantic IDs: item text / vectors -> collision-free tuples of codes, one per catalogue item.

    embed.py       texts -> all-MiniLM-L6-v2 vectors (offline, cached); user vectors
    kmeans.py      residual k-means (RK-Means) and its balanced variant
    rqvae.py       RQ-VAE tokenizer (TIGER)
    collisions.py  make SIDs collision-free ("extra_level" / "reassign"), SID report
    index_io.py    read / write index.json ({"<item>": ["<a_12>", "<b_200>", ...]})
    build.py       the stage end to end: build_sids(cfg, item_text, n_items, item_ids, cache_dir)
"""

from vstar.sid.build import build_sids, item_vectors
from vstar.sid.collisions import add_extra_level, reassign_last_level, resolve_collisions, sid_report
from vstar.sid.config import SidConfig
from vstar.sid.embed import embed_texts, embed_texts_cached, load_vectors
from vstar.sid.index_io import load_index_json, save_index_json, sid_token
from vstar.sid.kmeans import fit_residual_kmeans, residual_kmeans
from vstar.sid.rqvae import RQVAE, fit_rqvae, train_rqvae
from vstar.sid.types import SemanticIds

__all__ = ["RQVAE", "SemanticIds", "SidConfig", "add_extra_level", "build_sids", "embed_texts",
           "embed_texts_cached", "fit_residual_kmeans", "fit_rqvae", "item_vectors",
           "load_index_json", "load_vectors", "reassign_last_level", "residual_kmeans",
           "resolve_collisions", "save_index_json", "sid_report", "sid_token", "train_rqvae"]
