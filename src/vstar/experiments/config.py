"""One typed config per stage, composed into the pipeline config; YAML files + dotlist overrides.

    cfg = load_config("configs/demo_ml100k.yaml", ["sft.max_epochs=5", "run.seeds=[0,1,2]"])

Unknown keys and wrongly typed values are errors that name the file or the override.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vstar.baselines.config import SASRecConfig
from vstar.core.device import AUTOCASTS, DEVICES
from vstar.core.errors import InputError
from vstar.core.validate import (Rule, boolean, check_fields, count, list_of, non_negative,
                                 non_negative_int, one_of, require, text)
from vstar.data.config import DataConfig
from vstar.experiments.registry import get_method
from vstar.model.config import ModelConfig
from vstar.sid.config import SidConfig
from vstar.train.config import RLConfig, SFTConfig

EVAL_SPLITS = ("valid", "test")


def _folder_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip()) and "/" not in v and v not in (".", "..")


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    beam_width: int = 50          # generative ranking = constrained beam search of this width
    batch_size: int = 256         # users decoded at once
    splits: list[str] = field(default_factory=lambda: ["test"])
    # weight w of item-head fusion in generative ranking (beam search, SFT validation): a
    # prefix is ranked by log pi + w * log q, q the item head's softmax over the catalogue;
    # needs a generator trained with sft.item_loss > 0 (docs/method.md 1, "Item-level loss")
    item_head: float = 0.0

    RULES = {"ks": list_of(count, nonempty=True, unique=True), "beam_width": count,
             "batch_size": count, "item_head": non_negative,
             "splits": list_of(one_of(*EVAL_SPLITS), nonempty=True, unique=True)}

    def validate(self, prefix: str = "eval") -> None:
        check_fields(self, prefix, self.RULES)
        require(max(self.ks) <= self.beam_width, f"{prefix}.ks", list(self.ks),
                f"cut-offs <= {prefix}.beam_width={self.beam_width} (a ranking lists that many "
                "items)")


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    cache_dir: str = ".cache"     # embeddings, downloaded datasets
    seeds: list[int] = field(default_factory=lambda: [0])
    methods: list[str] = field(default_factory=lambda: ["popularity", "sasrec", "sft"])
    num_threads: int = 2          # torch intra-op threads for every stage
    overwrite: bool = False
    resume: bool = False          # RL: continue an interrupted run folder from rl_state.safetensors
    progress: bool = True
    tensorboard: bool = True      # training curves as TensorBoard event files in each run folder
    wandb: bool = False           # also to Weights & Biases (needs the optional wandb package)
    wandb_project: str = "vstar"
    # where every stage runs (vstar.core.device): "auto" = CUDA if available, else the CPU;
    # "cuda" without a GPU is an error when the run starts (not when the config is loaded, so a
    # GPU config can be checked on a machine without one). Under torchrun: LOCAL_RANK's GPU.
    device: str = "auto"
    # "bf16": the backbone's forwards under torch.autocast(bfloat16), CUDA only; losses, beam
    # scores and the value head stay float32. "none": the weights' own dtype (model.dtype).
    autocast: str = "none"

    RULES = {"name": Rule(_folder_name, "a folder name (no '/', not '.' or '..')"),
             "out_dir": text(), "cache_dir": text(),
             "seeds": list_of(non_negative_int, nonempty=True, unique=True),
             "methods": list_of(text(), nonempty=True, unique=True),
             "num_threads": count, "overwrite": boolean(), "resume": boolean(),
             "progress": boolean(), "tensorboard": boolean(), "wandb": boolean(),
             "wandb_project": text(), "device": one_of(*DEVICES),
             "autocast": one_of(*AUTOCASTS)}

    def validate(self, prefix: str = "run") -> None:
        check_fields(self, prefix, self.RULES)
        for m in self.methods:
            get_method(m)           # InputError naming run.methods for an unregistered method
        require(not (self.resume and self.overwrite), f"{prefix}.resume", self.resume,
                f"false when {prefix}.overwrite is true (replace a run or continue it, not both)")


# what a resumed run may change (``RunDir.resume``): bookkeeping, and RL steps may grow
RESUMABLE = ("run.resume", "run.overwrite", "run.progress", "run.num_threads", "run.methods",
             "run.seeds", "run.tensorboard", "run.wandb", "run.wandb_project", "rl.steps",
             "rl.log_every", "rl.checkpoint_every", "eval.batch_size")


@dataclass
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    sid: SidConfig = field(default_factory=SidConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "PipelineConfig":
        """Every section's rules (``vstar.core.validate``); InputError naming the first bad
        field, its value and what was expected. Returns self."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        require(self.eval.item_head == 0 or self.sft.item_loss > 0, "eval.item_head",
                self.eval.item_head, "0 unless sft.item_loss > 0 (the item head is trained by "
                "the item-level loss; untrained, it would rank at random)")
        require(self.sft.item_distill == 0 or self.sft.item_loss > 0, "sft.item_distill",
                self.sft.item_distill, "0 unless sft.item_loss > 0 (it distils into the item "
                "head, which only the item-level loss trains)")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> "PipelineConfig":
    """Schema defaults <- YAML file <- ``key=value`` overrides; returns plain typed dataclasses,
    validated (``PipelineConfig.validate``) before anything runs."""
    cfg = OmegaConf.structured(PipelineConfig)
    if path is not None:
        cfg = OmegaConf.merge(cfg, _read_yaml(Path(path)))  # type: ignore[assignment]
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key=value (e.g. sft.lr=1e-3)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise InputError(f"invalid override {item!r}: {_one_line(err)}",
                             field=getattr(err, "full_key", None)) from None
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise InputError(f"invalid config: {_one_line(err)}", file=None if path is None
                         else str(path), field=getattr(err, "full_key", None)) from None
    return typed.validate()  # type: ignore[union-attr]


def _read_yaml(path: Path) -> Any:
    """The YAML file as an OmegaConf mapping merged onto the schema; InputError naming the file
    (and line) for a missing, non-UTF-8, unparsable or non-mapping file, or an unknown key."""
    if not path.is_file():
        raise InputError("config file not found", file=str(path))
    try:
        loaded = OmegaConf.load(path)
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text (byte {err.start})", file=str(path)) from None
    except OSError as err:             # OmegaConf: "Invalid loaded object type: int"
        raise InputError(f"expected a mapping of sections (data:, sid:, ...): {err}",
                         file=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(err, 'problem', None) or _one_line(err)}",
                         file=str(path), line=None if mark is None else mark.line + 1) from None
    if not isinstance(loaded, DictConfig):
        raise InputError(f"expected a mapping of sections (data:, sid:, ...), got a "
                         f"{type(loaded).__name__.removesuffix('Config').lower()}", file=str(path))
    try:
        return OmegaConf.merge(OmegaConf.structured(PipelineConfig), loaded)
    except OmegaConfBaseException as err:
        raise InputError(f"invalid config: {_one_line(err)}", file=str(path),
                         field=getattr(err, "full_key", None)) from None


def _one_line(err: Exception) -> str:
    """OmegaConf appends 'full_key: ...' / 'object_type=...' lines: keep the first one."""
    text = str(getattr(err, "msg", None) or err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def to_container(cfg: Any) -> dict:
    """The config as plain dicts and lists (what each run folder's config.yaml stores)."""
    return dataclasses.asdict(cfg)
