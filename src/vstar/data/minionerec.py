"""MiniOneRec interoperability: read their split CSVs / SID index and write ours in their format.

Their files, for a dataset ``<name>`` (e.g. ``Industrial_and_Scientific``), laid out flat in one
folder as in ``../shared/data/minionerec-industrial/``:

- ``<name>_{train,valid,test}.csv``: columns ``user_id, history_item_title, item_title,
  history_item_id, item_id, history_item_sid, item_sid``; list cells are Python literals
  (``"[3466, 2697]"``, ``"['<a_223><b_80><c_165>', ...]"``), parsed with ``ast.literal_eval``.
- ``<name>.index.json``: ``{"<item index>": ["<a_12>", "<b_200>", "<c_7>"]}`` (as LC-Rec).
- ``<name>.info.txt``: one line per item, ``SID \\t title \\t item index``.
- ``<name>.item.json`` (optional): ``{"<item index>": {"title", "description", ...}}``.

(MiniOneRec's own scripts keep these in ``data/Amazon/{train,valid,test,info,index}/``; move the
files there to train with their code.)

A SID string is the concatenation of one token per level, ``<a_12><b_200><c_7>``: the letter is
the level (a = first), the number the code at that level.
"""

from __future__ import annotations

import ast
import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vstar.data.loaders import item_text_from_fields, read_json
from vstar.data.types import InteractionData, Splits, SplitRows
from vstar.errors import InputError
from vstar.io import atomic_write_json, atomic_write_text
from vstar.sid.index_io import save_index_json, sid_token
from vstar.sid.types import SemanticIds

log = logging.getLogger(__name__)

MINIONEREC_COLUMNS = ("user_id", "history_item_title", "item_title", "history_item_id",
                      "item_id", "history_item_sid", "item_sid")
SPLIT_NAMES = ("train", "valid", "test")

_TOKEN = re.compile(r"<([a-z])_(\d+)>")
_SID = re.compile(r"(?:<[a-z]_\d+>)+")


# ----------------------------------------------------------------------------- SID strings


def parse_sid(sid: str | Sequence[str]) -> list[int]:
    """``"<a_12><b_200><c_7>"`` (or its token list) -> ``[12, 200, 7]``.

    Raises ``ValueError`` unless the levels are a, b, c, ... in order.
    """
    text = sid if isinstance(sid, str) else "".join(sid)
    if not _SID.fullmatch(text):
        raise ValueError(f"{text!r} is not a SID string like '<a_12><b_200><c_7>'")
    codes = []
    for level, (letter, code) in enumerate(_TOKEN.findall(text)):
        if ord(letter) - ord("a") != level:
            raise ValueError(f"{text!r}: token {level + 1} has level letter {letter!r}, "
                             f"expected {chr(ord('a') + level)!r}")
        codes.append(int(code))
    return codes


def sid_tokens(codes: Sequence[int]) -> list[str]:
    """``[12, 200, 7]`` -> ``["<a_12>", "<b_200>", "<c_7>"]``."""
    return [sid_token(level, c) for level, c in enumerate(codes)]


def format_sid(codes: Sequence[int]) -> str:
    """``[12, 200, 7]`` -> ``"<a_12><b_200><c_7>"``."""
    return "".join(sid_tokens(codes))


def semantic_ids_from_strings(sids: Sequence[str | Sequence[str]],
                              codebook_size: int | None = None, *, file: str | None = None,
                              keys: Sequence[str] | None = None) -> SemanticIds:
    """One SID per item (string or token list, all with the same number of levels).

    ``codebook_sizes``: ``codebook_size`` for every level if given; otherwise inferred per level
    as the smallest power of two >= max code + 1 (SID files do not store it; tokenizers use
    power-of-two codebooks such as 256, and a level whose top codes went unused by chance still
    gets the right size).
    """
    rows = []
    for i, sid in enumerate(sids):
        try:
            rows.append(parse_sid(sid))
        except ValueError as e:
            raise InputError(str(e), file=file, field=keys[i] if keys else str(i)) from None
        if len(rows[-1]) != len(rows[0]):
            raise InputError(f"SID {sid!r} has {len(rows[-1])} levels, the first item has "
                             f"{len(rows[0])}", file=file, field=keys[i] if keys else str(i))
    codes = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)  # [n_items, n_levels]
    if codebook_size is not None:
        if codes.size and codes.max() >= codebook_size:
            raise InputError(f"code {codes.max()} >= codebook_size {codebook_size}", file=file)
        sizes = [int(codebook_size)] * codes.shape[1]
    else:
        # smallest power of two > max code, e.g. 251 -> 256, 255 -> 256, 256 -> 512
        sizes = [1 << int(m).bit_length() for m in codes.max(axis=0)] if codes.size else []
    return SemanticIds(codes=codes, codebook_sizes=sizes)


def read_sid_index(path: str | Path, codebook_size: int | None = None
                   ) -> tuple[list[str], SemanticIds]:
    """``{"<item>": ["<a_12>", "<b_200>", ...]}`` -> (item keys in file order, SemanticIds)."""
    index, _ = read_json(path)
    if not isinstance(index, dict):
        raise InputError('expected a JSON object {"<item>": ["<a_12>", ...]}', file=str(path))
    keys = list(index)
    return keys, semantic_ids_from_strings([index[k] for k in keys], codebook_size,
                                           file=str(path), keys=keys)


def write_sid_index(path: str | Path, sids: SemanticIds, item_keys: Sequence[str] | None = None
                    ) -> None:
    """Write ``{"<item>": ["<a_12>", ...]}`` (keys default to the item indices 0..N-1)."""
    keys = [str(i) for i in range(sids.n_items)] if item_keys is None else list(item_keys)
    save_index_json(path, sids, keys)


# ----------------------------------------------------------------------------- reading


@dataclass
class MiniOneRecRow:
    """One CSV row: the user's recent items and the next one (ids are MiniOneRec item indices)."""

    user_id: str
    history_item_title: list[str]
    item_title: str
    history_item_id: list[int]
    item_id: int
    history_item_sid: list[str]
    item_sid: str


def _literal_list(cell: str, elem: type, *, file: str, line: int, field: str) -> list:
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        raise InputError(f"expected a Python list literal, got {cell[:60]!r}", file=file,
                         line=line, field=field) from None
    if not isinstance(value, list) or not all(isinstance(v, elem) and not isinstance(v, bool)
                                              for v in value):
        raise InputError(f"expected a list of {elem.__name__}, got {cell[:60]!r}", file=file,
                         line=line, field=field)
    return value


def read_minionerec_csv(path: str | Path) -> list[MiniOneRecRow]:
    """Read one MiniOneRec split CSV (list cells are parsed with ``ast.literal_eval``)."""
    return [row for _, row in _read_rows(Path(path))]


def _read_rows(path: Path) -> list[tuple[int, MiniOneRecRow]]:
    """(line where the row ends, row) for every row of a MiniOneRec CSV."""
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    file = str(path)
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MINIONEREC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"missing column {missing[0]!r}; expected {list(MINIONEREC_COLUMNS)}",
                             file=file, line=1, field=missing[0])
        try:
            for rec in reader:
                line = reader.line_num
                if any(rec[c] is None for c in MINIONEREC_COLUMNS):
                    raise InputError("too few fields", file=file, line=line)
                try:
                    item_id = int(rec["item_id"])
                except ValueError:
                    raise InputError(f"expected an integer item index, got {rec['item_id']!r}",
                                     file=file, line=line, field="item_id") from None
                row = MiniOneRecRow(
                    user_id=rec["user_id"],
                    history_item_title=_literal_list(rec["history_item_title"], str, file=file,
                                                     line=line, field="history_item_title"),
                    item_title=rec["item_title"],
                    history_item_id=_literal_list(rec["history_item_id"], int, file=file,
                                                  line=line, field="history_item_id"),
                    item_id=item_id,
                    history_item_sid=_literal_list(rec["history_item_sid"], str, file=file,
                                                   line=line, field="history_item_sid"),
                    item_sid=rec["item_sid"],
                )
                if not (len(row.history_item_id) == len(row.history_item_sid)
                        == len(row.history_item_title)):
                    raise InputError("history_item_id, history_item_sid and history_item_title "
                                     "have different lengths", file=file, line=line)
                rows.append((line, row))
        except csv.Error as e:
            raise InputError(f"malformed CSV: {e}", file=file, line=reader.line_num) from None
    return rows


def read_minionerec_info(path: str | Path) -> list[tuple[str, str, int]]:
    """``info.txt`` lines ``SID \\t title \\t item index`` -> [(sid, title, item index)]."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                raise InputError(f"expected 'SID<TAB>title<TAB>item index', got {len(fields)} "
                                 "field(s)", file=str(path), line=lineno)
            sid, title, item = fields[0], "\t".join(fields[1:-1]), fields[-1]
            try:
                out.append((sid, title, int(item)))
            except ValueError:
                raise InputError(f"expected an integer item index, got {item!r}", file=str(path),
                                 line=lineno, field="item_id") from None
    return out


def _merge_window(seq: list[int], window: list[int]) -> None:
    """Append ``window`` (history + [target]) to ``seq``, overlapping the longest suffix of
    ``seq`` that equals a prefix of ``window``; the target is always appended."""
    for k in range(min(len(seq), len(window) - 1), -1, -1):
        if seq[len(seq) - k:] == window[:k]:
            seq.extend(window[k:])
            return


def _find_name(folder: Path) -> str:
    found = sorted(folder.glob("*.index.json"))
    if len(found) != 1:
        raise InputError(f"cannot tell the dataset name: expected exactly one *.index.json, found "
                         f"{[p.name for p in found]}; pass name=", file=str(folder))
    return found[0].name[: -len(".index.json")]


def load_minionerec(folder: str | Path, name: str | None = None,
                    codebook_size: int | None = None) -> tuple[InteractionData, SemanticIds]:
    """A MiniOneRec folder -> (InteractionData rebuilt from its CSVs, SemanticIds of its index).

    The catalogue is ``<name>.index.json`` in key order; ``item_ids`` are its keys, or the
    ``external_id`` fields of ``<name>.item.json`` when ``write_minionerec`` wrote it. Each user's
    sequence is rebuilt from the rows of ``<name>_{train,valid,test}.csv`` (those present), read
    in that order: a row's history + target is appended with the longest overlap with what the
    user already has. Without the train CSV, a sequence starts at the user's first valid/test
    history (at most 10 items in their files). There are no timestamps in these files.
    Item text comes from ``<name>.item.json`` if present, else from the titles of ``info.txt``
    or of the CSVs. A CSV SID that differs from the index's SID for that item is an error.
    """
    folder = Path(folder)
    name = name or _find_name(folder)
    index_file = folder / f"{name}.index.json"
    keys, sids = read_sid_index(index_file, codebook_size)
    key_to_idx = {k: i for i, k in enumerate(keys)}
    sid_str = [format_sid(c) for c in sids.codes.tolist()]

    csv_files = [folder / f"{name}_{s}.csv" for s in SPLIT_NAMES]
    csv_files = [p for p in csv_files if p.is_file()]
    if not csv_files:
        raise InputError(f"no {name}_{{train,valid,test}}.csv found", file=str(folder))
    seqs: dict[str, list[int]] = {}
    titles: dict[int, str] = {}
    for path in csv_files:
        for lineno, row in _read_rows(path):
            window = []
            for item, sid in zip(row.history_item_id + [row.item_id],
                                 row.history_item_sid + [row.item_sid]):
                i = key_to_idx.get(str(item))
                if i is None:
                    raise InputError(f"unknown item {item}: not in {index_file.name}",
                                     file=str(path), line=lineno, field="item_id")
                if sid != sid_str[i]:
                    raise InputError(f"item {item} has SID {sid!r} here but {sid_str[i]!r} in "
                                     f"{index_file.name}", file=str(path), line=lineno,
                                     field="item_sid")
                window.append(i)
            for item, title in zip(row.history_item_id + [row.item_id],
                                   row.history_item_title + [row.item_title]):
                titles.setdefault(key_to_idx[str(item)], title)
            _merge_window(seqs.setdefault(row.user_id, []), window)

    item_text, item_ids = None, list(keys)
    item_file, info_file = folder / f"{name}.item.json", folder / f"{name}.info.txt"
    if item_file.is_file():
        meta, _ = read_json(item_file)
        if not isinstance(meta, dict):
            raise InputError('expected a JSON object {"<item>": {"title": ...}}',
                             file=str(item_file))
        fields = [meta.get(k) if isinstance(meta.get(k), dict) else {} for k in keys]
        item_text = [item_text_from_fields(f) for f in fields]
        if all("external_id" in f for f in fields):  # written by write_minionerec
            item_ids = [str(f["external_id"]) for f in fields]
    elif info_file.is_file():
        info_titles = {str(item): title for _, title, item in read_minionerec_info(info_file)}
        item_text = [info_titles.get(k, "") for k in keys]
    elif titles:
        item_text = [titles.get(i, "") for i in range(len(keys))]

    data = InteractionData(name=name, item_ids=item_ids, user_ids=list(seqs),
                           sequences=[np.asarray(s, dtype=np.int64) for s in seqs.values()],
                           timestamps=None, item_text=item_text)
    log.info("loaded MiniOneRec %s: %d users, %d items, %d interactions rebuilt from %s", name,
             data.n_users, data.n_items, data.n_interactions, [p.name for p in csv_files])
    return data, sids


# ----------------------------------------------------------------------------- writing


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
    write_sid_index(paths["index"], sids)
    paths["info"] = out_dir / f"{name}.info.txt"
    atomic_write_text(paths["info"], "".join(f"{s}\t{t}\t{i}\n"
                                             for i, (s, t) in enumerate(zip(sid_str, titles))))
    paths["item"] = out_dir / f"{name}.item.json"
    item_meta: dict[str, Any] = {str(i): {"title": t, "external_id": data.item_ids[i]}
                                 for i, t in enumerate(titles)}
    atomic_write_json(paths["item"], item_meta)
    return paths
