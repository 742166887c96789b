"""MiniOneRec interop at the SID stage: their index's SIDs, and writing a dataset in their format.

    sids = read_minionerec_sids(folder)                     # rows in the index's key order
    write_minionerec(out_dir, data, splits, sids)           # CSVs, index.json, info.txt, item.json

Reading their CSVs into InteractionData is the data stage's (``vstar.data.minionerec``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json, atomic_write_text
from vstar.data.minionerec import MINIONEREC_COLUMNS, SPLIT_NAMES, find_name
from vstar.data.types import InteractionData, Splits, SplitRows
from vstar.sid.index_io import read_index_json, save_index_json
from vstar.sid.tokens import codes_from_sids, format_sid
from vstar.sid.types import SemanticIds


def read_minionerec_sids(folder: str | Path, name: str | None = None,
                         codebook_sizes: Sequence[int] | None = None) -> SemanticIds:
    """SIDs of ``<folder>/<name>.index.json``, one row per key in file order (the catalogue order
    of ``vstar.data.minionerec.load_minionerec``)."""
    folder = Path(folder)
    path = folder / f"{name or find_name(folder)}.index.json"
    index = read_index_json(path)
    keys = list(index)
    return codes_from_sids([index[k] for k in keys], codebook_sizes, file=str(path), keys=keys)


def _clean(title: str) -> str:
    """Titles go into tab-separated ``info.txt``: no tabs or newlines inside."""
    return " ".join(str(title).split())


def _csv_text(rows: SplitRows, data: InteractionData, titles: list[str], sid_str: list[str]
              ) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MINIONEREC_COLUMNS)
    for u, hist, target in zip(rows.users.tolist(), rows.histories, rows.targets.tolist()):
        hist = [int(i) for i in hist]
        writer.writerow([
            data.user_ids[u],
            str([titles[i] for i in hist]),   # Python list literal, as pandas writes lists
            titles[target],
            str(hist),
            target,
            str([sid_str[i] for i in hist]),
            sid_str[target],
        ])
    return buf.getvalue()


def write_minionerec(out_dir: str | Path, data: InteractionData, splits: Splits,
                     sids: SemanticIds, name: str | None = None,
                     titles: Sequence[str] | None = None) -> dict[str, Path]:
    """Write a dataset, its splits and its SIDs in MiniOneRec's format (see the module doc).

    Items are written as their vstar indices 0..N-1 (MiniOneRec's item ids are such indices);
    ``titles`` default to ``data.item_text`` (else the external item id); ``item.json`` also
    keeps each item's external id (``external_id``) so ``load_minionerec`` restores it. Writes
    ``<name>_{train,valid,test}.csv``, ``<name>.index.json``, ``<name>.info.txt`` and
    ``<name>.item.json`` atomically; returns their paths by kind.
    """
    if sids.n_items != data.n_items:
        raise InputError(f"{sids.n_items} SIDs for {data.n_items} items", field="sids")
    out_dir = Path(out_dir)
    name = name or data.name
    if titles is None:
        titles = data.item_text if data.item_text is not None else data.item_ids
    titles = [_clean(t) for t in titles]
    if len(titles) != data.n_items:
        raise InputError(f"{len(titles)} titles for {data.n_items} items", field="titles")
    sid_str = [format_sid(c) for c in sids.codes.tolist()]
    paths: dict[str, Path] = {}
    for split in SPLIT_NAMES:
        paths[split] = out_dir / f"{name}_{split}.csv"
        atomic_write_text(paths[split], _csv_text(getattr(splits, split), data, titles, sid_str))
    paths["index"] = out_dir / f"{name}.index.json"
    save_index_json(paths["index"], sids, [str(i) for i in range(sids.n_items)])
    paths["info"] = out_dir / f"{name}.info.txt"
    atomic_write_text(paths["info"], "".join(f"{s}\t{t}\t{i}\n"
                                             for i, (s, t) in enumerate(zip(sid_str, titles))))
    paths["item"] = out_dir / f"{name}.item.json"
    item_meta: dict[str, Any] = {str(i): {"title": t, "external_id": data.item_ids[i]}
                                 for i, t in enumerate(titles)}
    atomic_write_json(paths["item"], item_meta)
    return paths
