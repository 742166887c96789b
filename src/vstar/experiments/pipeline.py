"""The whole pipeline, stage by stage: data -> semantic IDs -> methods -> evaluation -> table.

    cfg = load_config("configs/demo_ml100k.yaml")
    run_pipeline(cfg)                 # every (seed, method) of cfg.run, one run folder each

Under torchrun (``vstar.core.dist``) every rank runs the same pipeline: rank 0 prepares the
shared artifacts first and alone creates, writes and locks run folders; the trainers and the
evaluation split their work over the ranks (``train_sft``, ``RLTrainer``, ``rank_rows``).

Each stage is a function the CLI calls; none of them parses the command line. Artefacts shared by
all runs of one config (SIDs, their report) live in the experiment's ``artifacts/``; every
(method, seed) gets its own run folder (``vstar.core.layout``). What a method does is its runner
in the method registry (``vstar.experiments.methods``); this module only prepares what they share
and evaluates what they return, the same way for every method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vstar.core import dist
from vstar.core.device import autocast, check_autocast, resolve_device
from vstar.core.errors import InputError, check_finite
from vstar.core.io import FolderLock, atomic_path, atomic_write_json, read_json
from vstar.core.layout import ExperimentLayout
from vstar.core.repro import checkpoint_sha256, file_sha256, fingerprint, set_seed
from vstar.core.scalars import NullScalars, Scalars, open_scalars
from vstar.data import load_dataset, make_splits
from vstar.data.types import InteractionData, SplitRows, Splits
from vstar.eval.metrics import evaluate_ranking, target_ranks
from vstar.eval.records import write_metrics
from vstar.experiments.collab import experiment_sasrec_config, fuse_vectors, sasrec_item_vectors
from vstar.experiments.registry import Method, get_method
from vstar.experiments.config import RESUMABLE, load_config
from vstar.experiments.rundir import MISSING, RunDir, config_diff, config_value, run_state
from vstar.sid import build_sids, item_vectors, load_index_json, save_index_json
from vstar.sid.types import SemanticIds

log = logging.getLogger(__name__)

# rank(rows, split) -> (ranked item indices [R, W], cost dict)
Ranker = Callable[[SplitRows, str], tuple[np.ndarray, dict]]


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

    def fingerprints(self) -> dict:
        """sha256 of the SIDs and of the item vocabulary (what a checkpoint's rows mean)."""
        return {"sids": fingerprint(self.sids.codes, list(self.sids.codebook_sizes)),
                "items": fingerprint([str(i) for i in self.data.item_ids])}


@dataclass
class MethodContext:
    """What a method's runner gets: the config, the shared data, its run folder and seed."""

    cfg: Any
    prep: Prepared
    run: RunDir
    seed: int
    method: Method
    scalars: Scalars = field(default_factory=NullScalars)   # training curves (run.tensorboard)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # run.device
    autocast: str = "none"                                  # run.autocast
    label: str = ""          # the run folder's and the results' name (``--as``); the method's

    def __post_init__(self) -> None:
        self.label = self.label or self.method.name

    def precision(self):
        """The region a model's forward runs in (``run.autocast``; ``vstar.core.device``)."""
        return autocast(self.device, self.autocast)

    @property
    def experiment(self) -> ExperimentLayout:
        return ExperimentLayout.of_config(self.cfg)

    def evaluate(self, rank: Ranker, train_seconds: float, extra: dict,
                 cost_extra: dict | None = None) -> dict:
        """Rank every split of ``cfg.eval.splits`` with ``rank`` and write its metrics."""
        return evaluate_splits(self, rank, train_seconds, extra, cost_extra)



def runtime(cfg: Any, methods: list[str] | None = None) -> tuple[torch.device, str]:
    """(device, autocast mode) of ``run.device`` / ``run.autocast``, checked before any work:
    InputError naming ``run.device`` for ``cuda`` without a GPU, ``run.autocast`` for ``bf16``
    off CUDA, and, when ``methods`` (default: all) train a generator from scratch (kind
    ``sft``), ``model.hf_name_or_path`` for a pretrained HF folder that is not there."""
    device = resolve_device(cfg.run.device)
    check_autocast(cfg.run.autocast, device)
    model = cfg.model
    builds = methods is None or any(get_method(m).kind == "sft" for m in methods)
    if builds and model.backbone == "hf" and model.hf_name_or_path:
        folder = Path(model.hf_name_or_path).expanduser()
        if not (folder / "config.json").is_file():
            raise InputError("expected a local Hugging Face model folder with config.json "
                             "(vstar never downloads models; edit the path to where the model "
                             "is on disk)", file=str(folder), field="model.hf_name_or_path")
    return device, cfg.run.autocast


def prepare_data(cfg: Any) -> tuple[InteractionData, Splits, float]:
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    if data.n_interactions == 0 or data.n_items == 0:
        raise InputError(f"no interactions left to train on (k_core {cfg.data.k_core}, "
                         f"min_rating {cfg.data.min_rating})", file=cfg.data.path or None,
                         field="data.k_core" if cfg.data.k_core else None)
    splits = make_splits(data, cfg.data)
    for split in ("train",) + tuple(cfg.eval.splits):
        if len(getattr(splits, split)) == 0:
            raise InputError(f"the {split} split has no rows: {splits.protocol} needs users "
                             f"with at least 3 interactions ({data.n_users} users, "
                             f"{data.n_interactions} interactions)", file=cfg.data.path or None,
                             field="data.protocol")
    seconds = time.perf_counter() - t0
    log.info("data %s: %d users, %d items, %d interactions; %s rows train/valid/test = %d/%d/%d "
             "(%.1fs)", data.name, data.n_users, data.n_items, data.n_interactions,
             splits.protocol, len(splits.train), len(splits.valid), len(splits.test), seconds)
    return data, splits, seconds


def _without_device(key: dict) -> dict:
    """A saved SID key without ``sasrec.device`` (keys written before it was left out have it)."""
    if isinstance(key.get("sasrec"), dict):
        key["sasrec"].pop("device", None)
    return key


def _refuse_to_replace_used_sids(cfg: Any, experiment: ExperimentLayout, saved: dict | None,
                                 key: dict) -> None:
    """InputError if the experiment's SIDs were built from other settings (``saved``, its stored
    key, against ``key``) and a generator was already trained on them: rebuilding would
    overwrite the index (and the SASRec teacher) those checkpoints need. ``run.overwrite=true``
    rebuilds anyway; SIDs no run used are rebuilt."""
    if cfg.run.overwrite or saved is None:
        return
    def shown(value: Any) -> str:
        return "(absent)" if value is MISSING else repr(value)
    changes = [f"{name}: {shown(config_value(saved, name))} -> {shown(config_value(key, name))}"
               for name in config_diff(saved, key)]
    used = sorted(experiment.root.glob("*/seed*/generator*.safetensors"))
    if changes and used:
        raise InputError(
            f"the experiment's SIDs were built from other settings ({'; '.join(changes)}) and "
            f"{len(used)} trained generator(s) use them (e.g. {used[0].parent}); choose another "
            "run.name, restore those settings, or set run.overwrite=true to rebuild the SIDs",
            file=str(experiment.sid_key))


def prepare_sids(cfg: Any, data: InteractionData, splits: Splits, experiment: ExperimentLayout):
    """Build the SIDs, or reuse the experiment's if they were built from the same data and SID
    config (so that RL and evaluation see exactly the SIDs the SFT checkpoint used).
    ``sid.vectors="sasrec"`` quantises collaborative vectors (``vstar.experiments.collab``)."""
    # sid.sasrec_hidden enters through the experiment SASRec's width below, so that a config
    # that spells out the width it had before (or leaves it at 0) keeps its SIDs
    key = {"data": dataclasses.asdict(cfg.data),
           "sid": {k: v for k, v in dataclasses.asdict(cfg.sid).items() if k != "sasrec_hidden"},
           "n_items": data.n_items}
    if cfg.sid.vectors in ("sasrec", "fused"):
        # where SASRec trains is not what the SIDs are: a run moved to a GPU, or a config
        # written before sasrec.device existed, keeps its SIDs
        key["sasrec"] = {k: v for k, v in dataclasses.asdict(experiment_sasrec_config(cfg)).items()
                         if k != "device"}
    for name in ("index_path", "vectors_path"):        # an edited file gives new SIDs
        if getattr(cfg.sid, name) and Path(getattr(cfg.sid, name)).is_file():
            key[f"{name}_sha256"] = file_sha256(getattr(cfg.sid, name))
    key = json.loads(json.dumps(key))                  # as it reads back from sid_key.json
    cache = Path(cfg.run.cache_dir)
    t0 = time.perf_counter()
    saved = (_without_device(json.loads(experiment.sid_key.read_text()))
             if experiment.sid_key.is_file() else None)
    _refuse_to_replace_used_sids(cfg, experiment, saved, key)
    if saved == key and experiment.sid_index.is_file() and experiment.sid_report.is_file():
        report = json.loads(experiment.sid_report.read_text())
        sids = load_index_json(experiment.sid_index, data.item_ids, report["codebook_sizes"])
        emb, _ = item_vectors(cfg.sid, data.item_text, data.n_items, cache, show_progress=False)
        log.info("SIDs reused from %s", experiment.sid_index)
        return sids, report, emb, time.perf_counter() - t0
    vectors, source = None, "given"
    if cfg.sid.vectors in ("sasrec", "fused"):
        vectors, source = (sasrec_item_vectors(cfg, splits, data.n_items, experiment.teacher),
                           "sasrec item embeddings")
    if cfg.sid.vectors == "fused":
        text, text_source = item_vectors(cfg.sid, data.item_text, data.n_items, cache)
        if text is None:
            raise InputError("sid.vectors=fused needs item text or sid.vectors_path",
                             field="sid.vectors")
        vectors = fuse_vectors(text, vectors)
        source = f"L2-normalised {text_source} + sasrec item embeddings, concatenated"
    sids, report, emb = build_sids(cfg.sid, data.item_text, data.n_items, data.item_ids,
                                   cache_dir=cache, vectors=vectors, vectors_source=source)
    seconds = time.perf_counter() - t0
    report = dict(report, seconds=seconds)
    save_index_json(experiment.sid_index, sids, data.item_ids)
    atomic_write_json(experiment.sid_report, report)
    atomic_write_json(experiment.sid_key, key)
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
    """Data, splits and SIDs (under torchrun rank 0 builds and writes the SIDs first, the other
    ranks then read them)."""
    experiment = ExperimentLayout.of_config(cfg)
    with dist.main_first():
        if dist.is_main():
            experiment.artifacts.mkdir(parents=True, exist_ok=True)
        data, splits, t_data = prepare_data(cfg)
        sids, report, emb, t_sid = prepare_sids(cfg, data, splits, experiment)
    return Prepared(data, splits, sids, report, emb, training_popularity(splits, data.n_items),
                    {"data": t_data, "sid": t_sid})


# ---------------------------------------------------------------------------------------------
# evaluation: the same for every method
# ---------------------------------------------------------------------------------------------

def evaluate_split(ctx: MethodContext, split: str, ranked: np.ndarray, cost: dict,
                   extra: dict) -> dict:
    """Metrics of one split's ranking -> ranks file + metrics.json of the run (rank 0 writes);
    returns them."""
    cfg, prep, layout = ctx.cfg, ctx.prep, ctx.run.layout
    rows = getattr(prep.splits, split)
    metrics = evaluate_ranking(ranked, rows.targets, n_items=prep.data.n_items, ks=list(cfg.eval.ks),
                               item_emb=prep.item_emb, popularity=prep.popularity)
    for name, value in metrics.items():    # accuracy is always defined; diversity metrics are
        if name.startswith(("HR@", "NDCG@")):  # NaN where undefined (ILD@1: no pairs)
            check_finite(value, f"{split} metric {name}")
    if not dist.is_main():
        return {"path": None, **metrics}
    with atomic_path(layout.ranks(split)) as tmp:   # per-row target ranks for paired tests
        with open(tmp, "wb") as fh:
            np.save(fh, target_ranks(ranked, rows.targets))
    path = write_metrics(layout.metrics_dir(split), dataset=prep.data.name,
                         protocol=prep.splits.protocol, method=ctx.label, seed=ctx.seed,
                         split=split, metrics=metrics,
                         invalid_rate=float(cost.get("invalid_rate", 0.0)), cost=cost,
                         extra=extra if ctx.label == ctx.method.name
                         else {"recipe": ctx.method.name, **extra})
    log.info("%s seed %d %s: %s", ctx.label, ctx.seed, split,
             ", ".join(f"{k} {_number(metrics[k])}" for k in ("HR@1", "HR@5", "HR@10", "NDCG@10")
                       if k in metrics))
    return {"path": str(path), **metrics}


def _number(value: Any) -> str:
    """A metric for a log line: NaN / Inf / missing never print as numbers."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and np.isfinite(value) else "n/a"


def evaluate_splits(ctx: MethodContext, rank: Ranker, train_seconds: float, extra: dict,
                    cost_extra: dict | None = None) -> dict:
    """Rank every evaluation split with ``rank(rows, split) -> (ranked, cost)``; write metrics."""
    out = {}
    for split in ctx.cfg.eval.splits:
        ranked, cost = rank(getattr(ctx.prep.splits, split), split)
        cost.update(train_seconds=train_seconds, **(cost_extra or {}))
        out[split] = evaluate_split(ctx, split, ranked, cost, extra)
    return out


# ---------------------------------------------------------------------------------------------
# running methods
# ---------------------------------------------------------------------------------------------

def run_method(cfg: Any, prep: Prepared, method: str, seed: int, label: str | None = None
               ) -> Path:
    """One (method, seed): a fresh run folder (or, with ``run.resume``, the unfinished one, whose
    config and SIDs must match; a finished one is kept as is), then the method's runner from the
    registry. The folder is locked while the runner works. Under torchrun rank 0 creates (or
    resumes) and owns the folder; the other ranks run the runner beside it, writing nothing.
    ``label`` names the run folder and the results instead of ``method`` (a variant of a recipe
    with other settings, e.g. one point of a sweep: ``vstar rl --method vstar --as vstar_lr1e-4``)."""
    spec = get_method(method)
    label = label or method
    torch.set_num_threads(cfg.run.num_threads)
    device, precision = runtime(cfg, [method])
    set_seed(seed)
    experiment = ExperimentLayout.of_config(cfg)
    layout = experiment.run(label, seed)
    config = dataclasses.asdict(cfg)
    owned: list[RunDir] = []

    def open_run() -> tuple[bool, bool]:          # (already finished, resumed); rank 0 only
        if cfg.run.resume and layout.versions.is_file():
            if run_state(layout.path) == "finished":
                log.info("%s seed %d already finished: kept as is (run.resume)", label, seed)
                return True, True
            run = RunDir.resume(layout.path, config, resumable=RESUMABLE, console=False,
                                defaults=dataclasses.asdict(type(cfg)()))
        else:
            run = RunDir.create(experiment.root, experiment.run_name(label, seed), config,
                                seed, overwrite=cfg.run.overwrite, console=False)
        try:
            check_provenance(run, prep)
        except BaseException:
            run.close()
            raise
        owned.append(run)
        return False, run.resumed

    finished, resumed = dist.main_result(open_run)
    if finished:
        return layout.path
    run = owned[0] if owned else RunDir(layout.path, seed, [], resumed=resumed)  # other ranks
    with run:
        run.logger.info("method %s%s, seed %d, dataset %s (%s)", method,
                        "" if label == method else f" as {label}", seed, prep.data.name,
                        prep.splits.protocol)
        with open_scalars(layout.tensorboard_dir, tensorboard=cfg.run.tensorboard,
                          wandb=cfg.run.wandb, wandb_project=cfg.run.wandb_project,
                          name=f"{experiment.name}/{experiment.run_name(label, seed)}",
                          config=config, main=dist.is_main()) as scalars:
            spec.runner(MethodContext(cfg, prep, run, seed, spec, scalars, device, precision,
                                      label))
        return run.path


def check_provenance(run: RunDir, prep: Prepared) -> None:
    """A new run records the fingerprints of its SIDs and items; a resumed one must match them."""
    now = prep.fingerprints()
    if run.resumed and run.layout.provenance.is_file():
        saved, _ = read_json(run.layout.provenance)
        for key, value in now.items():
            if saved.get(key) != value:
                raise InputError(f"cannot resume: the run was trained on other {key} than this "
                                 f"config gives (fingerprint {str(saved.get(key))[:12]} != "
                                 f"{value[:12]})", file=str(run.layout.provenance))
        return
    atomic_write_json(run.layout.provenance, now)


def parent_run(ctx: MethodContext, method: str) -> Path:
    """The generator of the same seed's ``method`` run this run starts from, after checking that
    run finished and was trained on this run's SIDs and items; records it as the parent (path and
    sha256) in this run's provenance.json."""
    parent = ctx.experiment.run(method, ctx.seed)
    ckpt = parent.generator_for(ctx.cfg.model.backbone)
    if not ckpt.exists():
        raise InputError(f"this run starts from the {method} generator of seed {ctx.seed}: run "
                         f"method {method!r} first (put it before the RL methods in run.methods)",
                         file=str(ckpt))
    state = run_state(parent.path)
    if state != "finished":
        raise InputError(f"the {method} run did not finish (state: {state}); rerun it first",
                         file=str(parent.path))
    if parent.provenance.is_file():
        saved, _ = read_json(parent.provenance)
        for key, value in ctx.prep.fingerprints().items():
            if saved.get(key) != value:
                raise InputError(f"the {method} generator was trained on other {key} than this "
                                 f"config gives (the experiment's {key} changed since); rerun "
                                 f"{method!r} or restore them", file=str(parent.provenance))
    check_item_head(ctx.cfg, parent.config)

    def record_parent() -> None:                  # rank 0 writes the run's provenance
        prov, _ = read_json(ctx.run.layout.provenance)
        sha = checkpoint_sha256(ckpt)
        if ctx.run.resumed and prov.get("parent", {}).get("generator_sha256", sha) != sha:
            raise InputError("cannot resume: the parent generator changed since this run "
                             "started", file=str(ckpt))
        prov["parent"] = {"run": str(parent.path), "generator_sha256": sha}
        atomic_write_json(ctx.run.layout.provenance, prov)

    dist.main_result(record_parent)
    return ckpt


def check_item_head(cfg: Any, parent_config: Path) -> None:
    """Ranking with the item head (``eval.item_head > 0``) needs a generator whose head was
    trained (``sft.item_loss > 0`` in the config its run saved): InputError otherwise, since an
    untrained head would fuse noise into every ranking."""
    if not cfg.eval.item_head or not parent_config.is_file():
        return
    if not load_config(parent_config).sft.item_loss > 0:
        raise InputError(f"eval.item_head={cfg.eval.item_head} ranks with the item head, but this "
                         "generator was trained without it (sft.item_loss 0); set "
                         "eval.item_head=0 sft.item_loss=0 sft.item_distill=0 for it, or "
                         "retrain its SFT",
                         file=str(parent_config), field="sft.item_loss")


def check_runs_free(cfg: Any, methods: list[str]) -> None:
    """Refuse at once (before data and SIDs are prepared, which may rewrite the experiment's
    shared artifacts) if another process holds one of the run folders this call would write."""
    experiment = ExperimentLayout.of_config(cfg)
    for seed in cfg.run.seeds:
        for method in methods:
            layout = experiment.run(method, seed)
            if layout.lock.is_file():
                FolderLock(layout.lock).acquire(layout.path).release()


def run_pipeline(cfg: Any) -> list[Path]:
    """All methods x seeds of one config; returns the run folders."""
    torch.set_num_threads(cfg.run.num_threads)
    device, _ = runtime(cfg, list(cfg.run.methods))   # a wrong device fails before any work
    log.info("device %s, autocast %s", device, cfg.run.autocast)
    check_runs_free(cfg, list(cfg.run.methods))
    prep = prepare(cfg)
    runs = []
    for seed in cfg.run.seeds:
        for method in cfg.run.methods:
            t0 = time.perf_counter()
            runs.append(run_method(cfg, prep, method, seed))
            prep.stage_seconds[f"{method}/seed{seed}"] = time.perf_counter() - t0
    if dist.is_main():
        atomic_write_json(ExperimentLayout.of_config(cfg).stage_seconds, prep.stage_seconds)
    return runs
