"""Semantic IDs: item text / vectors -> collision-free tuples of codes, one per catalogue item.

    embed.py       texts -> all-MiniLM-L6-v2 vectors (offline, cached); user vectors
    kmeans.py      residual k-means (RK-Means) and its balanced variant
    rqvae.py       RQ-VAE tokenizer (TIGER)
    collisions.py  make SIDs collision-free ("extra_level" / "reassign"), SID report
    tokens.py      SID tokens and strings ("<a_12><b_200>"): the one parser and writer
    index_io.py    read / write index.json ({"<item>": ["<a_12>", "<b_200>", ...]})
    minionerec.py  MiniOneRec's index SIDs; writing a dataset + SIDs in MiniOneRec's format
    build.py       the stage end to end: build_sids(cfg, item_text, n_items, item_ids, cache_dir)
"""

from vstar.sid.build import build_sids, item_vectors
from vstar.sid.collisions import add_extra_level, reassign_last_level, resolve_collisions, sid_report
from vstar.sid.config import SidConfig
from vstar.sid.embed import embed_texts, embed_texts_cached, load_vectors
from vstar.sid.index_io import load_index_json, save_index_json
from vstar.sid.minionerec import read_minionerec_sids, write_minionerec
from vstar.sid.tokens import codes_from_sids, format_sid, parse_sid, sid_token, sid_tokens
from vstar.sid.kmeans import fit_residual_kmeans, residual_kmeans
from vstar.sid.rqvae import RQVAE, fit_rqvae, train_rqvae
from vstar.sid.types import SemanticIds

__all__ = ["RQVAE", "SemanticIds", "SidConfig", "add_extra_level", "build_sids", "codes_from_sids",
           "embed_texts", "embed_texts_cached", "fit_residual_kmeans", "fit_rqvae", "format_sid",
           "item_vectors", "load_index_json", "load_vectors", "parse_sid", "read_minionerec_sids",
           "reassign_last_level", "residual_kmeans", "resolve_collisions", "save_index_json",
           "sid_report", "sid_token", "sid_tokens", "train_rqvae", "write_minionerec"]
