"""The learning-rate schedules SFT, RL and DRPO share: linear warm-up, then cosine decay or constant.

``lr_factor`` is the multiplier of the base learning rate at optimiser step ``step`` (what
``torch.optim.lr_scheduler.LambdaLR`` asks for)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, n_steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup_steps`` steps (0 or 1: none), then ``"cosine"``: half a
    cosine from 1 down to 0 at step ``n_steps`` (and 0 after it), or ``"constant"``: 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if schedule == "constant":
        return warm
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}, expected one of {SCHEDULES}")
    return warm * 0.5 * (1 + math.cos(math.pi * min(step, n_steps) / max(1, n_steps)))
