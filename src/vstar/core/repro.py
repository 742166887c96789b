"""Reproducibility: one way to seed everything, and the provenance every run folder records."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import socket
import sys
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

_VERSIONED = {  # versions.json key -> distribution names to try, first found wins
    "torch": ("torch",), "numpy": ("numpy",), "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "safetensors": ("safetensors",), "sentence_transformers": ("sentence-transformers",),
    "omegaconf": ("omegaconf",), "scipy": ("scipy",), "transformers": ("transformers",),
    "tensorboard": ("tensorboard",),
}


def command_line(argv: list[str] | None = None) -> str:
    """The command this process was started with, as one shell line (``vstar run cfg.yaml``;
    ``python -m vstar ...`` for the module entry point)."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = Path(argv[0]).name
    if head == "__main__.py":
        head = f"python -m {Path(argv[0]).parent.name}"
    return " ".join([head, shlex.join(argv[1:])]).strip()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def set_seed(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # torch is a dependency, but metrics-only use should not need it
        return
    torch.manual_seed(seed)  # also seeds every CUDA device


def _dist_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return None


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """Commit hash of the git checkout containing ``start`` (default: the vstar sources).

    Reads ``.git`` files directly (HEAD, loose refs, packed-refs; worktrees too) without running
    git. None when not in a checkout or unreadable.
    """
    here = Path(start) if start is not None else Path(__file__).resolve()
    for folder in [here, *here.parents]:
        dot_git = folder / ".git"
        if dot_git.exists():
            break
    else:
        return None
    try:
        git_dir = dot_git
        if dot_git.is_file():  # worktree / submodule: "gitdir: <path>"
            target = dot_git.read_text().strip().removeprefix("gitdir:").strip()
            git_dir = (folder / target).resolve()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None  # detached HEAD
        ref = head.removeprefix("ref:").strip()
        for base in (git_dir, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None  # branch without commits yet


def _cpu_model() -> str | None:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def collect_versions(seed: int | None = None) -> dict[str, Any]:
    """Provenance of a run: interpreter, platform, library versions, git commit, host, time."""
    import vstar

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "vstar": getattr(vstar, "__version__", None),
    }
    for key, names in _VERSIONED.items():
        info[key] = _dist_version(names)
    torch = sys.modules.get("torch")  # only if already imported: importing torch is slow
    if torch is not None:
        info["cuda"] = getattr(torch.version, "cuda", None)
        info["cuda_available"] = bool(torch.cuda.is_available())
        # The CPU kernels torch dispatches to (AVX2, AVX512, ...) change float results, so a CPU
        # run's digits reproduce on machines with the same capability and thread count only.
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_num_threads"] = torch.get_num_threads()
    info.update({
        "command": command_line(),
        "cwd": os.getcwd(),
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "seed": seed,
        "time": utc_now(),
    })
    return info


def fingerprint(*parts: Any) -> str:
    """sha256 (hex) of arrays (their dtype, shape and bytes) and JSON-able values, in order."""
    import hashlib
    import json

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a checkpoint: a file's bytes, or for a folder (a Hugging Face model) the
    names and sha256 of every file in it, in sorted order."""
    import hashlib

    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\0".encode())
    return h.hexdigest()
