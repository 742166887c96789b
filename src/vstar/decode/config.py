"""Typed settings of the decoders (torch-free, OmegaConf-compatible: plain fields, defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from vstar.core.validate import (check_fields, count, non_negative, one_of, optional, positive)

LEAF_SCORES = ("value_plus_logp", "value", "logp")
CHILD_CHOICES = ("most_probable", "sample")
WIDEN_PULLS = ("expansions", "children")


@dataclass
class VEDConfig:
    """VED hyper-parameters (docs/method.md section 3). Paper: init beam 8, lambda 0.1, beta 1.0."""

    init_beam: int = 8                 # initial beam tree width (shrunk if it eats the budget)
    lam: float = 0.1                   # Eq. 11: G(s) = V(s) + lam * H(s)
    beta: float = 1.0                  # Eq. 13: UCB exploration weight
    budget: int | None = None          # decode forward tokens per user; None: (L-1) * n_candidates
    budget_multiplier: float = 1.0     # the budget actually used is floor(multiplier * budget)
    expansions_per_round: int = 4      # selections per user per batched forward
    leaf_score: str = "value_plus_logp"  # one of LEAF_SCORES (see vstar.decode.ved)
    child_choice: str = "most_probable"  # one of CHILD_CHOICES
    # pulls of the widen arm (docs/method.md section 3, "widen arm"): "expansions" counts the
    # children VED itself added; "children" (ablation: the old rule) counts the initial beam's too
    widen_pulls: str = "expansions"    # one of WIDEN_PULLS

    RULES = {"init_beam": count, "lam": non_negative, "beta": non_negative,
             "budget": optional(count), "budget_multiplier": positive,
             "expansions_per_round": count, "leaf_score": one_of(*LEAF_SCORES),
             "child_choice": one_of(*CHILD_CHOICES), "widen_pulls": one_of(*WIDEN_PULLS)}

    def validate(self, prefix: str = "rl.ved") -> None:
        check_fields(self, prefix, self.RULES)
