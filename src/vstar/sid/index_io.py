"""Read and write SIDs as index.json (the LC-Rec / LETTER / MiniOneRec format).

    {"<item id>": ["<a_12>", "<b_200>", "<c_7>", "<d_3>"], ...}

The letter names the level (a = first level, b = second, ...), the number is the code. Keys are the
dataset's external item ids; rows of the returned SemanticIds follow ``item_ids``.

Codebook size of level l when reading: max code + 1 over the file, raised to
``codebook_sizes[l]`` when a configured size is given for that level (a configured size never
shrinks a level: codes must fit their codebook).
"""

from __future__ import annotations

import json
import os
import re
import string
import warnings
from collections.abc import Sequence

import numpy as np

from vstar.errors import InputError
from vstar.io import atomic_write_json
from vstar.sid.types import SemanticIds

TOKEN_RE = re.compile(r"^<([a-z])_(\d+)>$")
LEVEL_LETTERS = string.ascii_lowercase  # at most 26 levels


def sid_token(level: int, code: int) -> str:
    """``sid_token(1, 200) == "<b_200>"``."""
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def _no_duplicate_keys(path: str):
    def hook(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise InputError(f"duplicate key {key!r}", file=path, field=key)
            out[key] = value
        return out
    return hook


def load_index_json(path: str | os.PathLike, item_ids: Sequence,
                    codebook_sizes: Sequence[int] | None = None) -> SemanticIds:
    """SIDs from an index.json file, one row per entry of ``item_ids`` (ids compared as strings).

    Raises InputError naming the file and key for: a missing item, a malformed token, a wrong
    level letter, a duplicate key, or SIDs of different lengths. Keys that are not catalogue
    items are ignored with a warning.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f, object_pairs_hook=_no_duplicate_keys(path))
    except FileNotFoundError as e:
        raise InputError("index file not found", file=path) from e
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", file=path, line=e.lineno) from e
    if not isinstance(index, dict):
        raise InputError(f"expected a JSON object {{item id: [tokens]}}, got {type(index).__name__}",
                         file=path)

    keys = [str(i) for i in item_ids]
    n_levels = None
    codes = None
    for row, key in enumerate(keys):
        if key not in index:
            raise InputError(f"no SID for catalogue item {key!r}", file=path, field=key)
        tokens = index[key]
        if not isinstance(tokens, list) or not tokens:
            raise InputError(f"expected a non-empty list of tokens like ['<a_12>', '<b_200>'], "
                             f"got {tokens!r}", file=path, field=key)
        if n_levels is None:
            n_levels = len(tokens)
            if n_levels > len(LEVEL_LETTERS):
                raise InputError(f"at most {len(LEVEL_LETTERS)} levels, got {n_levels}",
                                 file=path, field=key)
            codes = np.zeros((len(keys), n_levels), dtype=np.int64)
        elif len(tokens) != n_levels:
            raise InputError(f"expected {n_levels} tokens like the other items, got {len(tokens)}",
                             file=path, field=key)
        for level, tok in enumerate(tokens):
            m = TOKEN_RE.match(tok) if isinstance(tok, str) else None
            if m is None:
                raise InputError(f"malformed token {tok!r} at level {level}, expected like "
                                 f"{sid_token(level, 12)!r}", file=path, field=key)
            if m.group(1) != LEVEL_LETTERS[level]:
                raise InputError(f"token {tok!r} at position {level} has level letter "
                                 f"{m.group(1)!r}, expected {LEVEL_LETTERS[level]!r}",
                                 file=path, field=key)
            codes[row, level] = int(m.group(2))

    extra = len(index) - len(set(keys) & set(index))
    if extra:
        warnings.warn(f"{path}: {extra} keys are not catalogue items and were ignored", stacklevel=2)
    if codes is None:  # empty catalogue
        return SemanticIds(codes=np.zeros((0, 0), dtype=np.int64), codebook_sizes=[])
    sizes = [int(codes[:, l].max()) + 1 for l in range(n_levels)]
    if codebook_sizes is not None:
        sizes = [max(s, int(codebook_sizes[l])) if l < len(codebook_sizes) else s
                 for l, s in enumerate(sizes)]
    return SemanticIds(codes=codes, codebook_sizes=sizes)


def save_index_json(path: str | os.PathLike, sids: SemanticIds, item_ids: Sequence) -> None:
    """Write SIDs as index.json (atomically), keys ``str(item_ids[i])`` in row order."""
    if len(item_ids) != sids.n_items:
        raise InputError(f"expected one item id per SID row ({sids.n_items}), got {len(item_ids)}",
                         field="item_ids")
    if sids.n_levels > len(LEVEL_LETTERS):
        raise InputError(f"index.json holds at most {len(LEVEL_LETTERS)} levels, got {sids.n_levels}",
                         file=str(path))
    index: dict[str, list[str]] = {}
    for key, row in zip(item_ids, sids.codes.tolist()):
        key = str(key)
        if key in index:
            raise InputError(f"duplicate item id {key!r}", field="item_ids")
        index[key] = [sid_token(l, c) for l, c in enumerate(row)]
    atomic_write_json(path, index, indent=None)
