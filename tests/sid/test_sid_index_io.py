"""index.json reading / writing, its error messages, and the reference Scientific indexes."""

import json
from pathlib import Path

import numpy as np
import pytest

from vstar.core.errors import InputError
from vstar.sid.collisions import resolve_collisions
from vstar.sid.index_io import load_index_json, save_index_json
from vstar.sid.types import SemanticIds

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon18-scientific"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "index.json"
    p.write_text(text, encoding="utf-8")
    return p


def test_round_trip_keeps_codes_and_row_order(tmp_path):
    sids = SemanticIds(codes=np.array([[3, 0, 1], [0, 7, 0], [3, 0, 0]]), codebook_sizes=[4, 8, 2])
    item_ids = ["B00X", "A17", "C2"]
    save_index_json(tmp_path / "out" / "index.json", sids, item_ids)
    raw = json.loads((tmp_path / "out" / "index.json").read_text())
    assert raw["A17"] == ["<a_0>", "<b_7>", "<c_0>"]
    back = load_index_json(tmp_path / "out" / "index.json", ["C2", "B00X", "A17"])  # other order
    np.testing.assert_array_equal(back.codes, sids.codes[[2, 0, 1]])
    assert back.codebook_sizes == [4, 8, 2]  # max code + 1


def test_configured_sizes_are_kept_and_a_code_outside_them_is_an_error(tmp_path):
    p = write(tmp_path, '{"1": ["<a_5>", "<b_0>"], "2": ["<a_0>", "<b_30>"]}')
    assert load_index_json(p, [1, 2], codebook_sizes=[256, 256]).codebook_sizes == [256, 256]
    with pytest.raises(InputError, match=r"field '2': code 30 at level 2 is outside the "
                                         r"configured codebook of size 16"):
        load_index_json(p, [1, 2], codebook_sizes=[8, 16])      # never silently widened


@pytest.mark.parametrize("text, message", [
    ('{"1": ["<a_5>", "<b_0>"]}', "no SID for catalogue item '2'"),
    ('{"1": ["<a_5>", "<b_0>"], "2": ["<a_5>", "b_1"]}', "malformed token 'b_1'"),
    ('{"1": ["<a_5>", "<b_0>"], "2": ["<a_5>", "<c_1>"]}', "level letter 'c', expected 'b'"),
    ('{"1": ["<a_5>", "<b_0>"], "1": ["<a_1>", "<b_0>"], "2": ["<a_1>", "<b_1>"]}',
     "duplicate key '1'"),
    ('{"1": ["<a_5>", "<b_0>"], "2": ["<a_5>"]}', "expected 2 tokens"),
    ('{"1": ["<a_5>", "<b_0>"], "2": []}', "non-empty list"),
    ('{"1": ["<a_5>", "<b_0>"],', "invalid JSON"),
])
def test_errors_name_file_and_key(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(InputError, match=message) as err:
        load_index_json(p, ["1", "2"])
    assert str(p) in str(err.value)


def test_extra_keys_are_ignored_with_a_warning(tmp_path):
    p = write(tmp_path, '{"1": ["<a_1>"], "2": ["<a_0>"], "99": ["<a_3>"]}')
    with pytest.warns(UserWarning, match="1 keys are not catalogue items"):
        sids = load_index_json(p, ["2", "1"])
    np.testing.assert_array_equal(sids.codes, [[0], [1]])


# colliding items / 4344 and largest group, counted independently with collections.Counter
REFERENCE = {"rqvae_native": (887, 22), "letter_native": (54, 2), "rkmeans_native": (1326, 26)}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_scientific_indexes_load_with_their_collisions(name):
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    with open(DATA / "Scientific.item.json", encoding="utf-8") as f:
        item_ids = list(json.load(f))
    sids = load_index_json(DATA / "reference-sid-indexes" / f"{name}.index.json", item_ids,
                           codebook_sizes=[256, 256, 256, 256])
    assert sids.n_items == 4344 and sids.n_levels == 4
    assert sids.codebook_sizes == [256, 256, 256, 256]
    # the "native" indexes are not collision-free: several items share a 4-token SID
    n_colliding, largest = REFERENCE[name]
    assert sids.collision_rate() == pytest.approx(n_colliding / 4344)
    fixed = resolve_collisions(sids, "extra_level")
    assert fixed.is_collision_free() and fixed.codebook_sizes[-1] == largest
    print(f"{name}: collision rate {sids.collision_rate():.4f}")
