"""Rank the catalogue for many split rows with constrained beam search (the evaluation decoder)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from vstar.core import dist
from vstar.core.device import module_device
from vstar.data.types import SplitRows
from vstar.decode.beam import beam_search
from vstar.decode.trie import SidTrie
from vstar.model.interface import SidLM
from vstar.model.vocab import SidVocab


@torch.no_grad()
def rank_rows(model: SidLM, vocab: SidVocab, trie: SidTrie, rows: SplitRows, width: int,
              batch_size: int = 256, max_history: int | None = None, decoder=None,
              progress: bool = False, desc: str = "decode") -> tuple[np.ndarray, dict]:
    """Top-``width`` items for every row: (ranked int64 [R, width], cost dict).

    ``decoder(model, vocab, trie, tokens, mask) -> DecodeResult`` replaces beam search (e.g. VED).
    Rows are decoded in batches of similar history length. Cost: decode forward tokens per user,
    wall seconds per user, invalid SIDs. Under torchrun (``vstar.core.dist``) every rank must call
    it: each decodes its share of the rows and every rank gets the whole ranking back (wall
    seconds: the slowest rank's).

    Device: prompts are encoded on the CPU and decoded on the model's device (the trie must be
    there too); each batch's ranking comes back to the CPU once. A caller that wants
    ``run.autocast`` wraps the call in its region (``vstar.core.device.autocast``).
    """
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    item_codes = trie.codes.cpu()                      # prompts are built on the CPU
    dev = module_device(model)
    order = dist.shard(np.argsort([len(h) for h in rows.histories], kind="stable"))
    ranked = np.full((len(rows), width), -1, dtype=np.int64)
    fwd, invalid = 0, 0
    t0 = time.perf_counter()
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=desc, disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        tokens, mask = vocab.encode_histories([rows.histories[i] for i in idx], item_codes,
                                              max_items=max_history)
        tokens, mask = tokens.to(dev), mask.to(dev)
        if decoder is None:
            res = beam_search(model, vocab, trie, tokens, mask, width)
        else:
            res = decoder(model, vocab, trie, tokens, mask)
        ranked[idx, : res.items.shape[1]] = res.items[:, :width].cpu().numpy()
        fwd += res.forward_tokens
        invalid += res.n_invalid
    wall = time.perf_counter() - t0
    if dist.active():                                  # every rank's rows, to every rank
        parts = dist.all_gather_objects((order, ranked[order], fwd, invalid, wall))
        fwd, invalid, wall = 0, 0, 0.0
        for rows_r, ranked_r, fwd_r, invalid_r, wall_r in parts:
            ranked[rows_r] = ranked_r
            fwd, invalid, wall = fwd + fwd_r, invalid + invalid_r, max(wall, wall_r)
    if was_training:
        model.train()
    n = max(1, len(rows))
    cost = {"decode_forward_tokens_per_user": fwd / n, "wall_seconds_per_user": wall / n,
            "wall_seconds": wall, "n_invalid": invalid,
            "invalid_rate": invalid / max(1, len(rows) * width)}
    return ranked, cost
