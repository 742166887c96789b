"""One typed config per stage, composed into the pipeline config; YAML files + dotlist overrides.

    cfg = load_config("configs/demo_ml100k.yaml", ["sft.max_epochs=5", "run.seeds=[0,1,2]"])

Unknown keys and wrongly typed values are errors that name the file or the override.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vstar.baselines.config import SASRecConfig
from vstar.core.errors import InputError
from vstar.data.config import DataConfig
from vstar.experiments.registry import get_method
from vstar.model.config import ModelConfig
from vstar.sid.config import SidConfig
from vstar.train.config import RLConfig, SFTConfig

@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    beam_width: int = 50          # generative ranking = constrained beam search of this width
    batch_size: int = 256         # users decoded at once
    splits: list[str] = field(default_factory=lambda: ["test"])


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> "PipelineConfig":
    """Schema defaults <- YAML file <- ``key=value`` overrides; returns plain typed dataclasses."""
    cfg = OmegaConf.structured(PipelineConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("config file not found", file=str(path))
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise InputError(f"invalid config: {err.msg if hasattr(err, 'msg') else err}",
                             file=str(path), field=getattr(err, "full_key", None)) from None
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key=value (e.g. sft.lr=1e-3)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise InputError(f"invalid override {item!r}: {err.msg if hasattr(err, 'msg') else err}",
                             field=getattr(err, "full_key", None)) from None
    for m in cfg.run.methods:
        get_method(m)               # InputError naming run.methods for an unregistered method
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_container(cfg: Any) -> dict:
    """The config as plain dicts and lists (what each run folder's config.yaml stores)."""
    return dataclasses.asdict(cfg)
