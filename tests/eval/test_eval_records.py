"""metrics.json: written atomically, read back validated."""

import json

import numpy as np
import pytest

from vstar.core.errors import InputError
from vstar.eval.records import METRICS_KEYS, read_metrics, write_metrics


def test_write_and_read_metrics(tmp_path):
    path = write_metrics(tmp_path, dataset="scientific", protocol="loo", method="sft", seed=0,
                         split="test", metrics={"HR@1": np.float64(0.125), "ILD@10": float("nan")},
                         invalid_rate=0.0, cost={"tokens": np.int64(1200), "wall_s": 3.5})
    record = json.loads(path.read_text())
    assert set(record) == set(METRICS_KEYS)
    assert record["metrics"] == {"HR@1": 0.125, "ILD@10": None}     # NaN stored as null
    assert record["cost"] == {"tokens": 1200, "wall_s": 3.5} and record["extra"] == {}
    assert read_metrics(tmp_path) == record
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.json"]  # no temp files left


def test_write_metrics_rejects_non_numbers(tmp_path):
    with pytest.raises(InputError, match="HR@1"):
        write_metrics(tmp_path, dataset="d", protocol="p", method="m", seed=0, split="test",
                      metrics={"HR@1": "high"}, invalid_rate=0.0, cost={})
    assert not (tmp_path / "metrics.json").exists()


def test_read_metrics_names_file_and_missing_key(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"dataset": "d", "protocol": "p", "method": "m", "seed": 0,
                               "split": "test", "metrics": {}, "cost": {}, "extra": {},
                               "created": "now"}))
    with pytest.raises(InputError) as err:
        read_metrics(bad)
    assert str(bad) in str(err.value) and "invalid_rate" in str(err.value)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="line 1"):
        read_metrics(bad)
