"""Typed sizes of the model stage (torch-free, OmegaConf-compatible: plain fields, defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vstar.core.validate import (Rule, boolean, check_fields, count, fraction, non_negative,
                                 one_of, require, text)

HISTORY_INPUTS = ("codes", "items")
BACKBONES = ("vstar", "hf")
DTYPES = ("float32", "bfloat16", "float16")
HF_PROMPTS = ("none", "titles")


def _overrides(v: Any) -> bool:
    """A mapping of Hugging Face config attribute names to values (nested values allowed)."""
    return isinstance(v, dict) and all(isinstance(k, str) and k for k in v)


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
    # Defaults: what won on validation (docs/results/generator_studies.md).
    history: str = "items"
    item_id_embedding: bool = True
    # The network behind the SID vocabulary: "vstar" (``SidGenerator``, above sizes) or "hf",
    # a Hugging Face causal LM (``vstar.model.hf``) with one added token per SID code plus
    # BOS/PAD, either loaded from a local pretrained folder (hf_name_or_path; no hub download)
    # or built from a config (hf_config, which must then name its model_type: qwen2, llama,
    # gpt2, ...). Without hf_config sizes, the built model takes n_layer / n_head / n_embd /
    # dropout above. It reads either history (items: inputs_embeds, vstar.model.hf).
    backbone: str = "vstar"
    hf_name_or_path: str = ""
    hf_config: dict[str, Any] = field(default_factory=dict)
    # The HF backbone's weight dtype (the value head and the logits stay float32).
    dtype: str = "float32"
    # Text in the HF backbone's prompts (item-level history only): "none", or "titles": each
    # history item is preceded by the first hf_title_tokens tokens of its item text (the
    # dataset's text fields, which start with the title), tokenised with the tokenizer in
    # hf_tokenizer (a local folder) or else in hf_name_or_path. A model built from hf_config
    # gets one embedding row per tokenizer token after the SID tokens.
    hf_prompt: str = "none"
    hf_title_tokens: int = 8
    hf_tokenizer: str = ""

    RULES = {"n_layer": count, "n_head": count, "n_embd": count, "dropout": fraction,
             "history": one_of(*HISTORY_INPUTS), "item_id_embedding": boolean(),
             "backbone": one_of(*BACKBONES), "hf_name_or_path": text(nonempty=False),
             "hf_config": Rule(_overrides, "a mapping of HF config attribute names to values"),
             "dtype": one_of(*DTYPES), "hf_prompt": one_of(*HF_PROMPTS),
             "hf_title_tokens": count, "hf_tokenizer": text(nonempty=False)}

    def validate(self, prefix: str = "model") -> None:
        check_fields(self, prefix, self.RULES)
        require(self.n_embd % self.n_head == 0, f"{prefix}.n_head", self.n_head,
                f"a divisor of {prefix}.n_embd={self.n_embd}")
        if self.backbone == "hf":
            require(bool(self.hf_name_or_path.strip()) or bool(self.hf_config.get("model_type")),
                    f"{prefix}.hf_config", self.hf_config,
                    f"a model_type (qwen2, llama, gpt2, ...) when {prefix}.hf_name_or_path is "
                    "empty")
            if self.hf_prompt == "titles":
                require(self.history == "items", f"{prefix}.history", self.history,
                        f"'items' with {prefix}.hf_prompt=titles (titles precede item tokens)")
                require(bool(self.hf_tokenizer.strip() or self.hf_name_or_path.strip()),
                        f"{prefix}.hf_tokenizer", self.hf_tokenizer,
                        f"a local tokenizer folder with {prefix}.hf_prompt=titles (or "
                        f"{prefix}.hf_name_or_path)")
        else:
            require(self.hf_prompt == "none", f"{prefix}.hf_prompt", self.hf_prompt,
                    f"'none' with {prefix}.backbone=vstar (text prompts need the HF backbone)")
            require(not self.hf_name_or_path and not self.hf_config, f"{prefix}.backbone",
                    self.backbone, f"'hf' when {prefix}.hf_name_or_path or {prefix}.hf_config "
                    "is set")
            require(self.dtype == "float32", f"{prefix}.dtype", self.dtype,
                    f"'float32' with {prefix}.backbone=vstar (dtype applies to the HF backbone)")


VALUE_PRIORS = ("none", "policy")     # rl.value_head.prior


@dataclass
class ValueHeadConfig:
    """Hyper-parameters of the value head V_phi (``vstar.model.value``)."""

    hidden: int = 128        # width of the MLP's hidden layer
    dropout: float = 0.0     # on the input hidden state and on the MLP's hidden layer
    init_std: float = 1e-3   # std of the last layer's initial weights (near zero: V starts ~ 0)
    # "none": V(s) = MLP(h(s)); "policy": V(s) = w * pi(prefix of s | x) + MLP(h(s)), w a
    # learned scale starting at ``prior_scale``: the value starts as the policy's probability
    # that the target lies under s (docs/method.md section 9, "Value prior")
    prior: str = "none"
    prior_scale: float = 1.0

    RULES = {"hidden": count, "dropout": fraction, "init_std": non_negative,
             "prior": one_of(*VALUE_PRIORS), "prior_scale": non_negative}

    def validate(self, prefix: str = "rl.value_head") -> None:
        check_fields(self, prefix, self.RULES)
