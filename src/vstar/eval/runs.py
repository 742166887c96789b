"""Run folders: one folder per (config, seed) run, holding everything needed to trust a number.

    <root>/<name>/
        config.yaml       the resolved config the run used
        versions.json     python / library versions, git commit, host, CPU count, seed, time
        seed.txt          the seed, alone
        log.txt           the run's log (timestamp, level, logger name, message)
        metrics.json      written by ``write_metrics``: dataset, protocol, method, seed, split,
                          metrics, invalid_rate, cost, extra, created
        *.safetensors     checkpoints written by ``save_checkpoint`` (never pickle)

Usage::

    with RunDir.create("runs", "sft-scientific-s0", cfg, seed=0) as run:
        set_seed(run.seed)
        ...
        write_metrics(run, dataset="scientific", protocol="loo", method="sft", seed=0,
                      split="test", metrics=metrics, invalid_rate=0.0, cost={"tokens": 123})
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import sys
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vstar.errors import InputError
from vstar.io import atomic_path, atomic_write_json, atomic_write_text

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
RUN_LOGGER = "vstar"  # the package logger: every vstar.* module logger reaches the run's log.txt

METRICS_KEYS = ("dataset", "protocol", "method", "seed", "split", "metrics", "invalid_rate",
                "cost", "extra", "created")
_VERSIONED = {  # versions.json key -> distribution names to try, first found wins
    "torch": ("torch",), "numpy": ("numpy",), "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "safetensors": ("safetensors",), "sentence_transformers": ("sentence-transformers",),
    "omegaconf": ("omegaconf",), "scipy": ("scipy",),
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# seeds and provenance
# ---------------------------------------------------------------------------------------------

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
    info.update({
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "seed": seed,
        "time": _now(),
    })
    return info


def _resolve_config(config: Any) -> dict:
    """Plain, resolved dict of a dict or OmegaConf config (interpolations resolved)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, Mapping) and not isinstance(config, DictConfig):
        config = OmegaConf.create(dict(config))
    if not isinstance(config, DictConfig):
        raise InputError(f"config must be a dict or an OmegaConf DictConfig, got "
                         f"{type(config).__name__}", field="config")
    return _plain(OmegaConf.to_container(config, resolve=True))


def _plain(value: Any) -> Any:
    """Paths (and other non-YAML scalars OmegaConf keeps) -> str, so config.yaml stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------

class RunDir:
    """A run folder plus the logging handlers that write its log.txt; close() removes them."""

    def __init__(self, path: Path, seed: int | None, handlers: list[logging.Handler]):
        self.path = Path(path)
        self.seed = seed
        self._handlers = handlers
        self.logger = logging.getLogger(f"{RUN_LOGGER}.run")

    @property
    def name(self) -> str:
        return self.path.name

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, seed={self.seed})"

    @classmethod
    def create(cls, root: str | os.PathLike, name: str, config: Any, seed: int, *,
               overwrite: bool = False, console: bool = True,
               level: int = logging.INFO) -> "RunDir":
        """Create ``<root>/<name>`` and write config.yaml, versions.json, seed.txt; start logging.

        An existing non-empty folder is an error unless ``overwrite=True``; overwrite only ever
        deletes a folder that is itself a run folder (has versions.json), never arbitrary data.
        """
        from omegaconf import OmegaConf

        path = Path(root) / name
        if path.exists() and not path.is_dir():
            raise InputError("run folder path exists and is not a folder", file=str(path))
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise InputError("run folder already exists and is not empty (pass "
                                 "overwrite=True to replace it)", file=str(path))
            if not (path / "versions.json").is_file():
                raise InputError("refusing to overwrite a non-empty folder that is not a run "
                                 "folder (no versions.json)", file=str(path))
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        resolved = _resolve_config(config)
        atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
        atomic_write_json(path / "versions.json", collect_versions(seed))
        atomic_write_text(path / "seed.txt", f"{seed}\n")
        run = cls(path, seed, _attach_logging(path / "log.txt", console=console, level=level))
        run.logger.info("run %s created at %s (seed %s)", name, path, seed)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, *, console: bool = True,
             level: int = logging.INFO) -> "RunDir":
        """Re-open an existing run folder (e.g. to evaluate a trained run); log.txt is appended."""
        path = Path(path)
        if not (path / "versions.json").is_file():
            raise InputError("not a run folder (no versions.json)", file=str(path))
        seed_file = path / "seed.txt"
        seed = None
        if seed_file.is_file():
            text = seed_file.read_text().strip()
            try:
                seed = int(text)
            except ValueError:
                raise InputError(f"expected an integer seed, got {text!r}", file=str(seed_file),
                                 line=1) from None
        return cls(path, seed, _attach_logging(path / "log.txt", console=console, level=level))

    @property
    def config(self) -> dict:
        """The resolved config stored in config.yaml, as a plain dict."""
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(self.path / "config.yaml"))  # type: ignore

    def close(self) -> None:
        """Detach and close this run's logging handlers (idempotent)."""
        logger = logging.getLogger(RUN_LOGGER)
        for handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()
        self._handlers = []

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.logger.error("run failed: %s: %s", exc_type.__name__, exc)
        self.close()


def _attach_logging(log_file: Path, *, console: bool, level: int) -> list[logging.Handler]:
    formatter = logging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT)
    handlers: list[logging.Handler] = [logging.FileHandler(log_file, mode="a", encoding="utf-8")]
    if console:
        handlers.append(logging.StreamHandler())
    logger = logging.getLogger(RUN_LOGGER)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.setLevel(level)
        logger.addHandler(handler)
    return handlers


# ---------------------------------------------------------------------------------------------
# metrics.json
# ---------------------------------------------------------------------------------------------

def _jsonable(value: Any, field: str) -> Any:
    """numpy / torch scalars -> python; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, field) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and hasattr(value, "dtype"):
        value = value.item()  # numpy / torch scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise InputError(f"value of type {type(value).__name__} cannot be written to metrics.json",
                     field=field)


def write_metrics(run_dir: RunDir | str | os.PathLike, *, dataset: str, protocol: str,
                  method: str, seed: int, split: str, metrics: Mapping[str, float],
                  invalid_rate: float, cost: Mapping[str, Any],
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically; returns its path.

    Top-level keys are exactly METRICS_KEYS. Metric values must be numbers; NaN (e.g. ILD with
    no list of 2 items) is stored as null.
    """
    path = Path(run_dir) / "metrics.json"
    clean_metrics = _jsonable(dict(metrics), "metrics")
    for key, value in clean_metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise InputError(f"metric values must be numbers, got {value!r}",
                             field=f"metrics.{key}")
    record = {
        "dataset": str(dataset), "protocol": str(protocol), "method": str(method),
        "seed": _jsonable(seed, "seed"), "split": str(split),
        "metrics": clean_metrics,
        "invalid_rate": _jsonable(invalid_rate, "invalid_rate"),
        "cost": _jsonable(dict(cost), "cost"),
        "extra": _jsonable(dict(extra or {}), "extra"),
        "created": _now(),
    }
    atomic_write_json(path, record)
    return path


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a metrics.json (or the one inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("metrics file not found", file=str(path)) from None
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON: {err.msg}", file=str(path), line=err.lineno) from None
    if not isinstance(record, dict):
        raise InputError("expected a JSON object", file=str(path))
    for key in METRICS_KEYS:
        if key not in record:
            raise InputError("missing key", file=str(path), field=key)
    for key in ("metrics", "cost", "extra"):
        if not isinstance(record[key], dict):
            raise InputError("expected a JSON object", file=str(path), field=key)
    for key, value in record["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"expected a number or null, got {value!r}", file=str(path),
                             field=f"metrics.{key}")
    return record


# ---------------------------------------------------------------------------------------------
# checkpoints (safetensors only)
# ---------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, Any],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Save tensors with safetensors, atomically; metadata values are stored JSON-encoded.

    Tensors are moved to CPU and made contiguous; tensors sharing storage (tied weights) are
    copied so safetensors accepts them.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"expected a tensor, got {type(value).__name__}", field=key)
        t = value.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[str(key)] = t
    meta = {str(k): json.dumps(_jsonable(v, f"metadata.{k}")) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict]:
    """Load ``(state_dict, metadata)`` from a safetensors file written by save_checkpoint."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", file=str(path))
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            raw_meta = f.metadata() or {}
        state_dict = load_file(str(path), device=device)
    except SafetensorError as err:
        raise InputError(f"not a readable safetensors file ({err})", file=str(path)) from None
    metadata = {}
    for key, text in raw_meta.items():
        try:
            metadata[key] = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"metadata value is not JSON: {text[:80]!r}", file=str(path),
                             field=key) from None
    return state_dict, metadata
