"""Run folders: one folder per (method, seed) run, holding everything needed to trust a number.

    with RunDir.create(experiment.root, experiment.run_name("sft", 0), cfg, seed=0) as run:
        ...                                   # run.layout.generator, run.layout.metrics("test")

``create`` writes the resolved config, the provenance (``vstar.core.repro.collect_versions``) and
the seed, and attaches a log.txt handler to the ``vstar`` logger; ``open`` re-opens an existing
folder; ``resume`` re-opens an unfinished one whose config matches. File names come from
``vstar.core.layout.RunLayout``.

Ownership: a RunDir holds an exclusive lock (``vstar.core.io.FolderLock``) on its folder from
create/open to close, so a second process writing the same run is refused with a message naming
the holder (pid, host, start time). ``status.json`` says where the run stands: ``running``,
``finished``, ``failed`` (with the error) or ``interrupted`` (Ctrl-C); a folder left ``running``
and unlocked was killed. ``overwrite`` deletes only folders vstar created (they have
versions.json), and only while holding their lock; a ``failed`` run is replaced by a rerun
without asking.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from vstar.core.errors import InputError
from vstar.core.io import (FolderLock, atomic_write_json, atomic_write_text, read_json,
                           remove_stale_temp_files)
from vstar.core.layout import RunLayout
from vstar.core.repro import collect_versions, utc_now

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
RUN_LOGGER = "vstar"  # the package logger: every vstar.* module logger reaches the run's log.txt
STATES = ("running", "finished", "failed", "interrupted")


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

    def __init__(self, path: Path, seed: int | None, handlers: list[logging.Handler],
                 lock: FolderLock | None = None, resumed: bool = False):
        self.path = Path(path)
        self.layout = RunLayout(self.path)
        self.seed = seed
        self._handlers = handlers
        self._lock = lock
        self.resumed = resumed          # re-opened by ``resume``: trainers continue saved state
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
        """Create ``<root>/<name>`` and write config.yaml, versions.json, seed.txt, status.json;
        lock it; start logging.

        An existing non-empty folder is an error unless it holds a failed run or
        ``overwrite=True``; overwrite only ever deletes a folder that is itself a run folder (has
        versions.json), never arbitrary data, and never one another process holds.
        """
        from omegaconf import OmegaConf

        path = Path(root) / name
        if path.exists() and not path.is_dir():
            raise InputError("run folder path exists and is not a folder", file=str(path))
        lock = FolderLock(RunLayout(path).lock).acquire(path)
        try:
            if path.is_dir() and any(path.iterdir()):
                if not RunLayout(path).versions.is_file():
                    raise InputError("refusing to replace a non-empty folder that is not a run "
                                     "folder (no versions.json)", file=str(path))
                state = run_state(path)
                if not overwrite and state != "failed":
                    raise InputError(f"run folder already exists ({state}); pass "
                                     "run.overwrite=true to replace it"
                                     + ("" if state == "finished" else
                                        " or run.resume=true to continue it"), file=str(path))
                shutil.rmtree(path)
            path.mkdir(parents=True, exist_ok=True)
            layout = RunLayout(path)
            resolved = _resolve_config(config)
            atomic_write_text(layout.config, OmegaConf.to_yaml(OmegaConf.create(resolved)))
            atomic_write_json(layout.versions, collect_versions(seed))
            atomic_write_text(layout.seed_file, f"{seed}\n")
            run = cls(path, seed, _attach_logging(layout.log, console=console, level=level),
                      lock)
            run.set_state("running")
        except BaseException:
            lock.release()
            raise
        run.logger.info("run %s created at %s (seed %s)", name, path, seed)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, *, console: bool = True,
             level: int = logging.INFO, resumed: bool = False) -> "RunDir":
        """Re-open (and lock) an existing run folder, e.g. to evaluate a trained run; log.txt is
        appended, temp files a killed writer left are removed."""
        path = Path(path)
        layout = RunLayout(path)
        if not layout.versions.is_file():
            raise InputError("not a run folder (no versions.json)", file=str(path))
        lock = FolderLock(layout.lock).acquire(path)
        try:
            seed_file = layout.seed_file
            seed = None
            if seed_file.is_file():
                text = seed_file.read_text().strip()
                try:
                    seed = int(text)
                except ValueError:
                    raise InputError(f"expected an integer seed, got {text!r}",
                                     file=str(seed_file), line=1) from None
            remove_stale_temp_files(path)
            return cls(path, seed, _attach_logging(layout.log, console=console, level=level),
                       lock, resumed)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def resume(cls, path: str | os.PathLike, config: Any, *, resumable: tuple[str, ...] = (),
               console: bool = True, level: int = logging.INFO,
               defaults: Any = None) -> "RunDir":
        """Re-open an unfinished run to continue it: InputError if it finished, or if ``config``
        differs from the stored one in a field other than ``resumable`` (dotted names; the
        message lists the differing fields). With ``defaults`` (the config type's defaults), a
        field the stored config lacks (added after the run started) is no change while it has
        its default value. The stored config becomes ``config``."""
        from omegaconf import OmegaConf

        run = cls.open(path, console=console, level=level, resumed=True)
        try:
            state = run_state(run.path)
            if state == "finished":
                raise InputError("the run already finished; nothing to resume (pass "
                                 "run.overwrite=true to redo it)", file=str(run.path))
            new = _resolve_config(config)
            # a field the stored config does not have (added to vstar after the run started) at
            # its default is no change: new fields default to the behaviour from before them
            defaults = None if defaults is None else _resolve_config(defaults)
            changed = [k for k in config_diff(run.config, new) if k not in resumable
                       and not (config_value(run.config, k) is MISSING and defaults is not None
                                and _plain(config_value(defaults, k))
                                == _plain(config_value(new, k)))]
            if changed:
                raise InputError(f"cannot resume with a different config: {', '.join(changed)} "
                                 f"differ from {run.layout.config.name} (only "
                                 f"{', '.join(resumable) or 'nothing'} may change)",
                                 file=str(run.path))
            atomic_write_text(run.layout.config, OmegaConf.to_yaml(OmegaConf.create(new)))
            run.set_state("running")
        except BaseException:
            run.close()
            raise
        run.logger.info("run %s resumed (was %s)", run.path, state)
        return run

    def set_state(self, state: str, error: str | None = None) -> None:
        """Record ``state`` (one of STATES) in status.json."""
        import socket

        if state not in STATES:
            raise InputError(f"unknown run state {state!r}, expected one of {STATES}",
                             field="state")
        record = {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                  "time": utc_now()}
        if error:
            record["error"] = error
        atomic_write_json(self.layout.status, record)

    @property
    def config(self) -> dict:
        """The resolved config stored in config.yaml, as a plain dict."""
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(self.layout.config))  # type: ignore

    def close(self) -> None:
        """Detach and close this run's logging handlers, release its lock (idempotent)."""
        logger = logging.getLogger(RUN_LOGGER)
        for handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()
        self._handlers = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """status.json: finished, interrupted (Ctrl-C: the last checkpoint is kept) or failed."""
        try:
            if self._lock is not None:
                if exc is None:
                    self.set_state("finished")
                elif isinstance(exc, KeyboardInterrupt):
                    self.logger.error("run interrupted")
                    self.set_state("interrupted")
                else:
                    self.logger.error("run failed: %s: %s", exc_type.__name__, exc)
                    self.set_state("failed", f"{exc_type.__name__}: {exc}")
            elif exc is not None:
                self.logger.error("run failed: %s: %s", exc_type.__name__, exc)
        finally:
            self.close()


def run_state(path: str | os.PathLike) -> str:
    """Where the run in ``path`` stands: a STATES entry, "killed" (left running, unlocked: call
    it only while holding the lock) or "unknown" (a folder older than status.json: "finished" if
    it has test metrics)."""
    layout = RunLayout(Path(path))
    if not layout.status.is_file():
        return "finished" if layout.metrics("test").is_file() else "unknown"
    try:
        record, _ = read_json(layout.status)
        state = record.get("state") if isinstance(record, dict) else None
    except (InputError, UnicodeDecodeError):
        state = None
    if state == "running":
        return "killed"
    return state if state in STATES else "unknown"


def config_diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Dotted names of the leaves that differ between two nested config dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, MISSING), new.get(key, MISSING)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_diff(a, b, f"{name}.")
        elif _plain(a) != _plain(b):
            out.append(name)
    return out


MISSING = object()      # config_value of a name the config does not have


def config_value(tree: Mapping, dotted: str) -> Any:
    """The value at a dotted name (as ``config_diff`` gives them) of a nested dict, or
    ``MISSING``."""
    for key in dotted.split("."):
        if not isinstance(tree, Mapping) or key not in tree:
            return MISSING
        tree = tree[key]
    return tree


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
