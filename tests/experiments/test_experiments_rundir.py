"""Run folders: config, provenance, seed, log; overwrite protection."""

import json
import logging

import numpy as np
import pytest
from omegaconf import OmegaConf

from vstar.core.errors import InputError
from vstar.experiments.rundir import RunDir


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
    import torch                                  # the kernels that decide a CPU run's digits
    assert versions["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert versions["torch_num_threads"] == torch.get_num_threads()
    assert "cpu_model" in versions
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


def test_log_lines_are_timestamped_and_echoed_to_console(tmp_path, capsys):
    import re

    with RunDir.create(tmp_path, "r", {}, seed=0) as run:
        run.logger.warning("budget nearly spent")
    line = [l for l in (tmp_path / "r" / "log.txt").read_text().splitlines() if "budget" in l][0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING vstar.run: budget nearly spent$", line)
    assert "budget nearly spent" in capsys.readouterr().err
