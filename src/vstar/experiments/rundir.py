"""Run folders: one folder per (method, seed) run, holding everything needed to trust a number.

    with RunDir.create(experiment.root, experiment.run_name("sft", 0), cfg, seed=0) as run:
        ...                                   # run.layout.generator, run.layout.metrics("test")

``create`` writes the resolved config, the provenance (``vstar.core.repro.collect_versions``) and
the seed, and attaches a log.txt handler to the ``vstar`` logger; ``open`` re-opens an existing
folder. File names come from ``vstar.core.layout.RunLayout``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json, atomic_write_text
from vstar.core.layout import RunLayout
from vstar.core.repro import collect_versions

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
RUN_LOGGER = "vstar"  # the package logger: every vstar.* module logger reaches the run's log.txt


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


class RunDir:
    """A run folder plus the logging handlers that write its log.txt; close() removes them."""

    def __init__(self, path: Path, seed: int | None, handlers: list[logging.Handler]):
        self.path = Path(path)
        self.layout = RunLayout(self.path)
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
            if not RunLayout(path).versions.is_file():
                raise InputError("refusing to overwrite a non-empty folder that is not a run "
                                 "folder (no versions.json)", file=str(path))
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        layout = RunLayout(path)
        resolved = _resolve_config(config)
        atomic_write_text(layout.config, OmegaConf.to_yaml(OmegaConf.create(resolved)))
        atomic_write_json(layout.versions, collect_versions(seed))
        atomic_write_text(layout.seed_file, f"{seed}\n")
        run = cls(path, seed, _attach_logging(layout.log, console=console, level=level))
        run.logger.info("run %s created at %s (seed %s)", name, path, seed)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, *, console: bool = True,
             level: int = logging.INFO) -> "RunDir":
        """Re-open an existing run folder (e.g. to evaluate a trained run); log.txt is appended."""
        path = Path(path)
        layout = RunLayout(path)
        if not layout.versions.is_file():
            raise InputError("not a run folder (no versions.json)", file=str(path))
        seed_file = layout.seed_file
        seed = None
        if seed_file.is_file():
            text = seed_file.read_text().strip()
            try:
                seed = int(text)
            except ValueError:
                raise InputError(f"expected an integer seed, got {text!r}", file=str(seed_file),
                                 line=1) from None
        return cls(path, seed, _attach_logging(layout.log, console=console, level=level))

    @property
    def config(self) -> dict:
        """The resolved config stored in config.yaml, as a plain dict."""
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(self.layout.config))  # type: ignore

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
