"""Read and write SIDs as index.json (the LC-Rec / LETTER / MiniOneRec format).

    {"<item id>": ["<a_12>", "<b_200>", "<c_7>", "<d_3>"], ...}

Keys are the dataset's external item ids; rows of the returned SemanticIds follow ``item_ids``.
Tokens are parsed by ``vstar.sid.tokens`` (codebook sizes: max code + 1 per level, raised to the
configured sizes where given).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json, read_json
from vstar.sid.tokens import codes_from_sids, sid_tokens
from vstar.sid.types import SemanticIds


def read_index_json(path: str | os.PathLike) -> dict:
    """The raw ``{item id: [tokens]}`` mapping (duplicate keys are errors naming their line)."""
    index, _ = read_json(path)
    if not isinstance(index, dict):
        raise InputError(f"expected a JSON object {{item id: [tokens]}}, got {type(index).__name__}",
                         file=str(path))
    return index


def load_index_json(path: str | os.PathLike, item_ids: Sequence,
                    codebook_sizes: Sequence[int] | None = None) -> SemanticIds:
    """SIDs from an index.json file, one row per entry of ``item_ids`` (ids compared as strings).

    Raises InputError naming the file and key for: a missing item, a malformed token, a wrong
    level letter, a duplicate key, or SIDs of different lengths. Keys that are not catalogue
    items are ignored with a warning.
    """
    path = str(path)
    index = read_index_json(path)
    keys = [str(i) for i in item_ids]
    for key in keys:
        if key not in index:
            raise InputError(f"no SID for catalogue item {key!r}", file=path, field=key)
    extra = len(index) - len(set(keys) & set(index))
    if extra:
        warnings.warn(f"{path}: {extra} keys are not catalogue items and were ignored", stacklevel=2)
    return codes_from_sids([index[k] for k in keys], codebook_sizes, file=path, keys=keys)


def save_index_json(path: str | os.PathLike, sids: SemanticIds, item_ids: Sequence) -> None:
    """Write SIDs as index.json (atomically), keys ``str(item_ids[i])`` in row order."""
    if len(item_ids) != sids.n_items:
        raise InputError(f"expected one item id per SID row ({sids.n_items}), got {len(item_ids)}",
                         field="item_ids")
    index: dict[str, list[str]] = {}
    for key, row in zip(item_ids, sids.codes.tolist()):
        key = str(key)
        if key in index:
            raise InputError(f"duplicate item id {key!r}", field="item_ids")
        index[key] = sid_tokens(row)
    atomic_write_json(path, index, indent=None)
