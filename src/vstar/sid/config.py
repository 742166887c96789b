"""Typed hyper-parameters of the semantic-ID stage.

OmegaConf-compatible: plain fields, a default everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vstar.core.errors import InputError

METHODS = ("rkmeans", "balanced_kmeans", "rqvae", "index_json")
VECTOR_SOURCES = ("text", "sasrec", "fused")
COLLISION_METHODS = ("extra_level", "reassign", "none")


@dataclass
class SidConfig:
    """How each catalogue item gets its semantic ID (SID).

    ``OmegaConf.structured(SidConfig)`` gives a typed config that YAML files and command-line
    dotlists (``sid.method=rqvae sid.codebook_sizes=[128,128]``) can override.
    """

    # tokenizer: "rkmeans" (residual k-means), "balanced_kmeans" (residual k-means with
    # equal-size clusters), "rqvae" (residual-quantised VAE) or "index_json" (read ready-made SIDs)
    method: str = "rkmeans"
    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])  # K_l, one per level
    index_path: Optional[str] = None    # method index_json: {"<item id>": ["<a_12>", "<b_200>"]}
    # item vectors (.npy, or .safetensors with key "embeddings"), row i = internal item i; they win
    # over text embeddings
    vectors_path: Optional[str] = None
    # what the tokenizer quantises: "text" (the item vectors above: vectors_path, else text
    # embeddings), "sasrec" (collaborative SIDs: the item embeddings of a SASRec trained on the
    # training split with the sasrec section's settings) or "fused" (both, each L2-normalised,
    # concatenated). The item vectors above are still what semantic rewards and intra-list
    # distance use. Default: what won on validation (README)
    vectors: str = "sasrec"
    # "extra_level" (TIGER: append the rank within the colliding group), "reassign" (move
    # colliding items to a free last-level code under the same prefix) or "none"
    collisions: str = "extra_level"
    seed: int = 0                       # the tokenizer's seed: SIDs are built once per experiment
                                        # and shared by every run.seeds entry, so not run.seeds
    embed_batch_size: int = 64          # texts per sentence-encoder batch
    # residual k-means (faiss)
    kmeans_niter: int = 25              # Lloyd iterations per level
    balanced_iters: int = 10            # balanced_kmeans: capacity-constrained assign / update rounds
    # RQ-VAE
    rqvae_epochs: int = 100
    rqvae_batch_size: int = 512
    rqvae_lr: float = 1e-3
    rqvae_weight_decay: float = 1e-4
    rqvae_hidden: list[int] = field(default_factory=lambda: [256, 128])  # encoder widths; decoder mirrors
    rqvae_latent_dim: int = 32          # dimension of the quantised latent z
    rqvae_beta: float = 0.25            # commitment-loss weight
    rqvae_dropout: float = 0.0

    def validate(self) -> None:
        """Raise InputError naming the first field that does not make sense."""
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}, expected one of {METHODS}",
                             field="sid.method")
        if self.vectors not in VECTOR_SOURCES:
            raise InputError(f"unknown vector source {self.vectors!r}, expected one of "
                             f"{VECTOR_SOURCES}", field="sid.vectors")
        if self.collisions not in COLLISION_METHODS:
            raise InputError(f"unknown collision handling {self.collisions!r}, expected one of "
                             f"{COLLISION_METHODS}", field="sid.collisions")
        if self.method != "index_json":
            if len(self.codebook_sizes) < 1 or any(int(k) < 1 for k in self.codebook_sizes):
                raise InputError(f"expected a non-empty list of positive codebook sizes, got "
                                 f"{list(self.codebook_sizes)}", field="sid.codebook_sizes")
        if self.method == "index_json" and not self.index_path:
            raise InputError("method 'index_json' needs the path of the index file",
                             field="sid.index_path")
        for name in ("kmeans_niter", "balanced_iters", "rqvae_epochs", "rqvae_batch_size",
                     "rqvae_latent_dim", "embed_batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"expected a positive integer, got {getattr(self, name)}",
                                 field=f"sid.{name}")
