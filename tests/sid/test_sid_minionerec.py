"""MiniOneRec interop: SID strings, their CSV / info / index files, and a round trip.

Reading their CSVs is the data stage's (vstar.data.minionerec), their SIDs and writing the SID
stage's (vstar.sid.minionerec); both share the one SID-string parser (vstar.sid.tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vstar.core.errors import InputError
from vstar.data import (InteractionData, leave_one_out, load_minionerec, read_minionerec_csv,
                        read_minionerec_info, time_split)
from vstar.sid import codes_from_sids, format_sid, parse_sid, read_minionerec_sids, write_minionerec
from vstar.sid.types import SemanticIds

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
INDUSTRIAL = SHARED / "minionerec-industrial"
HEADER = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid"


def test_parse_and_format_sid():
    assert parse_sid("<a_12><b_200><c_7>") == [12, 200, 7]
    assert parse_sid(["<a_1>", "<b_2>"]) == [1, 2]
    assert format_sid([12, 200, 7]) == "<a_12><b_200><c_7>"
    with pytest.raises(ValueError, match="expected 'b'"):
        parse_sid("<a_1><c_2>")
    with pytest.raises(ValueError):
        parse_sid("a_1 b_2")


def test_codebook_sizes_are_max_code_plus_one_or_the_configured_sizes():
    sids = codes_from_sids(["<a_1><b_0>", "<a_3><b_5>", "<a_0><b_255>"])
    assert sids.codes.tolist() == [[1, 0], [3, 5], [0, 255]]
    assert sids.codebook_sizes == [4, 256]
    assert codes_from_sids(["<a_1><b_0>"], [256, 256]).codebook_sizes == [256, 256]
    with pytest.raises(InputError, match="outside the configured codebook"):
        codes_from_sids(["<a_1><b_300>"], [256, 256])
    with pytest.raises(InputError, match="expected 2 tokens"):
        codes_from_sids(["<a_1><b_0>", "<a_1>"])


def _toy():
    seqs = [[0, 1, 2, 3, 4], [2, 3, 4], [4, 0, 1, 2]]
    data = InteractionData(
        name="toy", item_ids=["i0", "i1", "i2", "i3", "i4"], user_ids=["A1", "B2", "C3"],
        sequences=[np.array(s) for s in seqs],
        timestamps=[np.arange(len(s), dtype=float) + u for u, s in enumerate(seqs)],
        item_text=["Drill", "Children's saw", "Tape\twide", "Glue", "Nails"])
    sids = SemanticIds(codes=np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]]),
                       codebook_sizes=[4, 2])
    return data, sids


@pytest.mark.parametrize("protocol", ["leave_one_out", "time_split"])
def test_round_trip(tmp_path, protocol):
    data, sids = _toy()
    splits = (leave_one_out(data, max_history=2) if protocol == "leave_one_out"
              else time_split(data, max_history=2))
    paths = write_minionerec(tmp_path, data, splits, sids)
    back, back_sids = load_minionerec(tmp_path), read_minionerec_sids(tmp_path)
    assert back.name == "toy"
    assert back.item_ids == data.item_ids
    # users come back in order of first appearance in the CSVs, with the same sequences
    assert {u: s.tolist() for u, s in zip(back.user_ids, back.sequences)} == \
        {u: s.tolist() for u, s in zip(data.user_ids, data.sequences)}
    assert back_sids.codes.tolist() == sids.codes.tolist()
    assert back.item_text[2] == "Tape wide"      # tabs cannot survive the info.txt format
    assert sorted(p.name for p in paths.values()) == [
        "toy.index.json", "toy.info.txt", "toy.item.json", "toy_test.csv", "toy_train.csv",
        "toy_valid.csv"]


def test_written_files_match_their_format(tmp_path):
    data, sids = _toy()
    paths = write_minionerec(tmp_path, data, leave_one_out(data, max_history=2), sids)
    lines = paths["test"].read_text().splitlines()
    assert lines[0] == HEADER
    assert lines[1] == ("A1,\"['Tape wide', 'Glue']\",Nails,\"[2, 3]\",4,"
                        "\"['<a_1><b_0>', '<a_1><b_1>']\",<a_2><b_0>")
    assert paths["info"].read_text().splitlines()[1] == "<a_0><b_1>\tChildren's saw\t1"
    assert json.loads(paths["index"].read_text())["3"] == ["<a_1>", "<b_1>"]
    rows = read_minionerec_csv(paths["valid"])
    assert rows[0].history_item_title == ["Children's saw", "Tape wide"]  # apostrophe survives
    assert rows[0].history_item_id == [1, 2] and rows[0].item_sid == "<a_1><b_1>"


def test_bad_list_literal_is_an_error_not_code(tmp_path):
    bad = tmp_path / "x_test.csv"
    bad.write_text(HEADER + "\n" + "u,['a'],b,\"__import__('os').getcwd()\",1,['<a_0>'],<a_1>\n")
    with pytest.raises(InputError, match="Python list literal") as e:
        read_minionerec_csv(bad)
    assert (e.value.line, e.value.field) == (2, "history_item_id")
    bad.write_text(HEADER.replace(",item_sid", "") + "\n")
    with pytest.raises(InputError, match="missing column 'item_sid'"):
        read_minionerec_csv(bad)


def test_info_errors(tmp_path):
    info = tmp_path / "x.info.txt"
    info.write_text("<a_1>\tA\t0\n<a_2>\tB\n")
    with pytest.raises(InputError) as e:
        read_minionerec_info(info)
    assert e.value.line == 2


def test_csv_sid_must_match_index(tmp_path):
    data, sids = _toy()
    paths = write_minionerec(tmp_path, data, leave_one_out(data), sids)
    index = json.loads(paths["index"].read_text())
    index["4"] = ["<a_3>", "<b_1>"]
    paths["index"].write_text(json.dumps(index))
    with pytest.raises(InputError, match="has SID"):
        load_minionerec(tmp_path, "toy")


def test_real_minionerec_industrial():
    if not INDUSTRIAL.is_dir():
        pytest.skip(f"shared data not found at {INDUSTRIAL}")
    name = "Industrial_and_Scientific"
    data = load_minionerec(INDUSTRIAL)
    sids = read_minionerec_sids(INDUSTRIAL, codebook_sizes=[256, 256, 256])
    assert data.n_items == 3686 and sids.n_items == 3686
    assert sids.n_levels == 3 and sids.codebook_sizes == [256, 256, 256]
    assert data.item_text[0].startswith("SUPCO SPP6 Relay/Capacitor Hard Start Kit")
    info = read_minionerec_info(INDUSTRIAL / f"{name}.info.txt")
    assert len(info) == 3686 and info[0][2] == 0
    assert parse_sid(info[0][0]) == sids.codes[0].tolist()
    user = {u: i for i, u in enumerate(data.user_ids)}
    for split, n_rows in (("valid", 4532), ("test", 4533)):
        rows = read_minionerec_csv(INDUSTRIAL / f"{name}_{split}.csv")
        assert len(rows) == n_rows
        for row in rows:  # every row is a window of its user's rebuilt sequence
            window = np.array(row.history_item_id + [row.item_id])
            seq = data.sequences[user[row.user_id]]
            hits = np.lib.stride_tricks.sliding_window_view(seq, len(window)) == window
            assert hits.all(axis=1).any(), row
