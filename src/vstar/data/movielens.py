"""MovieLens-100K, fetched the way a user would: from the PyPI wheel of ``recbole==1.2.1``.

The wheel carries ``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`` (RecBole atomic
files). We download the wheel with pip (no install of recbole) and copy those three files out.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from vstar.core.layout import CacheLayout
from vstar.data.loaders import load_recbole
from vstar.data.types import InteractionData

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
_WHEEL_DIR = "recbole/dataset_example/ml-100k/"
DEFAULT_CACHE = CacheLayout(Path(".cache")).movielens_100k   # .cache = run.cache_dir default


def fetch_movielens_100k(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Return a folder holding ``ml-100k.{inter,item,user}``, downloading them on first use.

    Runs ``python -m pip download --no-deps recbole==1.2.1`` (about 2 MB from PyPI) and extracts
    the three files from the wheel. The cache folder appears complete or not at all: files are
    extracted into a temporary folder beside it, which is then renamed.
    """
    cache = Path(cache_dir)
    if all((cache / f).is_file() for f in ML100K_FILES):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recbole-wheel-") as tmp:
        log.info("downloading %s from PyPI to extract MovieLens-100K", RECBOLE_WHEEL)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               RECBOLE_WHEEL, "-d", tmp], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {RECBOLE_WHEEL} from PyPI (pip exit {proc.returncode}):\n"
                f"{proc.stderr[-2000:]}\nDownload it by hand (pip download --no-deps "
                f"{RECBOLE_WHEEL}) and copy {_WHEEL_DIR}{{{','.join(ML100K_FILES)}}} from the "
                f"wheel (a zip file) into {cache}")
        staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                for f in ML100K_FILES:
                    (staging / f).write_bytes(zf.read(_WHEEL_DIR + f))
            if cache.is_dir():  # left over (incomplete): move each file in atomically
                for f in ML100K_FILES:
                    os.replace(staging / f, cache / f)
            else:
                try:
                    os.replace(staging, cache)
                except OSError:  # another process created it meanwhile
                    if not all((cache / f).is_file() for f in ML100K_FILES):
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cache


def load_movielens_100k(cache_dir: str | Path = DEFAULT_CACHE,
                        min_rating: float | None = None) -> InteractionData:
    """MovieLens-100K: 943 users, 1,682 movies, 100,000 ratings (1-5) with timestamps.

    Item text is "title. year. genres"; pass ``min_rating`` to keep only ratings >= it.
    """
    folder = fetch_movielens_100k(cache_dir)
    return load_recbole(folder, "ml-100k", min_rating=min_rating)
