"""File I/O every stage shares.

- Atomic writes: an output is either complete or absent, never half-written.
- Strict JSON reading: a duplicate key in an object is an error naming its line (``json.load``
  would silently keep the last one).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from vstar.core.errors import InputError


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Write to the yielded path with any library (safetensors, pyarrow, matplotlib...).
    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())        # mkstemp makes 0600; a plain open() would not
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (a folder).

    For writers that fill a whole folder (``save_pretrained``). If the block raises, the
    temporary folder is removed and ``path`` is untouched. The swap is two renames (the old
    folder is moved aside, then deleted), so a kill between them leaves ``path`` missing and the
    complete new folder under its temporary name, never a half-written ``path``.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)            # mkdtemp makes 0700; a plain mkdir would not
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir",
                                        dir=path.parent))
            os.replace(path, old / "old")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _duplicate_key_line(text: str, key: str) -> int | None:
    """Line of the second of two occurrences of ``key`` inside the same object (best effort)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
    starts = [m.start() for m in pattern.finditer(text)]
    for a, b in zip(starts, starts[1:]):
        between = text[a:b]
        if "{" not in between and "}" not in between:
            return text.count("\n", 0, b) + 1
    return None


def read_json(path: str | os.PathLike) -> tuple[Any, str]:
    """Parse a JSON file, rejecting duplicate object keys. Returns (object, raw text)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys), text
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", file=str(path),
                         line=e.lineno) from None
    except _DuplicateKey as e:
        raise InputError(f"duplicate key {e.key!r} in a JSON object; each key must appear once",
                         file=str(path), line=_duplicate_key_line(text, e.key)) from None


def read_log_records(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines log (``rl_log.jsonl``), in order. A line that does not
    parse (one cut by a kill mid-write) or is not an object is skipped: a log is appended to
    while a run lives, so its last line may be partial."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def to_jsonable(value: Any, field: str) -> Any:
    """numpy / torch scalars -> python; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, field) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and hasattr(value, "dtype"):
        value = value.item()  # numpy / torch scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise InputError(f"value of type {type(value).__name__} cannot be written as JSON",
                     field=field)


class FolderLock:
    """An exclusive lock (``fcntl.flock``) on ``path``, a lock file whose text names the holder.

        lock = FolderLock(layout.lock).acquire(layout.path)   # InputError if another holds it
        ...
        lock.release()

    The kernel drops the lock when the holding process dies (kill -9 included), so a stale lock
    file never blocks anyone; the file itself is kept (deleting it would let two processes lock
    two different files of the same name).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None

    def acquire(self, folder: str | os.PathLike) -> "FolderLock":
        import fcntl
        import socket

        from vstar.core.repro import utc_now

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise InputError(f"run folder is in use by {holder}; wait for that run to finish "
                             "or choose another run.name", file=str(folder)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()} since {utc_now()}\n")
        fh.flush()
        self._fh = fh
        return self

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        """Unlock (idempotent)."""
        import fcntl

        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files ``atomic_path`` and the ``.<name>.*.tmpdir`` folders
    ``atomic_dir`` leave when a process is killed mid-write (call only while holding the
    folder's lock). Returns what was removed."""
    import shutil

    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    for tmp in list(Path(folder).rglob(".*.tmpdir")):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed
