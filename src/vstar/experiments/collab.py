"""Collaborative item vectors for semantic IDs (``sid.vectors="sasrec"``).

Text embeddings know what items are, not who buys them together; SIDs quantised from them put
items that are never co-consumed under one prefix. With ``sid.vectors="sasrec"`` the tokenizer
quantises instead the item embeddings of a SASRec trained on the training split (early-stopped on
the validation split, seeded by ``sid.seed``), so that a SID prefix groups items with similar
interaction contexts. SASRec is trained with the config's ``sasrec`` section. ``sid.vectors="fused"``
quantises both: the L2-normalised text and collaborative vectors side by side (``fuse_vectors``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import OmegaConf

from vstar.baselines.sasrec import SASRec, load_sasrec, train_sasrec
from vstar.core import checkpoint
from vstar.core.device import resolve_device
from vstar.core.io import atomic_path
from vstar.core.layout import RunLayout
from vstar.data.types import Splits
from vstar.eval.metrics import hit_rate, ndcg, target_ranks
from vstar.experiments.rundir import run_state

log = logging.getLogger(__name__)


def ranking_metrics(ranked: np.ndarray, targets: np.ndarray, k: int) -> dict:
    """NDCG@k and HR@k of a ranking (the early-stopping scores of SFT and SASRec)."""
    ranks = target_ranks(ranked, targets)
    return {f"NDCG@{k}": ndcg(ranks, k), f"HR@{k}": hit_rate(ranks, k)}


def sasrec_device(cfg: Any, device: torch.device | None = None) -> str:
    """Where SASRec trains: ``sasrec.device``, or with its default ``run`` the run's device
    (``device`` if given, else ``run.device`` resolved; ``vstar.core.device``)."""
    if cfg.sasrec.device != "run":
        return cfg.sasrec.device
    return str(device if device is not None else resolve_device(cfg.run.device))


def sasrec_validation(splits: Splits, cfg: Any) -> Callable[[SASRec], dict]:
    """validate(model) for ``train_sasrec``: NDCG/HR@eval_k of the full validation split."""
    def validate(model: SASRec) -> dict:
        ranked = model.rank(splits.valid.histories, cfg.eval_k, cfg.eval_batch_size)
        return ranking_metrics(ranked, splits.valid.targets, cfg.eval_k)
    return validate


def experiment_sasrec_config(cfg: Any) -> Any:
    """The settings of an experiment's SASRec: the ``sasrec`` section, with ``sid.sasrec_hidden``
    as its width when that is set (the baseline rows use the section as it is)."""
    hidden = cfg.sid.sasrec_hidden or cfg.sasrec.hidden
    return dataclasses.replace(cfg.sasrec, hidden=hidden)


def teacher_sasrec(cfg: Any, splits: Splits, n_items: int, path: Path,
                   retrain: bool = False, hidden: int = 0,
                   baseline: RunLayout | None = None) -> SASRec:
    """The SASRec of an experiment (``ExperimentLayout.teacher``): fitted on ``splits`` with the
    config's ``sasrec`` section (width ``sid.sasrec_hidden`` if set, ``experiment_sasrec_config``;
    ``hidden`` > 0 overrides it, for ``sft.item_teacher_hidden``) and seed ``sid.seed``,
    early-stopped on the validation split. Loaded from ``path`` unless absent or ``retrain``; a
    fresh one is saved there (atomically). When absent and ``baseline`` (the experiment's SASRec
    baseline run of seed ``sid.seed``) holds that very model (``baseline_is_teacher``), its
    checkpoint is copied instead of training the same model twice."""
    scfg = experiment_sasrec_config(cfg)
    scfg = dataclasses.replace(scfg, hidden=hidden or scfg.hidden, max_len=splits.max_history,
                               device=sasrec_device(cfg))
    if path.is_file() and not retrain:
        log.info("SASRec teacher loaded from %s", path)
        return load_sasrec(path, scfg, n_items)
    if not retrain and baseline is not None and baseline_is_teacher(baseline, cfg, scfg):
        log.info("SASRec teacher: the baseline run %s is this model (seed %d, same data and "
                 "settings); copied to %s", baseline.path, cfg.sid.seed, path)
        with atomic_path(path) as tmp:
            shutil.copyfile(baseline.sasrec, tmp)
        return load_sasrec(path, scfg, n_items)
    log.info("training the experiment's SASRec (seed %d) -> %s", cfg.sid.seed, path)
    return train_sasrec(splits, n_items, scfg, seed=cfg.sid.seed,
                        validate=sasrec_validation(splits, scfg), checkpoint_path=path)


def baseline_is_teacher(baseline: RunLayout, cfg: Any, scfg: Any) -> bool:
    """Whether the SASRec baseline run ``baseline`` trained the model ``teacher_sasrec`` would
    train: the run finished, its seed is ``sid.seed``, its checkpoint was saved with the settings
    ``scfg`` and its config has the same ``data`` section. (Thread counts may differ: the two
    would then differ by float rounding, as any two runs on different machines do.)"""
    if (baseline.seed != cfg.sid.seed or run_state(baseline.path) != "finished"
            or not baseline.sasrec.is_file() or not baseline.config.is_file()):
        return False

    def plain(value: Any) -> Any:                  # JSON types, as both files store them
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        elif OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        return json.loads(json.dumps(value, default=str))
    _, _, saved = checkpoint.load_sasrec(baseline.sasrec)
    run_data = OmegaConf.load(baseline.config).get("data")
    return plain(saved) == plain(scfg) and plain(run_data) == plain(cfg.data)


def sasrec_item_vectors(cfg: Any, splits: Splits, n_items: int, path: Path) -> np.ndarray:
    """float32 [n_items, sasrec.hidden]: the item embeddings of a SASRec fitted on ``splits``
    (trained afresh and saved to ``path``, see ``teacher_sasrec``)."""
    model = teacher_sasrec(cfg, splits, n_items, path, retrain=True)
    return model.item_emb.weight[1:].detach().cpu().numpy().astype(np.float32)


def fuse_vectors(text: np.ndarray, collab: np.ndarray) -> np.ndarray:
    """float32 [N, D_text + D_collab]: each part L2-normalised per item, so that both weigh the
    same in k-means distances whatever their scales."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(text) != len(collab):
        raise ValueError(f"{len(text)} text vectors for {len(collab)} collaborative ones")
    return np.concatenate([unit(text), unit(collab)], axis=1)
