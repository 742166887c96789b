"""Raw logs -> ``InteractionData``: LC-Rec JSON, RecBole atomic files, CSV / Parquet tables.

Every loader returns items and users as dense 0-based indices with the user's own ids kept as
strings (``item_ids`` / ``user_ids``), each user's items in chronological order. Bad input raises
``InputError`` naming the file, the line (or row) and the field.

Catalogue order (item index order): the item file's order when an item file is given (items that
nobody interacted with stay in the catalogue); otherwise the order of first appearance in the
interactions, except that LC-Rec files whose item ids are all integers keep their numeric order.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vstar.data.types import InteractionData
from vstar.core.errors import InputError
from vstar.core.io import read_json

log = logging.getLogger(__name__)

ITEM_TEXT_FIELDS = ("title", "brand", "categories", "description")  # LC-Rec item json order
MAX_DESCRIPTION_CHARS = 300
MAX_CATEGORIES_CHARS = 200


# ----------------------------------------------------------------------------- JSON


def _key_line(text: str, key: str, occurrence: int = 0) -> int | None:
    """1-based line of the ``occurrence``-th ``"key":`` in ``text`` (best effort)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
    matches = list(pattern.finditer(text))
    if len(matches) <= occurrence:
        return None
    return text.count("\n", 0, matches[occurrence].start()) + 1



# ----------------------------------------------------------------------------- item text


def _as_text(value: Any, sep: str) -> str:
    """A field value as one string; lists (also lists written as Python literals) are joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("[") and s.endswith("]"):  # e.g. "['first line', 'second']"
            try:
                parsed = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                return s
            if isinstance(parsed, list):
                return _as_text(parsed, sep)
        return s
    if isinstance(value, (list, tuple)):
        return sep.join(t for t in (_as_text(v, sep) for v in value) if t)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + "..."


def item_text_from_fields(fields: dict[str, Any], order: Sequence[str] = ITEM_TEXT_FIELDS,
                          max_description_chars: int = MAX_DESCRIPTION_CHARS) -> str:
    """One text per item: "title. brand. categories. description", skipping empty fields.

    Whitespace is collapsed and HTML entities (``&amp;``) decoded. The description is cut to
    about ``max_description_chars`` characters and the categories to 200 (at a word boundary).
    """
    parts = []
    for name in order:
        sep = ", " if name == "categories" else " "
        text = html.unescape(" ".join(_as_text(fields.get(name), sep).split())).rstrip(" .")
        if name in ("description", "categories"):  # the long fields
            text = _shorten(text, max_description_chars if name == "description"
                            else MAX_CATEGORIES_CHARS)
        if text:
            parts.append(text)
    return ". ".join(parts)


# ----------------------------------------------------------------------------- assembly


def _assemble(name: str, users: list[str], items: list[str], times: np.ndarray | None,
              catalogue: list[str] | None, item_text: list[str] | None,
              item_features: dict[str, np.ndarray] | None, *, file: str,
              row_where: Callable[[int], tuple[int | None, str]],
              item_field: Callable[[int], str],
              ratings: np.ndarray | None = None) -> InteractionData:
    """Long format (one row per interaction) -> InteractionData.

    Users keep their order of first appearance; each user's rows are sorted by time (stable, so
    rows with equal timestamps keep file order). For errors, ``row_where(r)`` -> (line, text)
    and ``item_field(r)`` -> the field name of row r's item. ``ratings`` (one per row, optional)
    follow their rows into ``InteractionData.ratings``.
    """
    if catalogue is None:
        catalogue = list(dict.fromkeys(items))
    item_index = {item: i for i, item in enumerate(catalogue)}
    rows_of_user: dict[str, list[int]] = {}
    item_idx = np.empty(len(items), dtype=np.int64)
    for r, (u, it) in enumerate(zip(users, items)):
        i = item_index.get(it)
        if i is None:
            line, where = row_where(r)
            raise InputError(f"{where}unknown item {it!r}: not in the item table", file=file,
                             line=line, field=item_field(r))
        item_idx[r] = i
        rows_of_user.setdefault(u, []).append(r)
    sequences, timestamps = [], [] if times is not None else None
    user_ratings = [] if ratings is not None else None
    for rows in rows_of_user.values():
        rows_arr = np.asarray(rows, dtype=np.int64)
        if times is not None:
            rows_arr = rows_arr[np.argsort(times[rows_arr], kind="stable")]
            timestamps.append(times[rows_arr].astype(np.float64))
        sequences.append(item_idx[rows_arr])
        if ratings is not None:
            user_ratings.append(np.asarray(ratings, dtype=np.float64)[rows_arr])
    return InteractionData(name=name, item_ids=list(catalogue), user_ids=list(rows_of_user),
                           sequences=sequences, timestamps=timestamps, item_text=item_text,
                           item_features=dict(item_features or {}), ratings=user_ratings)


# ----------------------------------------------------------------------------- LC-Rec


def load_lcrec(inter_path: str | Path, item_path: str | Path | None = None,
               name: str = "lcrec") -> InteractionData:
    """LC-Rec / LETTER JSON: ``{"<user>": [item, ...]}`` (chronological, no timestamps).

    ``item_path`` (optional) is ``{"<item>": {"title", "description", "brand", "categories"}}``;
    its key order is the catalogue order and its fields give ``item_text``.
    """
    inter, text = read_json(inter_path)
    file = str(inter_path)
    if not isinstance(inter, dict):
        raise InputError("expected a JSON object {\"<user>\": [item, ...]}", file=file, line=1)
    users, items = [], []
    as_number: dict[str, str] = {}                  # id text -> first user who wrote it as a number
    as_string: dict[str, str] = {}
    for user, seq in inter.items():
        if not isinstance(seq, list) or not seq:
            what = "empty history list" if isinstance(seq, list) else f"a {type(seq).__name__}"
            raise InputError(f"user {user!r} has {what}; expected a non-empty list of item ids",
                             file=file, line=_key_line(text, user), field=user)
        for it in seq:
            if isinstance(it, bool) or not isinstance(it, (int, str)):
                raise InputError(f"user {user!r}: item id {it!r} is not an integer or string",
                                 file=file, line=_key_line(text, user), field=user)
            seen, other = (as_number, as_string) if isinstance(it, int) else (as_string, as_number)
            seen.setdefault(str(it), user)
            if str(it) in other:                    # 1 and "1": one id or two? refuse to guess
                raise InputError(f"item id {str(it)!r} is written both as a number and as a "
                                 f"string (users {other[str(it)]!r} and {user!r}); write every "
                                 f"id the same way", file=file, line=_key_line(text, user),
                                 field=user)
            users.append(user)
            items.append(str(it))

    catalogue, item_text = None, None
    if item_path is not None:
        meta, _ = read_json(item_path)
        if not isinstance(meta, dict):
            raise InputError("expected a JSON object {\"<item>\": {\"title\": ...}}",
                             file=str(item_path), line=1)
        catalogue, item_text = [], []
        for key, fields in meta.items():
            if not isinstance(fields, dict):
                raise InputError(f"item {key!r}: expected an object with title/description/...",
                                 file=str(item_path), field=key)
            catalogue.append(key)
            item_text.append(item_text_from_fields(fields))
    elif all(it.lstrip("-").isdigit() for it in items):
        catalogue = sorted(set(items), key=int)

    def where(r: int) -> tuple[int | None, str]:
        return _key_line(text, users[r]), f"user {users[r]!r}: "

    data = _assemble(name, users, items, None, catalogue, item_text, None, file=file,
                     row_where=where, item_field=users.__getitem__)
    log.info("loaded %s: %d users, %d items, %d interactions", name, data.n_users, data.n_items,
             data.n_interactions)
    return data


# ----------------------------------------------------------------------------- RecBole


_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic_file(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str], list[int]]:
    """A RecBole atomic file (tab separated, header ``name:type``) -> (columns, types, lines).

    ``lines[r]`` is the 1-based file line of data row r (blank lines are skipped).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names, types = [], {}
        for h in header:
            fname, _, ftype = h.partition(":")
            if ftype not in _RECBOLE_TYPES:
                raise InputError(f"header field {h!r}: expected 'name:type' with type in "
                                 f"{_RECBOLE_TYPES}", file=str(path), line=1, field=fname)
            names.append(fname)
            types[fname] = ftype
        columns: dict[str, list[str]] = {n: [] for n in names}
        lines: list[int] = []
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            values = line.split("\t")
            if len(values) != len(names):
                raise InputError(f"expected {len(names)} tab-separated fields, got {len(values)}",
                                 file=str(path), line=lineno)
            for n, v in zip(names, values):
                columns[n].append(v)
            lines.append(lineno)
    return columns, types, lines


def _floats(values: list[str], *, file: str, field: str, line_of, allow_empty: bool = False
            ) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for r, v in enumerate(values):
        try:
            out[r] = float(v) if (v.strip() or not allow_empty) else np.nan
        except ValueError:
            raise InputError(f"expected a number, got {v!r}", file=file, line=line_of(r),
                             field=field) from None
    return out


def load_recbole(folder: str | Path, name: str | None = None, *, user_col: str = "user_id",
                 item_col: str = "item_id", time_col: str = "timestamp",
                 rating_col: str = "rating", min_rating: float | None = None) -> InteractionData:
    """RecBole atomic files ``<folder>/<name>.inter`` and optional ``<folder>/<name>.item``.

    ``name`` defaults to the folder name. Interactions are sorted per user by timestamp (stable).
    Item text joins the item file's token / token_seq fields ("Toy Story. 1995. Animation
    Children's Comedy" for ml-100k); its float fields become ``item_features``. With
    ``min_rating``, interactions whose rating is below it are dropped. A ``rating_col`` column,
    when there is one, is kept as ``InteractionData.ratings``.
    """
    folder = Path(folder)
    name = name or folder.name
    inter_file = folder / f"{name}.inter"
    cols, _, lines = read_atomic_file(inter_file)
    line_of = lines.__getitem__
    for c in (user_col, item_col):
        if c not in cols:
            raise InputError(f"missing column {c!r} (have {list(cols)})", file=str(inter_file),
                             line=1, field=c)
    keep = np.ones(len(cols[user_col]), dtype=bool)
    ratings = None
    if rating_col and rating_col in cols:
        ratings = _floats(cols[rating_col], file=str(inter_file), field=rating_col,
                          line_of=line_of)
    if min_rating is not None:
        if ratings is None:
            raise InputError(f"min_rating is set but there is no {rating_col!r} column",
                             file=str(inter_file), line=1, field=rating_col)
        keep = ratings >= min_rating
        log.info("%s: min_rating=%s keeps %d of %d interactions", name, min_rating, keep.sum(),
                 len(keep))
    times = None
    if time_col in cols:
        times = _floats(cols[time_col], file=str(inter_file), field=time_col, line_of=line_of)
    rows = np.flatnonzero(keep)
    users = [cols[user_col][r] for r in rows]
    items = [cols[item_col][r] for r in rows]

    catalogue, item_text, features = None, None, {}
    item_file = folder / f"{name}.item"
    if item_file.is_file():
        icols, itypes, ilines = read_atomic_file(item_file)
        if item_col not in icols:
            raise InputError(f"missing column {item_col!r}", file=str(item_file), line=1,
                             field=item_col)
        catalogue = icols[item_col]
        _check_unique(catalogue, file=str(item_file), where=lambda r: (ilines[r], ""),
                      field=item_col)
        text_fields = [c for c, t in itypes.items()
                       if t in ("token", "token_seq") and c != item_col]
        if text_fields:
            item_text = [". ".join(v for v in (icols[c][i].strip() for c in text_fields) if v)
                         for i in range(len(catalogue))]
        for c, t in itypes.items():
            if t == "float":
                features[c] = _floats(icols[c], file=str(item_file), field=c,
                                      line_of=ilines.__getitem__, allow_empty=True)

    data = _assemble(name, users, items, None if times is None else times[rows], catalogue,
                     item_text, features, file=str(inter_file),
                     row_where=lambda r: (line_of(int(rows[r])), ""),
                     item_field=lambda r: item_col,
                     ratings=None if ratings is None else ratings[rows])
    log.info("loaded %s: %d users, %d items, %d interactions", name, data.n_users, data.n_items,
             data.n_interactions)
    return data


def _check_unique(ids: Sequence[str], *, file: str, where, field: str) -> None:
    """Raise on the second occurrence of an item id. ``where(r)`` -> (line, text) of row r."""
    first: dict[str, int] = {}
    for r, it in enumerate(ids):
        if it in first:
            line, txt = where(r)
            first_line, first_txt = where(first[it])
            first_at = f"line {first_line}" if first_line is not None else first_txt.rstrip(": ")
            raise InputError(f"{txt}duplicate item id {it!r} (first at {first_at})", file=file,
                             line=line, field=field)
        first[it] = r


# ----------------------------------------------------------------------------- tables


def _read_table(path: Path, string_cols: Sequence[str]) -> tuple[pa.Table, bool]:
    """CSV / TSV / Parquet by extension -> (table, is_csv). ``string_cols`` are read as text."""
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_cols},
                                           strings_can_be_null=True)
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert), True
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path), False
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read table: {e}", file=str(path)) from None
    raise InputError(f"unknown table extension {suffix!r}: expected .csv, .tsv or .parquet",
                     file=str(path))


def _where_fn(is_csv: bool):
    """Row index -> (line, text). CSV rows are file lines (header = line 1); Parquet rows are
    0-based row numbers."""
    if is_csv:
        return lambda r: (r + 2, "")
    return lambda r: (None, f"row {r}: ")


def _require(table: pa.Table, cols: Sequence[str], file: Path) -> None:
    for c in cols:
        if c not in table.column_names:
            raise InputError(f"missing column {c!r} (have {table.column_names})", file=str(file),
                             line=1 if file.suffix.lower() in (".csv", ".tsv") else None, field=c)


def _string_column(table: pa.Table, col: str, file: Path, where) -> list[str]:
    arr = table.column(col)
    nulls = pc.is_null(arr)
    if pc.any(nulls).as_py():
        r = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
        line, txt = where(r)
        raise InputError(f"{txt}empty {col!r}", file=str(file), line=line, field=col)
    return [str(v) for v in arr.cast(pa.string()).to_pylist()]


def _numeric_column(table: pa.Table, col: str, file: Path, where, allow_null: bool = False,
                    what: str = "a number") -> np.ndarray:
    arr = table.column(col)
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):  # datetimes -> seconds since epoch
        arr = arr.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        values = arr.to_pylist()
        out = np.empty(len(values), dtype=np.float64)
        for r, v in enumerate(values):
            try:
                out[r] = np.nan if v is None else float(v)
            except ValueError:
                line, txt = where(r)
                raise InputError(f"{txt}expected {what}, got {v!r}", file=str(file), line=line,
                                 field=col) from None
        arr = pa.array(out, mask=np.isnan(out))
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
        raise InputError(f"expected {what}, got column type {t}", file=str(file), field=col)
    out = arr.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    if not allow_null and np.isnan(out).any():
        line, txt = where(int(np.flatnonzero(np.isnan(out))[0]))
        raise InputError(f"{txt}missing value, expected {what}", file=str(file), line=line,
                         field=col)
    return out


def load_table(interactions_path: str | Path, items_path: str | Path | None = None, *,
               user_col: str = "user_id", item_col: str = "item_id",
               time_col: str | None = "timestamp", rating_col: str = "rating",
               min_rating: float | None = None, text_cols: Sequence[str] = (),
               value_cols: Sequence[str] = (), name: str = "table") -> InteractionData:
    """A plain interaction table (CSV, TSV or Parquet, chosen by extension) plus an item table.

    Interactions need ``user_col``, ``item_col`` and ``time_col`` (numeric or a datetime; set
    ``time_col=None`` when file order is already chronological). With ``min_rating``, rows whose
    ``rating_col`` is below it are dropped. The optional item table needs ``item_col``; its
    ``text_cols`` (default: every text column but the id) are joined into ``item_text`` and its
    ``value_cols`` become numeric ``item_features``. Items of the item table that nobody
    interacted with stay in the catalogue; an interaction with an item absent from a given item
    table is an error.
    """
    inter_file = Path(interactions_path)
    table, is_csv = _read_table(inter_file, [user_col, item_col])
    where = _where_fn(is_csv)
    _require(table, [user_col, item_col] + ([time_col] if time_col else []), inter_file)
    if table.num_rows == 0:
        raise InputError("no interactions", file=str(inter_file))
    users = _string_column(table, user_col, inter_file, where)
    items = _string_column(table, item_col, inter_file, where)
    times = None
    if time_col:
        times = _numeric_column(table, time_col, inter_file, where, what="a numeric timestamp")
    rows = np.arange(table.num_rows)
    ratings = None                      # kept as InteractionData.ratings when the column exists
    if rating_col and rating_col in table.column_names:
        ratings = _numeric_column(table, rating_col, inter_file, where,
                                  allow_null=min_rating is None)
    if min_rating is not None:
        _require(table, [rating_col], inter_file)
        rows = np.flatnonzero(ratings >= min_rating)
        log.info("%s: min_rating=%s keeps %d of %d interactions", name, min_rating, len(rows),
                 table.num_rows)
        users = [users[r] for r in rows]
        items = [items[r] for r in rows]
        times = None if times is None else times[rows]
        ratings = ratings[rows]

    catalogue, item_text, features = None, None, {}
    if items_path is not None:
        item_file = Path(items_path)
        itable, item_is_csv = _read_table(item_file, [item_col] + list(text_cols))
        iwhere = _where_fn(item_is_csv)
        _require(itable, [item_col] + list(text_cols) + list(value_cols), item_file)
        catalogue = _string_column(itable, item_col, item_file, iwhere)
        _check_unique(catalogue, file=str(item_file), where=iwhere, field=item_col)
        cols = list(text_cols) or [c for c in itable.column_names if c != item_col and
                                   pa.types.is_string(itable.schema.field(c).type)]
        if cols:
            texts = [[_as_text(v, " ") for v in itable.column(c).to_pylist()] for c in cols]
            item_text = [". ".join(t[i].rstrip(" .") for t in texts if t[i].rstrip(" ."))
                         for i in range(itable.num_rows)]
        for c in value_cols:
            features[c] = _numeric_column(itable, c, item_file, iwhere, allow_null=True)

    data = _assemble(name, users, items, times, catalogue, item_text, features,
                     file=str(inter_file), row_where=lambda r: where(int(rows[r])),
                     item_field=lambda r: item_col, ratings=ratings)
    log.info("loaded %s: %d users, %d items, %d interactions", name, data.n_users, data.n_items,
             data.n_interactions)
    return data
