"""Typed sizes of the model stage (torch-free, OmegaConf-compatible: plain fields, defaults)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class ValueHeadConfig:
    """Hyper-parameters of the value head V_phi (``vstar.model.value``)."""

    hidden: int = 128        # width of the MLP's hidden layer
    dropout: float = 0.0     # on the input hidden state and on the MLP's hidden layer
    init_std: float = 1e-3   # std of the last layer's initial weights (near zero: V starts ~ 0)
