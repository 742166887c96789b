"""The real datasets load with their published sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstar.data import leave_one_out, load_lcrec, load_movielens_100k, time_split

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
SCIENTIFIC = SHARED / "amazon18-scientific"


def test_amazon18_scientific():
    if not SCIENTIFIC.is_dir():
        pytest.skip(f"shared data not found at {SCIENTIFIC}")
    data = load_lcrec(SCIENTIFIC / "Scientific.inter.json", SCIENTIFIC / "Scientific.item.json",
                      name="Scientific")
    assert (data.n_users, data.n_items, data.n_interactions) == (8317, 4344, 58492)
    assert data.item_ids[:3] == ["0", "1", "2"] and data.sequences[1].tolist() == [9, 10, 11, 12, 6]
    assert data.item_text[1].startswith(
        "Stanley TRA708T Sharpshooter 1/2-Inch Leg Length Staples, Steel (1000 Count). Stanley. "
        "Industrial & Scientific,Fasteners")
    assert max(len(t) for t in data.item_text) < 1000
    splits = leave_one_out(data, max_history=20)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == \
        (58492 - 3 * 8317, 8317, 8317)


@pytest.mark.slow
def test_movielens_100k_from_pypi_wheel():
    data = load_movielens_100k(REPO / ".cache" / "ml-100k")
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100000)
    assert data.item_text[0] == "Toy Story. 1995. Animation Children's Comedy"
    assert all((t[1:] >= t[:-1]).all() for t in data.timestamps)
    splits = time_split(data, max_history=10)
    # 80k / 10k / 10k interactions; each user's first interaction gives no row
    skipped = 100000 - len(splits.train) - len(splits.valid) - len(splits.test)
    assert skipped == 943
    assert len(splits.train) <= 80000 and len(splits.test) <= 10000
