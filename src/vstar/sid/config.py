"""Typed hyper-parameters of the semantic-ID stage.

OmegaConf-compatible: plain fields, a default everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vstar.core.validate import (check_fields, count, fraction, list_of, non_negative,
                                 non_negative_int, one_of, optional, positive, require, text)

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
    # distance use. Default: what won on validation (docs/results/generator_studies.md)
    vectors: str = "sasrec"
    # width of the experiment's SASRec (its item embeddings are the "sasrec" vectors, and it is the
    # SFT distillation teacher); 0: the sasrec section's ``hidden``, i.e. the baseline's width.
    # The two are tuned apart: the best baseline is not the best teacher
    # (docs/results/generator_studies.md)
    sasrec_hidden: int = 0
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

    RULES = {
        "method": one_of(*METHODS), "codebook_sizes": list_of(count, nonempty=True),
        "index_path": optional(text()), "vectors_path": optional(text()),
        "vectors": one_of(*VECTOR_SOURCES), "collisions": one_of(*COLLISION_METHODS),
        "seed": non_negative_int, "sasrec_hidden": non_negative_int, "embed_batch_size": count,
        "kmeans_niter": count, "balanced_iters": count, "rqvae_epochs": count,
        "rqvae_batch_size": count,
        "rqvae_lr": positive, "rqvae_weight_decay": non_negative,
        "rqvae_hidden": list_of(count), "rqvae_latent_dim": count, "rqvae_beta": non_negative,
        "rqvae_dropout": fraction,
    }

    def validate(self, prefix: str = "sid") -> None:
        """Raise InputError naming the first field that does not make sense."""
        check_fields(self, prefix, self.RULES)
        require(self.method != "index_json" or bool(self.index_path), f"{prefix}.index_path",
                self.index_path, "the path of the index file (method 'index_json' reads it)")
