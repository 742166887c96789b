"""Run folders, seeding, metrics.json and safetensors checkpoints."""

import json
import logging
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vstar.core.errors import InputError
from vstar.eval.runs import (
    METRICS_KEYS,
    RunDir,
    git_commit,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    set_seed,
    write_metrics,
)


def test_create_writes_config_versions_seed_and_log(tmp_path):
    cfg = OmegaConf.create({"model": {"dim": 64}, "lr": 0.001, "width": "${model.dim}"})
    with RunDir.create(tmp_path, "run1", cfg, seed=7, console=False) as run:
        assert run.path == tmp_path / "run1" and run.seed == 7
        logging.getLogger("vstar.decode.beam").info("decoded %d users", 12)
        logging.getLogger("vstar.decode.beam").debug("not at INFO level")
    # interpolation resolved in the stored config
    assert OmegaConf.load(tmp_path / "run1" / "config.yaml") == {
        "model": {"dim": 64}, "lr": 0.001, "width": 64}
    versions = json.loads((tmp_path / "run1" / "versions.json").read_text())
    for key in ("python", "platform", "vstar", "torch", "numpy", "faiss", "safetensors",
                "sentence_transformers", "git_commit", "hostname", "cpu_count", "seed", "time"):
        assert key in versions
    assert versions["seed"] == 7 and versions["vstar"] == "0.1.0"
    assert versions["numpy"] == np.__version__
    assert (tmp_path / "run1" / "seed.txt").read_text().strip() == "7"
    log = (tmp_path / "run1" / "log.txt").read_text()
    assert "INFO" in log and "vstar.decode.beam: decoded 12 users" in log
    assert "not at INFO level" not in log
    # after close the run's handlers are gone: later messages do not reach its log
    logging.getLogger("vstar.decode.beam").info("after close")
    assert "after close" not in (tmp_path / "run1" / "log.txt").read_text()
    assert run._handlers == []


def test_dict_config_and_reopen(tmp_path):
    run = RunDir.create(tmp_path, "r", {"a": 1, "b": "${a}", "data": tmp_path / "d"}, seed=3,
                        console=False)
    run.close()
    assert run.config == {"a": 1, "b": 1, "data": str(tmp_path / "d")}  # Path stored as text
    assert "!!python" not in (tmp_path / "r" / "config.yaml").read_text()
    with RunDir.open(tmp_path / "r", console=False) as again:
        assert again.seed == 3
        again.logger.info("second session")
    assert "second session" in (tmp_path / "r" / "log.txt").read_text()


def test_existing_folder_is_protected(tmp_path):
    RunDir.create(tmp_path, "r", {}, seed=0, console=False).close()
    (tmp_path / "r" / "metrics.json").write_text("{}")
    with pytest.raises(InputError, match="already exists"):
        RunDir.create(tmp_path, "r", {}, seed=0, console=False)
    RunDir.create(tmp_path, "r", {"x": 1}, seed=1, overwrite=True, console=False).close()
    assert not (tmp_path / "r" / "metrics.json").exists()       # stale results removed
    assert (tmp_path / "r" / "seed.txt").read_text().strip() == "1"
    # a non-empty folder that is not a run folder is never deleted, even with overwrite
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.csv").write_text("x")
    with pytest.raises(InputError, match="not a run folder"):
        RunDir.create(tmp_path, "data", {}, seed=0, overwrite=True, console=False)
    assert (tmp_path / "data" / "precious.csv").exists()
    # an empty existing folder is fine
    (tmp_path / "empty").mkdir()
    RunDir.create(tmp_path, "empty", {}, seed=0, console=False).close()


def test_set_seed_reproduces_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    set_seed(123)
    first = draw()
    set_seed(123)
    assert draw() == first
    set_seed(124)
    assert draw() != first


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


def test_checkpoint_round_trip_with_metadata_and_tied_weights(tmp_path):
    emb = torch.randn(5, 3)
    state = {"tok_emb.weight": emb, "lm_head.weight": emb, "step": torch.tensor(42)}  # tied
    meta = {"config": {"dim": 3, "levels": [256, 256]}, "epoch": 2, "method": "sft"}
    path = save_checkpoint(tmp_path / "ckpt" / "model.safetensors", state, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert torch.equal(loaded["tok_emb.weight"], emb) and torch.equal(loaded["lm_head.weight"], emb)
    assert loaded["step"].item() == 42
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]


def test_load_checkpoint_rejects_non_safetensors(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"\x80\x04 pickled junk")
    with pytest.raises(InputError, match="model.pt"):
        load_checkpoint(fake)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_git_commit_reads_loose_packed_and_detached_heads(tmp_path):
    sha = "a" * 40
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (tmp_path / "repo" / "src").mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_commit(tmp_path / "repo" / "src") == sha
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert git_commit(tmp_path / "repo" / "src") == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(tmp_path / "repo") == "c" * 40


def test_log_lines_are_timestamped_and_echoed_to_console(tmp_path, capsys):
    import re

    with RunDir.create(tmp_path, "r", {}, seed=0) as run:
        run.logger.warning("budget nearly spent")
    line = [l for l in (tmp_path / "r" / "log.txt").read_text().splitlines() if "budget" in l][0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING vstar.run: budget nearly spent$", line)
    assert "budget nearly spent" in capsys.readouterr().err
