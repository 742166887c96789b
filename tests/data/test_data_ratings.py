"""Ratings are kept (optional column) and follow their interactions through sorting, filters,
splits and row subsets: the returns of DRPO's offline log come from them."""

import numpy as np

from vstar.data import load_recbole, load_table
from vstar.data.filtering import k_core
from vstar.data.splits import leave_one_out, time_split


def test_recbole_ratings_follow_the_time_order(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti2\t5\t30\nu1\ti1\t4\t10\nu2\ti1\t2\t20\nu1\ti3\t3\t30\n")
    data = load_recbole(folder)
    assert [r.tolist() for r in data.ratings] == [[4.0, 5.0, 3.0], [2.0]]
    assert [r.tolist() for r in load_recbole(folder, min_rating=3).ratings] == [[4.0, 5.0, 3.0]]
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                      "u1\ti1\t1\n")
    assert load_recbole(folder).ratings is None


def test_table_ratings_survive_k_core_and_become_the_rows_target_ratings(tmp_path):
    lines = ["user_id,item_id,timestamp,rating"]
    for u in range(3):                        # u0..u2 rate items 0..3 in time order
        lines += [f"u{u},{i},{i},{(u + i) % 5 + 1}" for i in range(4)]
    lines.append("u3,9,0,5")                  # item 9 and user u3 leave a 2-core
    (tmp_path / "inter.csv").write_text("\n".join(lines) + "\n")
    data = k_core(load_table(tmp_path / "inter.csv"), 2)
    assert [r.tolist() for r in data.ratings] == [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 1]]
    splits = leave_one_out(data, max_history=5)
    # train targets: position 1 of each user; valid: position 2; test: position 3
    assert splits.train.target_ratings.tolist() == [2.0, 3.0, 4.0]
    assert splits.valid.target_ratings.tolist() == [3.0, 4.0, 5.0]
    assert splits.test.target_ratings.tolist() == [4.0, 5.0, 1.0]
    assert splits.train.subset(np.array([2, 0])).target_ratings.tolist() == [4.0, 2.0]
    ts = time_split(data, max_history=5)
    for rows in (ts.train, ts.valid, ts.test):
        for u, h, t, r in zip(rows.users, rows.histories, rows.targets, rows.target_ratings):
            assert r == data.ratings[u][len(h)] and t == data.sequences[u][len(h)]
    (tmp_path / "plain.csv").write_text("user_id,item_id,timestamp\nu1,1,1\nu1,2,2\n")
    plain = load_table(tmp_path / "plain.csv")
    assert plain.ratings is None and leave_one_out(plain).train.target_ratings is None
