"""Training curves for dashboards: one small interface, written by SFT and RL alike.

    scalars = open_scalars(run.layout.tensorboard_dir, tensorboard=True)   # run.tensorboard
    scalars.log("rl", {"reward_mean": 0.12, "kl": 3e-4}, step=7)          # tags rl/reward_mean, rl/kl
    scalars.close()

``tensorboard --logdir runs/`` then shows every method and seed of every experiment, each run
folder being one TensorBoard run (``<experiment>/<method>/seed<k>``). The TensorBoard writer is
created on the first ``log`` call, so a method that logs nothing (a baseline) leaves no event file.
Weights & Biases is used only when asked for (``run.wandb``) and installed; it is never required.

Logging reads the numbers it is given and nothing else: it draws no random numbers (torch, numpy
and Python RNG states are untouched, a test checks), so a run logs the same training with or
without it. Only rank 0 of a torchrun job logs (``vstar.core.dist``); the others get ``NullScalars``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from vstar.core.errors import InputError


def _scalar(value: Any) -> float | None:
    """A loggable number (bools as 0/1), or None for anything else (strings, lists, None)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # 0-d numpy / torch values
        return float(value.item())
    return None


class Scalars:
    """Where training curves go. ``log(prefix, values, step)`` writes every numeric entry of
    ``values`` as the tag ``prefix/name`` at ``step``; ``restart_at(step)`` (before the first
    ``log``) says a resumed run starts again at ``step``, so curves an interrupted run wrote from
    there on are hidden; ``close()`` flushes."""

    def log(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        raise NotImplementedError

    def restart_at(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "Scalars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullScalars(Scalars):
    """Logs nothing (logging switched off, or a torchrun rank other than 0)."""

    def log(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        pass


class TensorBoardScalars(Scalars):
    """TensorBoard event files in ``log_dir`` (``torch.utils.tensorboard``), writer made lazily."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self._writer = None
        self._purge_step: int | None = None

    def restart_at(self, step: int) -> None:
        if self._writer is not None:
            raise RuntimeError("restart_at must come before the first log call")
        self._purge_step = int(step)

    @property
    def writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:        # torch.utils.tensorboard needs the tensorboard package
                raise InputError(f"run.tensorboard=true needs the tensorboard package ({err}); "
                                 "install it or set run.tensorboard=false",
                                 field="run.tensorboard") from None
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def log(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        for name, value in values.items():
            x = _scalar(value)
            if x is not None:
                self.writer.add_scalar(f"{prefix}/{name}", x, int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbScalars(Scalars):
    """Weights & Biases (``wandb``, optional): one wandb run per vstar run folder."""

    def __init__(self, project: str, name: str, config: Mapping | None = None,
                 log_dir: str | os.PathLike | None = None):
        try:
            import wandb
        except ImportError:
            raise InputError("run.wandb=true needs the wandb package (pip install wandb); it is "
                             "optional, set run.wandb=false to go without it",
                             field="run.wandb") from None
        self._wandb = wandb
        self._run = wandb.init(project=project, name=name, config=dict(config or {}),
                               dir=None if log_dir is None else str(log_dir))

    def log(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        row = {f"{prefix}/{k}": x for k, v in values.items() if (x := _scalar(v)) is not None
               and math.isfinite(x)}
        row[f"{prefix}/step"] = int(step)
        self._run.log(row)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class FanOut(Scalars):
    """Every call to each of several ``Scalars``."""

    def __init__(self, parts: list[Scalars]):
        self.parts = parts

    def log(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        for part in self.parts:
            part.log(prefix, values, step)

    def restart_at(self, step: int) -> None:
        for part in self.parts:
            part.restart_at(step)

    def close(self) -> None:
        for part in self.parts:
            part.close()


def open_scalars(log_dir: str | os.PathLike, *, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "vstar", name: str | None = None,
                 config: Mapping | None = None, main: bool = True) -> Scalars:
    """The curves sink of one run folder: TensorBoard in ``log_dir`` and/or wandb, or nothing
    (both off, or ``main`` false: a torchrun rank other than 0)."""
    if not main:
        return NullScalars()
    parts: list[Scalars] = []
    if tensorboard:
        parts.append(TensorBoardScalars(log_dir))
    if wandb:
        parts.append(WandbScalars(wandb_project, name or Path(log_dir).name, config, log_dir))
    if not parts:
        return NullScalars()
    return parts[0] if len(parts) == 1 else FanOut(parts)
