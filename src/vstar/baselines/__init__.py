"""Honest baselines every comparison table carries: most-popular and SASRec (full softmax)."""

from vstar.baselines.config import SASRecConfig
from vstar.baselines.popularity import PopularityRecommender
from vstar.baselines.sasrec import SASRec, load_sasrec, save_sasrec, train_sasrec

__all__ = ["PopularityRecommender", "SASRec", "SASRecConfig", "load_sasrec", "save_sasrec",
           "train_sasrec"]
