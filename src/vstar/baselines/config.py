"""Typed hyper-parameters for the baselines (OmegaConf-compatible: plain fields, defaults everywhere)."""

from __future__ import annotations

from dataclasses import dataclass

from vstar.core.validate import (Rule, check_fields, count, fraction, non_negative, one_of,
                                 positive, require)
from vstar.data.windows import WINDOW_MODES


@dataclass
class SASRecConfig:
    """SASRec (Kang & McAuley 2018) trained with full-softmax cross-entropy over all items.

    ``OmegaConf.structured(SASRecConfig)`` gives a typed config that YAML files and command-line
    dotlists can override.
    """

    # model
    hidden: int = 64              # embedding / model width d
    layers: int = 2               # self-attention blocks
    heads: int = 2                # attention heads (hidden % heads == 0)
    dropout: float = 0.2          # on embeddings, attention weights and block outputs
    max_len: int = 20             # longest history the model reads (= the split's max_history)
    # training windows (vstar.data.windows): "chunks" = each user's training sequence read once,
    # loss at every position (SASRec's own recipe); "rows" = every row with exactly its history
    windows: str = "chunks"
    # optimisation (AdamW)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128         # training rows per step
    max_epochs: int = 200
    patience: int = 5             # stop after this many evaluations without a better valid NDCG@10
    eval_every: int = 1           # evaluate on the validation rows every this many epochs
    eval_k: int = 10              # early-stopping metric is NDCG@eval_k
    eval_batch_size: int = 512    # rows per batch when ranking the full catalogue
    # run (the seed comes from run.seeds, the torch threads from run.num_threads); "run": the
    # run's device (run.device), or a device of its own
    device: str = "run"

    RULES = {"hidden": count, "layers": count, "heads": count, "dropout": fraction,
             "max_len": count, "windows": one_of(*WINDOW_MODES), "lr": positive,
             "weight_decay": non_negative, "batch_size": count, "max_epochs": count,
             "patience": count, "eval_every": count, "eval_k": count, "eval_batch_size": count,
             "device": Rule(lambda v: v in ("run", "cpu", "cuda", "mps")
                            or str(v).startswith("cuda:"),
                            "'run' (run.device), 'cpu', 'cuda', 'cuda:<n>' or 'mps'")}

    def validate(self, prefix: str = "sasrec") -> None:
        check_fields(self, prefix, self.RULES)
        require(self.hidden % self.heads == 0, f"{prefix}.heads", self.heads,
                f"a divisor of {prefix}.hidden={self.hidden}")
