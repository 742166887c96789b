"""Loaders: LC-Rec JSON, RecBole atomic files, CSV / Parquet tables, and their input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vstar.data import item_text_from_fields, load_lcrec, load_recbole, load_table
from vstar.core.errors import InputError


# ----------------------------------------------------------------------------- LC-Rec


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_lcrec_catalogue_follows_item_file_and_keeps_unseen_items(tmp_path):
    inter = _write(tmp_path / "x.inter.json", json.dumps({"u1": [3, 1, 2], "u2": [2, 3]}))
    items = _write(tmp_path / "x.item.json", json.dumps({
        k: {"title": f"T{k}", "description": "", "brand": "", "categories": ""}
        for k in ["3", "1", "2", "9"]}))
    data = load_lcrec(inter, items, name="x")
    assert data.item_ids == ["3", "1", "2", "9"]          # file order, unseen item 9 kept
    assert data.user_ids == ["u1", "u2"]
    assert [s.tolist() for s in data.sequences] == [[0, 1, 2], [2, 0]]
    assert data.item_text == ["T3", "T1", "T2", "T9"]
    assert data.timestamps is None
    assert data.item_popularity().tolist() == [2, 1, 2, 0]


def test_lcrec_without_item_file_orders_integer_ids_numerically(tmp_path):
    inter = _write(tmp_path / "x.inter.json", json.dumps({"u1": [10, 2], "u2": [3, 10]}))
    data = load_lcrec(inter)
    assert data.item_ids == ["2", "3", "10"]
    assert [s.tolist() for s in data.sequences] == [[2, 0], [1, 2]]
    assert data.item_text is None


def test_item_text_order_skips_empty_fields_and_truncates_description():
    text = item_text_from_fields({"title": "Drill.", "brand": "", "categories": "Tools,Power",
                                  "description": "word " * 100})
    assert text == "Drill. Tools,Power. " + " ".join(["word"] * 60) + "..."
    # MiniOneRec stores descriptions as Python list literals
    assert item_text_from_fields({"title": "A", "description": "['one', 'two']"}) == "A. one two"


@pytest.mark.parametrize("text, line, needle", [
    ('{\n "u1": [1, 2],\n "u2": [3,, 4]\n}', 3, "invalid JSON"),
    ('{\n "u1": [1],\n "u1": [2]\n}', 3, "duplicate key 'u1'"),
    ('{"u1": [1],\n "u2": []}', 2, "empty history"),
    ('{"u1": [1, 2],\n "u2": ["2", 3]}', 2, "both as a number and as a string"),
])
def test_lcrec_errors_name_file_and_line(tmp_path, text, line, needle):
    inter = _write(tmp_path / "bad.inter.json", text)
    with pytest.raises(InputError) as e:
        load_lcrec(inter)
    assert e.value.line == line and e.value.file == str(inter)
    assert needle in str(e.value)


def test_lcrec_duplicate_field_inside_an_item_is_reported_on_its_line(tmp_path):
    items = _write(tmp_path / "x.item.json",
                   '{\n "1": {"title": "a"},\n "2": {"title": "b",\n  "title": "c"}\n}')
    inter = _write(tmp_path / "x.inter.json", '{"u": [1]}')
    with pytest.raises(InputError, match="duplicate key 'title'") as e:
        load_lcrec(inter, items)
    assert e.value.line == 4


def test_lcrec_unknown_item_names_user_and_item(tmp_path):
    inter = _write(tmp_path / "x.inter.json", '{"u1": [1],\n"u2": [1, 7]}')
    items = _write(tmp_path / "x.item.json", '{"1": {"title": "a"}}')
    with pytest.raises(InputError, match="unknown item '7'") as e:
        load_lcrec(inter, items)
    assert e.value.line == 2 and "u2" in str(e.value)


# ----------------------------------------------------------------------------- RecBole


@pytest.fixture
def recbole_folder(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    _write(folder / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
           "u1\ti2\t5\t30\nu1\ti1\t4\t10\nu2\ti1\t2\t20\nu1\ti3\t3\t30\n")
    _write(folder / "toy.item", "item_id:token\ttitle:token_seq\tyear:token\tprice:float\n"
           "i1\tAlpha One\t1999\t1.5\ni2\tBeta\t2000\t\ni3\tGamma\t\t3\ni4\tDelta\t2002\t4\n")
    return folder


def test_recbole_sorts_by_time_stably_and_reads_item_text(recbole_folder):
    data = load_recbole(recbole_folder)          # name defaults to the folder name
    assert data.name == "toy"
    assert data.item_ids == ["i1", "i2", "i3", "i4"]
    assert data.user_ids == ["u1", "u2"]
    assert [s.tolist() for s in data.sequences] == [[0, 1, 2], [0]]  # i2 before i3 (tie at 30)
    assert [t.tolist() for t in data.timestamps] == [[10, 30, 30], [20]]
    assert data.item_text == ["Alpha One. 1999", "Beta. 2000", "Gamma", "Delta. 2002"]
    price = data.item_features["price"]
    assert price[[0, 2, 3]].tolist() == [1.5, 3.0, 4.0] and math.isnan(price[1])


def test_recbole_min_rating_drops_low_ratings(recbole_folder):
    data = load_recbole(recbole_folder, "toy", min_rating=3)
    assert data.user_ids == ["u1"] and data.n_interactions == 3


def test_recbole_non_numeric_timestamp(recbole_folder):
    _write(recbole_folder / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
           "u1\ti1\t10\nu1\ti2\tyesterday\n")
    with pytest.raises(InputError, match="expected a number") as e:
        load_recbole(recbole_folder, "toy")
    assert (e.value.line, e.value.field) == (3, "timestamp")


def test_recbole_duplicate_item(recbole_folder):
    _write(recbole_folder / "toy.item", "item_id:token\ttitle:token_seq\ni1\tA\ni1\tB\n")
    with pytest.raises(InputError, match="duplicate item id 'i1'") as e:
        load_recbole(recbole_folder, "toy")
    assert e.value.line == 3 and e.value.file.endswith("toy.item")


# ----------------------------------------------------------------------------- tables


INTER_CSV = "user_id,item_id,timestamp,rating\nu1,10,3,5\nu1,20,1,4\nu2,10,2,1\n"
ITEMS_CSV = 'item_id,title,genre,price\n20,"Beta",Drama,2.5\n10,Alpha,,1.0\n30,Gamma,Comedy,3\n'


def test_table_csv_with_item_table(tmp_path):
    inter = _write(tmp_path / "inter.csv", INTER_CSV)
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    data = load_table(inter, items, text_cols=["title", "genre"], value_cols=["price"], name="t")
    assert data.item_ids == ["20", "10", "30"]   # item-table order; 30 kept though unseen
    assert data.user_ids == ["u1", "u2"]
    assert [s.tolist() for s in data.sequences] == [[0, 1], [1]]  # u1 sorted by time
    assert [t.tolist() for t in data.timestamps] == [[1, 3], [2]]
    assert data.item_text == ["Beta. Drama", "Alpha", "Gamma. Comedy"]
    assert data.item_features["price"].tolist() == [2.5, 1.0, 3.0]
    # text columns default to every text column but the id
    assert load_table(inter, items).item_text == ["Beta. Drama", "Alpha", "Gamma. Comedy"]


def test_table_min_rating(tmp_path):
    inter = _write(tmp_path / "inter.csv", INTER_CSV)
    data = load_table(inter, min_rating=3)
    assert data.user_ids == ["u1"] and data.item_ids == ["10", "20"]
    assert data.sequences[0].tolist() == [1, 0]


def test_table_parquet_with_datetime_timestamps(tmp_path):
    inter = tmp_path / "inter.parquet"
    pq.write_table(pa.table({
        "user": [1, 1, 2],
        "item": [10, 20, 10],
        "when": pa.array(np.array(["2020-01-02", "2020-01-01", "2020-01-03"],
                                  dtype="datetime64[s]")),
    }), inter)
    data = load_table(inter, user_col="user", item_col="item", time_col="when")
    assert data.user_ids == ["1", "2"] and data.item_ids == ["10", "20"]
    assert data.sequences[0].tolist() == [1, 0]
    assert data.timestamps[0][1] - data.timestamps[0][0] == 86400.0


def test_table_unknown_item_names_file_and_row(tmp_path):
    inter = _write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,10,1\nu1,99,2\n")
    items = _write(tmp_path / "items.csv", "item_id,title\n10,A\n")
    with pytest.raises(InputError, match="unknown item '99'") as e:
        load_table(inter, items)
    assert (e.value.file, e.value.line, e.value.field) == (str(inter), 3, "item_id")
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "item_id": ["10", "99"],
                             "timestamp": [1, 2]}), tmp_path / "inter.parquet")
    with pytest.raises(InputError, match="row 1: unknown item '99'"):
        load_table(tmp_path / "inter.parquet", items)


@pytest.mark.parametrize("inter_text, items_text, line, field, needle", [
    ("user_id,item_id\nu1,10\n", None, 1, "timestamp", "missing column 'timestamp'"),
    ("user_id,item_id,timestamp\nu1,10,1\nu1,10,abc\n", None, 3, "timestamp", "numeric"),
    ("user_id,item_id,timestamp\nu1,10,1\n", "item_id,title\n10,A\n11,B\n10,C\n", 4, "item_id",
     "duplicate item id '10' (first at line 2)"),
])
def test_table_errors(tmp_path, inter_text, items_text, line, field, needle):
    inter = _write(tmp_path / "inter.csv", inter_text)
    items = _write(tmp_path / "items.csv", items_text) if items_text else None
    with pytest.raises(InputError) as e:
        load_table(inter, items)
    assert (e.value.line, e.value.field) == (line, field)
    assert needle in str(e.value)


def test_table_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="extension"):
        load_table(_write(tmp_path / "inter.txt", INTER_CSV))
