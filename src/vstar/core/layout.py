"""Every path inside an experiment folder (and the cache folder), spelled once.

    <run.out_dir>/<run.name>/                 ExperimentLayout
        artifacts/sid.index.json              the SIDs every method of the experiment shares
        artifacts/sid_report.json             collisions, codebook use, seconds
        artifacts/sid_key.json                the data + SID config they were built from
        stage_seconds.json, results.md
        <method>/.seed<k>.lock                the run's lock (held while a process writes it)
        <method>/seed<k>/                     RunLayout: one (method, seed) run
            config.yaml versions.json seed.txt log.txt status.json provenance.json
            metrics.json                      the test split; other splits in <split>/metrics.json
            ranks_<split>.npy                 1-based rank of each row's target (0: not listed)
            generator.safetensors             SFT / RL generator (model.backbone=vstar)
            generator_hf/                     ... in the Hugging Face layout (model.backbone=hf):
                                              config.json model.safetensors sid_vocab.json
            sasrec.safetensors
            rl_state.safetensors rl_config.json rl_log.jsonl
            sft_history.json sft_state.safetensors   SFT per-epoch state (resume)
            semantic_scorer.safetensors       A2PO's semantic judge (its aggregator)
            events.out.tfevents.*             TensorBoard curves (run.tensorboard; the folder is
                                              the log dir: `tensorboard --logdir runs/`)
            budget_<split>.json               the inference budget curve (`vstar budget`)
            report.html                       `vstar report RUN_DIR` of this run alone
        report.html                           `vstar report`: tables, curves, SIDs, search trees

    <run.cache_dir>/                          CacheLayout
        embeddings/text-emb-<key>.safetensors
        ml-100k/                              MovieLens-100K, unpacked from its PyPI wheel

Nothing else in vstar joins a file name onto a run or experiment folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstar.core.errors import InputError

METRICS_FILE = "metrics.json"
TENSORBOARD_EVENTS = "events.out.tfevents.*"   # torch.utils.tensorboard's event file names
_SEED_RE = re.compile(r"^seed(\d+)$")


def seed_folder_name(seed: int) -> str:
    return f"seed{int(seed)}"


@dataclass(frozen=True)
class RunLayout:
    """The files of one (method, seed) run folder ``<experiment>/<method>/seed<k>``."""

    path: Path

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    # provenance (written by vstar.experiments.rundir.RunDir)
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def versions(self) -> Path:
        return self.path / "versions.json"

    @property
    def seed_file(self) -> Path:
        return self.path / "seed.txt"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    @property
    def status(self) -> Path:
        """running / finished / failed / interrupted, with the holder and times."""
        return self.path / "status.json"

    @property
    def provenance(self) -> Path:
        """Hashes of the SIDs, item vocabulary and parent checkpoint the run was trained on."""
        return self.path / "provenance.json"

    @property
    def lock(self) -> Path:
        """The run's lock file, beside the folder (so deleting the folder never drops a lock)."""
        return self.path.parent / f".{self.path.name}.lock"

    # results
    def metrics_dir(self, split: str) -> Path:
        return self.path if split == "test" else self.path / split

    def metrics(self, split: str = "test") -> Path:
        return self.metrics_dir(split) / METRICS_FILE

    def ranks(self, split: str) -> Path:
        return self.path / f"ranks_{split}.npy"

    # checkpoints and training logs
    @property
    def generator(self) -> Path:
        return self.path / "generator.safetensors"

    @property
    def generator_hf(self) -> Path:
        """The generator as a Hugging Face model folder (``save_pretrained`` + SID vocabulary)."""
        return self.path / "generator_hf"

    def generator_for(self, backbone: str) -> Path:
        """Where a generator of ``model.backbone`` is saved: the safetensors file (vstar) or the
        Hugging Face folder (hf)."""
        return self.generator_hf if backbone == "hf" else self.generator

    @property
    def generator_checkpoint(self) -> Path:
        """The run's generator, whichever backbone wrote it (the HF folder if present)."""
        return self.generator_hf if self.generator_hf.is_dir() else self.generator

    @property
    def sasrec(self) -> Path:
        return self.path / "sasrec.safetensors"

    @property
    def rl_state(self) -> Path:
        return self.path / "rl_state.safetensors"

    @property
    def sft_state(self) -> Path:
        return self.path / "sft_state.safetensors"

    @property
    def rl_config(self) -> Path:
        return self.path / "rl_config.json"

    @property
    def rl_log(self) -> Path:
        return self.path / "rl_log.jsonl"

    @property
    def sft_history(self) -> Path:
        return self.path / "sft_history.json"

    @property
    def semantic_scorer(self) -> Path:
        """A2PO's semantic judge, trained on the training split (``vstar.train.semantic_reward``)."""
        return self.path / "semantic_scorer.safetensors"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard's log dir for the run: the run folder itself (event files
        ``events.out.tfevents.*``), so ``tensorboard --logdir <out_dir>`` lists every run as
        ``<experiment>/<method>/seed<k>``."""
        return self.path

    def tensorboard_events(self) -> list[Path]:
        """The run's TensorBoard event files, oldest first (a resumed run adds one)."""
        return sorted(self.path.glob(TENSORBOARD_EVENTS))

    @property
    def report(self) -> Path:
        """``vstar report RUN_DIR``'s HTML page of this run."""
        return self.path / "report.html"

    def budget_curve(self, split: str) -> Path:
        """The budget curve (beam vs VED at equal decode budgets) ``vstar budget`` measured."""
        return self.path / f"budget_{split}.json"

    # where it sits
    @property
    def method(self) -> str:
        return self.path.parent.name

    @property
    def seed(self) -> int | None:
        m = _SEED_RE.match(self.path.name)
        return int(m.group(1)) if m else None

    @property
    def experiment(self) -> "ExperimentLayout":
        return ExperimentLayout(self.path.resolve().parents[1])

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> "RunLayout":
        """The layout of an existing run folder; InputError unless it looks like one."""
        path = Path(run_dir)
        if not path.is_dir() or _SEED_RE.match(path.resolve().name) is None:
            raise InputError("expected a run folder <experiment>/<method>/seed<k>",
                             file=str(path))
        return cls(path)


@dataclass(frozen=True)
class ExperimentLayout:
    """The folder ``<run.out_dir>/<run.name>`` of one config: shared artifacts + run folders."""

    root: Path

    @classmethod
    def of_config(cls, cfg: Any) -> "ExperimentLayout":
        return cls(Path(cfg.run.out_dir) / cfg.run.name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def sid_index(self) -> Path:
        return self.artifacts / "sid.index.json"

    @property
    def sid_report(self) -> Path:
        return self.artifacts / "sid_report.json"

    @property
    def sid_key(self) -> Path:
        return self.artifacts / "sid_key.json"

    @property
    def teacher(self) -> Path:
        """The SASRec fitted on the training split with ``sid.seed``: its item vectors make
        ``sid.vectors="sasrec"`` SIDs, and it is the teacher of ``sft.distill``."""
        return self.artifacts / "teacher_sasrec.safetensors"

    def item_teacher(self, hidden: int) -> Path:
        """The SASRec of width ``hidden`` that ``sft.item_teacher_hidden`` distils into the
        item head (0: the experiment's ``teacher``)."""
        if hidden == 0:
            return self.teacher
        return self.artifacts / f"teacher_sasrec_w{hidden}.safetensors"

    @property
    def stage_seconds(self) -> Path:
        return self.root / "stage_seconds.json"

    @property
    def results(self) -> Path:
        return self.root / "results.md"

    @property
    def report(self) -> Path:
        """``vstar report``'s self-contained HTML page of the experiment."""
        return self.root / "report.html"

    def method_dir(self, method: str) -> Path:
        return self.root / method

    def run_name(self, method: str, seed: int) -> str:
        """The run folder relative to the experiment root."""
        return f"{method}/{seed_folder_name(seed)}"

    def run(self, method: str, seed: int) -> RunLayout:
        return RunLayout(self.root / self.run_name(method, seed))

    def seed_runs(self, method: str) -> dict[int, RunLayout]:
        """seed -> run layout for every ``seed<k>/`` folder of ``method`` (sorted by seed)."""
        folder = self.method_dir(method)
        if not folder.is_dir():
            raise InputError("method folder not found (expected <experiment>/<method>/seed<k>/)",
                             file=str(folder))
        out = {}
        for sub in folder.iterdir():
            m = _SEED_RE.match(sub.name)
            if m and sub.is_dir():
                out[int(m.group(1))] = RunLayout(sub)
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class CacheLayout:
    """``run.cache_dir``: downloads and embeddings reused across experiments."""

    root: Path

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def text_embeddings(self, key: str) -> Path:
        return self.embeddings / f"text-emb-{key[:32]}.safetensors"

    @property
    def movielens_100k(self) -> Path:
        return self.root / "ml-100k"
