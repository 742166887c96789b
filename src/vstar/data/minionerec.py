"""MiniOneRec datasets: read their split CSVs, info.txt and item.json into InteractionData.

Their files, for a dataset ``<name>`` (e.g. ``Industrial_and_Scientific``), laid out flat in one
folder:

- ``<name>_{train,valid,test}.csv``: columns ``user_id, history_item_title, item_title,
  history_item_id, item_id, history_item_sid, item_sid``; list cells are Python literals
  (``"[3466, 2697]"``, ``"['<a_223><b_80><c_165>', ...]"``), parsed with ``ast.literal_eval``
  (literals only: a cell never runs code).
- ``<name>.index.json``: ``{"<item index>": ["<a_12>", "<b_200>", "<c_7>"]}``: its keys, in file
  order, are the catalogue.
- ``<name>.info.txt``: one line per item, ``SID \t title \t item index``.
- ``<name>.item.json`` (optional): ``{"<item index>": {"title", "description", ...}}``.

(MiniOneRec's own scripts keep these in ``data/Amazon/{train,valid,test,info,index}/``.)

The data stage only checks that each CSV SID string equals the index's tokens joined; the SIDs
themselves are parsed by the SID stage (``vstar.sid.minionerec.read_minionerec_sids``, or
``sid.method=index_json`` with ``sid.index_path=<folder>/<name>.index.json``). Writing a dataset
with its SIDs in this format is ``vstar.sid.minionerec.write_minionerec``.
"""

from __future__ import annotations

import ast
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vstar.core.errors import InputError
from vstar.core.io import read_json
from vstar.data.loaders import item_text_from_fields
from vstar.data.types import InteractionData

log = logging.getLogger(__name__)

MINIONEREC_COLUMNS = ("user_id", "history_item_title", "item_title", "history_item_id",
                      "item_id", "history_item_sid", "item_sid")
SPLIT_NAMES = ("train", "valid", "test")


def catalogue_sids(index_file: str | Path) -> tuple[list[str], list[str]]:
    """(item keys in file order, each item's SID string = its tokens joined) of an index.json."""
    index, _ = read_json(index_file)
    if not isinstance(index, dict):
        raise InputError('expected a JSON object {"<item>": ["<a_12>", ...]}', file=str(index_file))
    for key, tokens in index.items():
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise InputError(f"expected a non-empty list of SID tokens, got {tokens!r}",
                             file=str(index_file), field=key)
    return list(index), ["".join(tokens) for tokens in index.values()]


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


def find_name(folder: Path) -> str:
    found = sorted(folder.glob("*.index.json"))
    if len(found) != 1:
        raise InputError(f"cannot tell the dataset name: expected exactly one *.index.json, found "
                         f"{[p.name for p in found]}; pass name=", file=str(folder))
    return found[0].name[: -len(".index.json")]


def load_minionerec(folder: str | Path, name: str | None = None) -> InteractionData:
    """A MiniOneRec folder -> InteractionData rebuilt from its CSVs (their SIDs: ``vstar.sid``).

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
    name = name or find_name(folder)
    index_file = folder / f"{name}.index.json"
    keys, sid_str = catalogue_sids(index_file)
    key_to_idx = {k: i for i, k in enumerate(keys)}

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
    return data
