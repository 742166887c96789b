"""DataConfig as an OmegaConf structured config, and the load_dataset / make_splits dispatchers."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from vstar.data import DataConfig, load_dataset, make_splits
from vstar.core.errors import InputError


def test_config_from_yaml_overrides(tmp_path):
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,timestamp\n"
        "a,1,1\na,2,2\na,3,3\nb,1,4\nb,2,5\nb,9,6\nc,1,7\nc,2,8\n")
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.from_dotlist([
        "format=table", f"path={tmp_path / 'inter.csv'}", "k_core=2", "protocol=time_split",
        "max_history=5", "split_ratios=[0.5,0.25,0.25]"]))
    data = load_dataset(cfg)
    # items 3 and 9 appear once -> dropped; then every user has 2 items, items 1 and 2 have 3
    assert data.item_ids == ["1", "2"] and data.user_ids == ["a", "b", "c"]
    assert data.name == "inter"
    splits = make_splits(data, cfg)
    assert splits.protocol == "time_split" and splits.max_history == 5
    # 6 interactions in time: a1 a2 b1 | b2 c1 | c2 -> rows a2 / b2 / c2
    assert [s.targets.tolist() for s in (splits.train, splits.valid, splits.test)] == \
        [[1], [1], [1]]
    assert OmegaConf.to_object(cfg).split_ratios == [0.5, 0.25, 0.25]


def test_lcrec_dispatch_and_leave_one_out(tmp_path):
    (tmp_path / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": [2, 1]}))
    cfg = DataConfig(format="lcrec", path=str(tmp_path / "Toy.inter.json"), max_history=1)
    data = load_dataset(cfg)
    assert data.name == "Toy"
    splits = make_splits(data, cfg)
    assert [h.tolist() for h in splits.test.histories] == [[1]]
    assert len(splits.train) == 1  # user "1" (2 items) gives one train row


def test_unknown_format_and_protocol():
    with pytest.raises(InputError, match="unknown data format 'csv'"):
        load_dataset(DataConfig(format="csv"))
    with pytest.raises(InputError, match="unknown protocol"):
        make_splits(None, DataConfig(protocol="random"))
