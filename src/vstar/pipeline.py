"""The whole pipeline, stage by stage: data -> semantic IDs -> methods -> evaluation -> table.

Each stage is a function the CLI calls; none of them owns command-line parsing. Artefacts shared by
all runs of one config (SIDs, their report, item embeddings) live in ``<out_dir>/<name>/artifacts``;
every (method, seed) gets its own run folder ``<out_dir>/<name>/<method>/seed<k>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vstar.config import to_container
from vstar.data import load_dataset, make_splits
from vstar.data.types import InteractionData, Splits
from vstar.decode.rank import rank_rows
from vstar.decode.trie import SidTrie
from vstar.errors import InputError
from vstar.eval.metrics import evaluate_ranking, target_ranks
from vstar.eval.runs import RunDir, save_checkpoint, set_seed, write_metrics
from vstar.io import atomic_path, atomic_write_json
from vstar.model.generator import GeneratorConfig, SidGenerator
from vstar.model.sft import train_sft
from vstar.model.vocab import SidVocab
from vstar.sid import build_sids, save_index_json
from vstar.sid.types import SemanticIds

log = logging.getLogger("vstar.pipeline")


@dataclass
class Prepared:
    """Everything the methods share: the data, its splits, the SIDs and item embeddings."""

    data: InteractionData
    splits: Splits
    sids: SemanticIds
    sid_report: dict
    item_emb: np.ndarray | None
    popularity: np.ndarray          # training interactions per item (long-tail metric)
    stage_seconds: dict = field(default_factory=dict)


def experiment_dir(cfg: Any) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def prepare_data(cfg: Any) -> tuple[InteractionData, Splits, float]:
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    splits = make_splits(data, cfg.data)
    seconds = time.perf_counter() - t0
    log.info("data %s: %d users, %d items, %d interactions; %s rows train/valid/test = %d/%d/%d "
             "(%.1fs)", data.name, data.n_users, data.n_items, data.n_interactions,
             splits.protocol, len(splits.train), len(splits.valid), len(splits.test), seconds)
    return data, splits, seconds


def prepare_sids(cfg: Any, data: InteractionData, artifacts: Path):
    """Build the SIDs, or reuse the ones in ``artifacts`` if they were built from the same data
    and SID config (so that RL and evaluation see exactly the SIDs the SFT checkpoint used)."""
    from vstar.sid import item_vectors, load_index_json

    key = {"data": dataclasses.asdict(cfg.data), "sid": dataclasses.asdict(cfg.sid),
           "n_items": data.n_items}
    key_file, index_file, report_file = (artifacts / "sid_key.json", artifacts / "sid.index.json",
                                         artifacts / "sid_report.json")
    t0 = time.perf_counter()
    if key_file.is_file() and index_file.is_file() and report_file.is_file() \
            and json.loads(key_file.read_text()) == json.loads(json.dumps(key)):
        report = json.loads(report_file.read_text())
        sids = load_index_json(index_file, data.item_ids, report["codebook_sizes"])
        emb, _ = item_vectors(cfg.sid, data.item_text, data.n_items,
                              Path(cfg.run.cache_dir) / "embeddings", show_progress=False)
        log.info("SIDs reused from %s", index_file)
        return sids, report, emb, time.perf_counter() - t0
    sids, report, emb = build_sids(cfg.sid, data.item_text, data.n_items, data.item_ids,
                                   cache_dir=Path(cfg.run.cache_dir) / "embeddings")
    seconds = time.perf_counter() - t0
    report = dict(report, seconds=seconds)
    save_index_json(index_file, sids, data.item_ids)
    atomic_write_json(report_file, report)
    atomic_write_json(key_file, key)
    log.info("SIDs (%s, %s): collision rate %.4f -> %.4f, levels %s, codebook use %s (%.1fs)",
             cfg.sid.method, cfg.sid.collisions, report["collision_rate_before"],
             report["collision_rate_after"], sids.codebook_sizes,
             report.get("codebook_usage"), seconds)
    return sids, report, emb, seconds


def training_popularity(splits: Splits, n_items: int) -> np.ndarray:
    """How often each item is a training target: the popularity behind the long-tail metric.

    (The popularity baseline also counts each user's first history items; see
    ``vstar.baselines.popularity``.)"""
    counts = np.zeros(n_items, dtype=np.int64)
    np.add.at(counts, splits.train.targets, 1)
    return counts


def prepare(cfg: Any) -> Prepared:
    artifacts = experiment_dir(cfg) / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    data, splits, t_data = prepare_data(cfg)
    sids, report, emb, t_sid = prepare_sids(cfg, data, artifacts)
    return Prepared(data, splits, sids, report, emb, training_popularity(splits, data.n_items),
                    {"data": t_data, "sid": t_sid})


def build_generator(cfg: Any, vocab: SidVocab, max_history: int) -> SidGenerator:
    gcfg = GeneratorConfig(vocab_size=vocab.size, block_size=1 + (max_history + 1) * vocab.n_levels,
                           n_layer=cfg.model.n_layer, n_head=cfg.model.n_head,
                           n_embd=cfg.model.n_embd, dropout=cfg.model.dropout)
    return SidGenerator(gcfg)


def _evaluate(run: RunDir, cfg: Any, prep: Prepared, method: str, seed: int, split: str,
              ranked: np.ndarray, cost: dict, extra: dict) -> dict:
    rows = getattr(prep.splits, split)
    metrics = evaluate_ranking(ranked, rows.targets, n_items=prep.data.n_items, ks=list(cfg.eval.ks),
                               item_emb=prep.item_emb, popularity=prep.popularity)
    with atomic_path(run / f"ranks_{split}.npy") as tmp:   # per-row target ranks for paired tests
        with open(tmp, "wb") as fh:
            np.save(fh, target_ranks(ranked, rows.targets))
    path = write_metrics(run.path if split == "test" else run.path / split, dataset=prep.data.name,
                         protocol=prep.splits.protocol, method=method, seed=seed, split=split,
                         metrics=metrics, invalid_rate=float(cost.get("invalid_rate", 0.0)),
                         cost=cost, extra=extra)
    log.info("%s seed %d %s: %s", method, seed, split,
             ", ".join(f"{k} {metrics[k]:.4f}" for k in ("HR@1", "HR@5", "HR@10", "NDCG@10")
                       if k in metrics))
    return {"path": str(path), **metrics}


def _evaluate_splits(cfg, prep: Prepared, run: RunDir, method: str, seed: int, rank,
                     train_seconds: float, extra: dict, cost_extra: dict | None = None) -> dict:
    """Rank every evaluation split with ``rank(rows, split) -> (ranked, cost)`` and write metrics."""
    out = {}
    for split in cfg.eval.splits:
        ranked, cost = rank(getattr(prep.splits, split), split)
        cost.update(train_seconds=train_seconds, **(cost_extra or {}))
        out[split] = _evaluate(run, cfg, prep, method, seed, split, ranked, cost, extra)
    return out


def _timed_ranker(model, width: int):
    """rank(rows, split) for a model with ``.rank(histories, k)`` (popularity, SASRec)."""
    def rank(rows, split):
        t0 = time.perf_counter()
        ranked = model.rank(rows.histories, width)
        wall = time.perf_counter() - t0
        return ranked, {"wall_seconds": wall, "wall_seconds_per_user": wall / max(1, len(rows)),
                        "invalid_rate": 0.0}
    return rank


def _beam_ranker(cfg, prep: Prepared, model, vocab: SidVocab, trie: SidTrie):
    """rank(rows, split) for a SID generator: constrained beam search of width eval.beam_width."""
    def rank(rows, split):
        return rank_rows(model, vocab, trie, rows, cfg.eval.beam_width,
                         batch_size=cfg.eval.batch_size, max_history=prep.splits.max_history,
                         progress=cfg.run.progress, desc=f"beam search {split}")
    return rank


def run_popularity(cfg, prep: Prepared, run: RunDir, seed: int) -> dict:
    from vstar.baselines import PopularityRecommender

    t0 = time.perf_counter()
    model = PopularityRecommender().fit(prep.splits.train, prep.data.n_items)
    return _evaluate_splits(cfg, prep, run, "popularity", seed,
                            _timed_ranker(model, cfg.eval.beam_width),
                            time.perf_counter() - t0, {})


def run_sasrec(cfg, prep: Prepared, run: RunDir, seed: int) -> dict:
    from vstar.baselines import train_sasrec

    scfg = dataclasses.replace(cfg.sasrec, seed=seed, max_len=prep.splits.max_history)
    t0 = time.perf_counter()
    model = train_sasrec(prep.splits, prep.data.n_items, scfg,
                         checkpoint_path=run / "sasrec.safetensors")
    return _evaluate_splits(cfg, prep, run, "sasrec", seed,
                            _timed_ranker(model, cfg.eval.beam_width), time.perf_counter() - t0,
                            {"n_parameters": sum(p.numel() for p in model.parameters())})


def run_sft(cfg, prep: Prepared, run: RunDir, seed: int) -> dict:
    vocab = SidVocab(prep.sids.codebook_sizes)
    trie = SidTrie(prep.sids.codes, prep.sids.codebook_sizes)
    model = build_generator(cfg, vocab, prep.splits.max_history)
    scfg = dataclasses.replace(cfg.sft, seed=seed)
    log.info("generator: %d parameters, vocabulary %d, %d SID levels", model.num_parameters(),
             vocab.size, vocab.n_levels)
    t0 = time.perf_counter()
    model, history = train_sft(model, vocab, trie, prep.splits, scfg, progress=cfg.run.progress)
    train_s = time.perf_counter() - t0
    atomic_write_json(run / "sft_history.json", history)
    save_checkpoint(run / "generator.safetensors", model.state_dict(),
                    {"generator_config": vars(model.cfg), "codebook_sizes": vocab.codebook_sizes})
    return _evaluate_splits(cfg, prep, run, "sft", seed, _beam_ranker(cfg, prep, model, vocab, trie),
                            train_s, {"n_parameters": model.num_parameters(),
                                      "epochs": len(history), "sid_levels": vocab.n_levels})


def load_generator(path: Path, vocab: SidVocab) -> SidGenerator:
    from vstar.eval.runs import load_checkpoint

    state, meta = load_checkpoint(path)
    if list(meta["codebook_sizes"]) != vocab.codebook_sizes:
        raise InputError(f"checkpoint SID codebooks {meta['codebook_sizes']} differ from the "
                         f"current SIDs {vocab.codebook_sizes}", file=str(path))
    model = SidGenerator(GeneratorConfig(**meta["generator_config"]))
    model.load_state_dict(state)
    return model.eval()


def run_rl(cfg, prep: Prepared, run: RunDir, seed: int, method: str) -> dict:
    """RL from the same seed's SFT checkpoint, then the same beam-search evaluation."""
    from vstar.rl.trainer import RL_PRESETS, RLTrainer

    sft_ckpt = experiment_dir(cfg) / "sft" / f"seed{seed}" / "generator.safetensors"
    if not sft_ckpt.is_file():
        raise InputError(f"RL starts from the SFT generator of seed {seed}: run method 'sft' "
                         "first (put it before the RL methods in run.methods)", file=str(sft_ckpt))
    vocab = SidVocab(prep.sids.codebook_sizes)
    trie = SidTrie(prep.sids.codes, prep.sids.codebook_sizes)
    policy = load_generator(sft_ckpt, vocab)
    rcfg = dataclasses.replace(cfg.rl, seed=seed, **RL_PRESETS.get(method, {}))
    atomic_write_json(run / "rl_config.json", dataclasses.asdict(rcfg))
    values = None
    if cfg.data.value_cols and cfg.data.value_cols[0] in prep.data.item_features:
        values = prep.data.item_features[cfg.data.value_cols[0]]
    trainer = RLTrainer(policy, vocab, trie, prep.splits.train, rcfg, prep.splits.max_history,
                        item_emb=prep.item_emb, item_values=values)
    state = run / "rl_state.safetensors"
    if state.is_file():
        trainer.load(state)
        log.info("resumed RL from %s at step %d", state, trainer.step_idx)
    t0 = time.perf_counter()
    trainer.train(run.path, progress=cfg.run.progress)
    train_s = time.perf_counter() - t0
    trainer.save(state)
    save_checkpoint(run / "generator.safetensors", policy.state_dict(),
                    {"generator_config": vars(policy.cfg), "codebook_sizes": vocab.codebook_sizes})
    hist = trainer.history
    # the mean over steps of every logged curve (exploration, advantage spread, cost)
    summary = {k: float(np.mean([h[k] for h in hist if k in h]))
               for k in (hist[0] if hist else {}) if k not in ("step", "lr")}
    return _evaluate_splits(cfg, prep, run, method, seed,
                            _beam_ranker(cfg, prep, policy, vocab, trie), train_s,
                            {"rl": {k: v for k, v in dataclasses.asdict(rcfg).items()
                                    if not isinstance(v, dict)}, "rl_summary": summary},
                            {"seconds_per_rl_step": summary.get("step_seconds")})


RUNNERS = {"popularity": run_popularity, "sasrec": run_sasrec, "sft": run_sft}


def run_method(cfg: Any, prep: Prepared, method: str, seed: int) -> Path:
    torch.set_num_threads(cfg.run.num_threads)
    set_seed(seed)
    folder = experiment_dir(cfg) / method / f"seed{seed}"
    if cfg.run.resume and (folder / "rl_state.safetensors").is_file():
        run = RunDir.open(folder, console=False)      # RL picks up its saved state below
    else:
        run = RunDir.create(experiment_dir(cfg), f"{method}/seed{seed}", to_container(cfg), seed,
                            overwrite=cfg.run.overwrite, console=False)
    with run:
        run.logger.info("method %s, seed %d, dataset %s (%s)", method, seed, prep.data.name,
                        prep.splits.protocol)
        if method in RUNNERS:
            RUNNERS[method](cfg, prep, run, seed)
        else:
            run_rl(cfg, prep, run, seed, method)
        return run.path


def run_pipeline(cfg: Any) -> list[Path]:
    """All methods x seeds of one config; returns the run folders."""
    torch.set_num_threads(cfg.run.num_threads)
    prep = prepare(cfg)
    runs = []
    for seed in cfg.run.seeds:
        for method in cfg.run.methods:
            t0 = time.perf_counter()
            runs.append(run_method(cfg, prep, method, seed))
            prep.stage_seconds[f"{method}/seed{seed}"] = time.perf_counter() - t0
    atomic_write_json(experiment_dir(cfg) / "stage_seconds.json", prep.stage_seconds)
    return runs
