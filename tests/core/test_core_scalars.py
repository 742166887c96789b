"""Training curves (vstar.core.scalars): TensorBoard files that read back as written, lazily
created, resumable, RNG-neutral; wandb only when asked for."""

import random
import sys
import types

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vstar.core.errors import InputError
from vstar.core.layout import RunLayout
from vstar.core.scalars import (FanOut, NullScalars, TensorBoardScalars, WandbScalars,
                                open_scalars)


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every TensorBoard event file in ``folder``."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_read_back_as_written_and_the_writer_is_lazy(tmp_path):
    tb = TensorBoardScalars(tmp_path / "run")
    assert not (tmp_path / "run").exists()               # nothing before the first log call
    tb.log("rl", {"reward": 0.5, "kl": 2.0, "gate": True, "name": "x", "none": None,
                  "codes": [1, 2], "np": np.float32(0.25)}, step=1)
    tb.log("rl", {"reward": 0.75}, step=2)
    tb.close()
    assert len(RunLayout(tmp_path / "run").tensorboard_events()) == 1
    assert read_scalars(tmp_path / "run") == {
        "rl/reward": [(1, 0.5), (2, 0.75)], "rl/kl": [(1, 2.0)], "rl/gate": [(1, 1.0)],
        "rl/np": [(1, 0.25)]}


def test_restart_hides_the_steps_an_interrupted_run_logged_after_its_checkpoint(tmp_path):
    first = TensorBoardScalars(tmp_path)
    for step in range(1, 5):
        first.log("rl", {"x": float(step)}, step)            # steps 3, 4 lost with the crash
    first.close()
    again = TensorBoardScalars(tmp_path)
    again.restart_at(3)
    for step in (3, 4):
        again.log("rl", {"x": 10.0 * step}, step)
    again.close()
    assert read_scalars(tmp_path)["rl/x"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    with pytest.raises(RuntimeError):
        again.log("rl", {"x": 1.0}, 5)
        again.restart_at(5)                                  # too late: the writer exists


def test_logging_draws_no_random_numbers(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
    with open_scalars(tmp_path, tensorboard=True) as scalars:
        for step in range(5):
            scalars.log("sft", {"loss": 1.0 / (step + 1), "lr": 1e-3}, step)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]


def test_open_scalars_is_null_when_off_or_not_rank_0(tmp_path):
    assert isinstance(open_scalars(tmp_path, tensorboard=False), NullScalars)
    assert isinstance(open_scalars(tmp_path, tensorboard=True, main=False), NullScalars)
    assert isinstance(open_scalars(tmp_path, tensorboard=True), TensorBoardScalars)
    NullScalars().log("x", {"a": 1.0}, 0)
    assert list(tmp_path.iterdir()) == []


def test_wandb_is_an_error_naming_the_field_when_asked_for_but_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)           # import wandb -> ImportError
    with pytest.raises(InputError, match="run.wandb"):
        open_scalars(tmp_path, tensorboard=False, wandb=True)


def test_wandb_gets_the_same_curves_when_installed(tmp_path, monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class FakeRun:
        def log(self, row):
            calls["log"].append(row)

        def finish(self):
            calls["finish"] += 1

    fake = types.SimpleNamespace(init=lambda **kw: calls["init"].append(kw) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    scalars = open_scalars(tmp_path, tensorboard=True, wandb=True, wandb_project="p",
                           name="toy/vstar/seed0", config={"rl": {"lr": 1e-4}})
    assert isinstance(scalars, FanOut) and isinstance(scalars.parts[1], WandbScalars)
    scalars.log("rl", {"reward": 0.5, "share": float("nan")}, 7)
    scalars.close()
    assert calls["init"][0]["project"] == "p" and calls["init"][0]["name"] == "toy/vstar/seed0"
    assert calls["log"] == [{"rl/reward": 0.5, "rl/step": 7}]   # NaN left out
    assert calls["finish"] == 1
    assert read_scalars(tmp_path) == {"rl/reward": [(7, 0.5)], "rl/share": [(7, pytest.approx(
        float("nan"), nan_ok=True))]}


def test_run_config_fields_are_validated():
    from pathlib import Path

    from vstar.experiments.config import load_config

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo_ml100k.yaml"
    with pytest.raises(InputError, match="run.wandb_project"):
        load_config(demo, ["run.wandb_project=''"])
    assert load_config(demo).run.tensorboard is True
    cfg = load_config(demo, ["run.tensorboard=false"])
    assert cfg.run.tensorboard is False and cfg.run.wandb is False
