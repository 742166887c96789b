"""Data stage: raw logs -> items and sequences -> train / valid / test rows."""

from vstar.data.config import DataConfig, load_dataset, make_splits
from vstar.data.filtering import k_core
from vstar.data.loaders import item_text_from_fields, load_lcrec, load_recbole, load_table
from vstar.data.minionerec import load_minionerec, read_minionerec_csv, read_minionerec_info
from vstar.data.movielens import fetch_movielens_100k, load_movielens_100k
from vstar.data.splits import leave_one_out, time_split
from vstar.data.types import InteractionData, SplitRows, Splits

__all__ = [
    "DataConfig", "load_dataset", "make_splits", "k_core", "item_text_from_fields",
    "load_lcrec", "load_recbole", "load_table", "load_minionerec", "read_minionerec_csv",
    "read_minionerec_info", "fetch_movielens_100k", "load_movielens_100k",
    "leave_one_out", "time_split", "InteractionData", "SplitRows", "Splits",
]
