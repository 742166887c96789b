"""Typed sizes of the model stage (torch-free, OmegaConf-compatible: plain fields, defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from vstar.core.validate import (boolean, check_fields, count, fraction, non_negative, one_of,
                                 require)

HISTORY_INPUTS = ("codes", "items")


@dataclass
class ModelConfig:
    """Size of the SID generator. Its vocabulary and block size follow from the SIDs and the
    longest history (``vstar.model.generator.SidGenerator`` takes them as arguments)."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    # How a history item enters the model: "codes" (L code tokens per item) or "items" (one
    # position per item: the sum of its code embeddings, plus a learned item-ID embedding if
    # item_id_embedding). The generated item's codes are emitted one per step either way.
    # Defaults: what won on validation (README, "The generator").
    history: str = "items"
    item_id_embedding: bool = True

    RULES = {"n_layer": count, "n_head": count, "n_embd": count, "dropout": fraction,
             "history": one_of(*HISTORY_INPUTS), "item_id_embedding": boolean()}

    def validate(self, prefix: str = "model") -> None:
        check_fields(self, prefix, self.RULES)
        require(self.n_embd % self.n_head == 0, f"{prefix}.n_head", self.n_head,
                f"a divisor of {prefix}.n_embd={self.n_embd}")


@dataclass
class ValueHeadConfig:
    """Hyper-parameters of the value head V_phi (``vstar.model.value``)."""

    hidden: int = 128        # width of the MLP's hidden layer
    dropout: float = 0.0     # on the input hidden state and on the MLP's hidden layer
    init_std: float = 1e-3   # std of the last layer's initial weights (near zero: V starts ~ 0)

    RULES = {"hidden": count, "dropout": fraction, "init_std": non_negative}

    def validate(self, prefix: str = "rl.value_head") -> None:
        check_fields(self, prefix, self.RULES)
