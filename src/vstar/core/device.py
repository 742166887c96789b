"""Where the tensors live and in which precision the forwards run: ``run.device``, ``run.autocast``.

    device = resolve_device("auto")          # cuda (this rank's GPU) if available, else cpu
    check_autocast("bf16", device)           # InputError naming run.autocast on the CPU
    with autocast(device, "bf16"):           # the model's forward in bfloat16 on CUDA
        logits = model(tokens).logits.float()

**Device.** ``auto`` is CUDA when ``torch.cuda.is_available()``, else the CPU; ``cuda`` without a
visible GPU is an ``InputError`` naming ``run.device`` (never a silent fall-back to the CPU).
Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK`` (``vstar.core.dist``, which
also makes it the current device when it joins the NCCL group). Every stage puts the model there
and the tensors it builds next to the model (``module_device``); the SID trie's tables and the
KV caches follow the model, and rankings come back to the CPU once per batch.

**Autocast.** ``bf16`` runs the backbone's forward under ``torch.autocast("cuda",
torch.bfloat16)``; whatever feeds a loss, a beam score or the value head is float32: decoders and
losses take ``logits.float()`` before their softmax, and the value head switches autocast off
(``vstar.model.value``). Backward passes run outside the autocast region. On the CPU ``bf16`` is
an error rather than ignored: CPU bf16 matmuls are slow on most processors and change the
numbers, so a config that asks for it on a machine without a GPU is almost certainly a mistake
(docs/method.md section 9, "Devices and precision").
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from vstar.core.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
AUTOCASTS = ("none", "bf16")


def local_rank() -> int:
    """This process's GPU index under torchrun (``LOCAL_RANK``), 0 without it."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, field: str = "run.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> the torch device every stage uses (``cuda:<LOCAL_RANK>``
    under torchrun); InputError naming ``field`` for ``cuda`` without a visible GPU or an
    unknown name."""
    if name not in DEVICES:
        raise InputError(f"got {name!r}, expected one of {list(DEVICES)}", field=field)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("got 'cuda', but torch sees no CUDA device (torch.cuda.is_available() "
                         f"is False: a CPU build of torch {torch.__version__}, or no GPU visible "
                         "to this process); use 'auto' or 'cpu'", field=field)
    index = local_rank() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else \
        torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {index} has no GPU ({torch.cuda.device_count()} visible): "
                         "start at most one process per GPU", field=field)
    return torch.device("cuda", index)


def check_autocast(mode: str, device: torch.device, field: str = "run.autocast") -> None:
    """InputError naming ``field`` for an unknown mode, or ``bf16`` on a device other than
    CUDA (module docstring: why an error and not ignored)."""
    if mode not in AUTOCASTS:
        raise InputError(f"got {mode!r}, expected one of {list(AUTOCASTS)}", field=field)
    if mode == "bf16" and device.type != "cuda":
        raise InputError(f"got 'bf16' on the {device.type} device: bfloat16 autocast is for "
                         "CUDA only; use 'none' (or run.device=cuda on a GPU machine)",
                         field=field)


def autocast(device: torch.device | str, mode: str) -> ContextManager:
    """The region in which a model's forward runs: ``torch.autocast`` in bfloat16 for ``bf16``
    on CUDA, nothing for ``none`` (so CPU runs are bit-identical to code without it)."""
    if mode == "none":
        return contextlib.nullcontext()
    device = torch.device(device)
    check_autocast(mode, device)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def module_device(module: object) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for anything without
    tensors (e.g. a test double that only implements ``SidLM``'s call)."""
    for get in ("parameters", "buffers"):
        tensors = getattr(module, get, None)
        if callable(tensors):
            for t in tensors():
                return t.device
    return torch.device("cpu")
