"""The data stage's config and its two entry points: ``load_dataset`` and ``make_splits``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vstar.data.filtering import k_core
from vstar.data.loaders import load_lcrec, load_recbole, load_table
from vstar.data.minionerec import load_minionerec
from vstar.data.movielens import DEFAULT_CACHE, load_movielens_100k
from vstar.data.splits import leave_one_out, time_split
from vstar.data.types import InteractionData, Splits
from vstar.core.errors import InputError
from vstar.core.validate import (check_fields, count, list_of, non_negative,
                                 non_negative_int, number, one_of, optional, require, text)

log = logging.getLogger(__name__)

FORMATS = ("lcrec", "recbole", "movielens100k", "table", "minionerec")
PROTOCOLS = ("leave_one_out", "time_split")


@dataclass
class DataConfig:
    """Where the data is, how to read it, how to filter it and how to split it.

    Plain types with defaults, so it works as an OmegaConf structured config.
    """

    format: str = "lcrec"             # one of FORMATS
    path: str = ""                    # file or folder; movielens100k: its cache folder
    item_path: str | None = None      # lcrec item json / table item file (optional)
    name: str = ""                    # dataset name (recbole / minionerec file prefix)
    k_core: int = 0                   # keep users and items with >= k interactions (0 = off)
    protocol: str = "leave_one_out"   # one of PROTOCOLS
    max_history: int = 20             # most recent items kept in a history
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # time_split
    min_rating: float | None = None   # drop interactions rated below this (recbole / table)
    # column names for interaction / item tables (table and recbole formats)
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str = "rating"
    text_cols: list[str] = field(default_factory=list)   # item table text columns (all if empty)
    value_cols: list[str] = field(default_factory=list)  # numeric item table columns

    RULES = {"format": one_of(*FORMATS), "path": text(nonempty=False),
             "item_path": optional(text(nonempty=False)), "name": text(nonempty=False),
             "k_core": non_negative_int, "protocol": one_of(*PROTOCOLS), "max_history": count,
             "split_ratios": list_of(non_negative, length=3),
             "min_rating": optional(number),
             "user_col": text(), "item_col": text(), "time_col": text(nonempty=False),
             "rating_col": text(nonempty=False), "text_cols": list_of(text()),
             "value_cols": list_of(text())}

    def validate(self, prefix: str = "data") -> None:
        check_fields(self, prefix, self.RULES)
        require(self.format == "movielens100k" or bool(self.path.strip()), f"{prefix}.path",
                self.path, f"the file or folder of the {self.format!r} data")
        require(abs(sum(self.split_ratios) - 1.0) <= 1e-6, f"{prefix}.split_ratios",
                list(self.split_ratios), "3 non-negative numbers summing to 1")


def load_dataset(cfg: DataConfig | Any) -> InteractionData:
    """Load the dataset ``cfg`` describes, then apply the k-core filter if ``cfg.k_core > 0``."""
    fmt = cfg.format
    if fmt == "lcrec":
        name = cfg.name or Path(cfg.path).stem.removesuffix(".inter")  # X.inter.json -> X
        data = load_lcrec(cfg.path, cfg.item_path or None, name=name)
    elif fmt == "recbole":
        data = load_recbole(cfg.path, cfg.name or None, user_col=cfg.user_col,
                            item_col=cfg.item_col, time_col=cfg.time_col,
                            rating_col=cfg.rating_col, min_rating=cfg.min_rating)
    elif fmt == "movielens100k":
        data = load_movielens_100k(cfg.path or DEFAULT_CACHE, min_rating=cfg.min_rating)
    elif fmt == "table":
        data = load_table(cfg.path, cfg.item_path or None, user_col=cfg.user_col,
                          item_col=cfg.item_col, time_col=cfg.time_col or None, rating_col=cfg.rating_col,
                          min_rating=cfg.min_rating, text_cols=list(cfg.text_cols),
                          value_cols=list(cfg.value_cols),
                          name=cfg.name or Path(cfg.path).stem)
    elif fmt == "minionerec":
        data = load_minionerec(cfg.path, cfg.name or None)
    else:
        raise InputError(f"unknown data format {fmt!r}; expected one of {FORMATS}",
                         field="data.format")
    if cfg.k_core > 0:
        data = k_core(data, cfg.k_core)
    return data


def make_splits(data: InteractionData, cfg: DataConfig | Any) -> Splits:
    """Split ``data`` under ``cfg.protocol`` with ``cfg.max_history`` (and ``cfg.split_ratios``)."""
    if cfg.protocol == "leave_one_out":
        return leave_one_out(data, max_history=cfg.max_history)
    if cfg.protocol == "time_split":
        return time_split(data, ratios=[float(r) for r in cfg.split_ratios],
                          max_history=cfg.max_history)
    raise InputError(f"unknown protocol {cfg.protocol!r}; expected one of {PROTOCOLS}",
                     field="data.protocol")
