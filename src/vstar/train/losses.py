"""Policy losses of one RL step: GRPO and Sibling-GRPO (docs/method.md section 5), from log-probs.

The trainer computes the log-probabilities of the chosen SID codes, one per level:

- ``logp_new`` [B, G, L]: log pi_theta(y_l | x, y<l) under the policy being trained (with grad).
- ``logp_old`` [B, G, L]: the same under the policy that sampled the group (treated as constant).
- ``logp_ref`` [B, G, L]: the same under the frozen SFT model (treated as constant).
- ``valid``    bool [B, G].

Whether these are trie-constrained (renormalised over the valid children) is the trainer's choice;
the losses only need the three to be computed the same way. Entries of invalid candidates are
ignored and may hold anything (-inf, NaN): they receive no gradient.

Every loss is ``token loss = -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A) + beta * KL_k3``
with the PPO-clipped importance ratio ``ratio = exp(logp_new - logp_old)`` per token.
"""

from __future__ import annotations

import torch

from vstar.core.errors import InputError
from vstar.train.advantages import SiblingAdvantages


def kl_k3(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi_theta || pi_ref) per token: ``exp(d) - d - 1``, d = ref - new. >= 0."""
    d = logp_ref - logp_new
    return torch.exp(d) - d - 1.0


def _check(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor,
           valid: torch.Tensor) -> None:
    if valid.dtype != torch.bool or valid.dim() != 2:
        raise InputError(f"expected a bool tensor [B, G], got {valid.dtype} "
                         f"{tuple(valid.shape)}", field="valid")
    for name, t in (("logp_new", logp_new), ("logp_old", logp_old), ("logp_ref", logp_ref)):
        if t.dim() != 3 or t.shape[:2] != valid.shape or t.shape != logp_new.shape:
            raise InputError(f"expected shape [{valid.shape[0]}, {valid.shape[1]}, L] like "
                             f"logp_new, got {tuple(t.shape)}", field=name)


def _token_terms(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor,
                 adv: torch.Tensor, tokens: torch.Tensor, clip_eps: float, kl_beta: float):
    """Clipped surrogate + KL per token (0 off ``tokens``); also ratio and KL for the stats."""
    zero = torch.zeros_like(logp_new)
    new = torch.where(tokens, logp_new, zero)                 # [B, G, L], no grad off tokens
    old = torch.where(tokens, logp_old.detach(), zero)
    ref = torch.where(tokens, logp_ref.detach(), zero)
    adv = torch.where(tokens, adv.detach().to(new.dtype), zero)
    ratio = torch.exp(new - old)                              # pi_theta / pi_old per token
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = -torch.minimum(ratio * adv, clipped * adv)    # PPO clipped surrogate
    kl = kl_k3(new, ref)                                      # [B, G, L]
    per_token = torch.where(tokens, surrogate + kl_beta * kl, zero)
    return per_token, ratio, kl


@torch.no_grad()
def _stats(ratio: torch.Tensor, kl: torch.Tensor, adv: torch.Tensor, tokens: torch.Tensor,
           clip_eps: float) -> dict[str, float]:
    """clip_frac: share of tokens whose ratio lies outside [1-eps, 1+eps] (CleanRL's definition)."""
    n = int(tokens.sum())
    if n == 0:
        return {"clip_frac": 0.0, "ratio_mean": 1.0, "kl_mean": 0.0, "adv_std": 0.0,
                "n_tokens": 0.0}
    r, a = ratio[tokens], adv.detach().float()
    return {
        "clip_frac": float(((r - 1.0).abs() > clip_eps).float().mean()),
        "ratio_mean": float(r.mean()),
        "kl_mean": float(kl[tokens].mean()),
        "adv_std": float(a.std(unbiased=False)) if a.numel() else 0.0,
        "n_tokens": float(n),
    }


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor,
              adv: torch.Tensor, valid: torch.Tensor, clip_eps: float = 0.2,
              kl_beta: float = 1e-3) -> tuple[torch.Tensor, dict[str, float]]:
    """Sequence-level GRPO loss with token-level ratios (docs/method.md section 5). Returns (loss, stats).

    ``adv`` [B, G] (from :func:`vstar.train.advantages.grpo_advantages`) is shared by the L tokens
    of a candidate. Normalisation: mean over the L tokens of a candidate, then mean over the user's
    valid candidates, then mean over the users with at least one valid candidate. (With every user
    having the same number of valid candidates this is the plain mean over all valid tokens; else
    each user weighs the same, as in Eq. 19.) stats: clip_frac, ratio_mean, kl_mean (over valid
    tokens), adv_std (population std of the valid candidates' advantages), n_tokens.
    """
    _check(logp_new, logp_old, logp_ref, valid)
    if adv.shape != valid.shape:
        raise InputError(f"expected shape {tuple(valid.shape)}, got {tuple(adv.shape)}",
                         field="adv")
    tokens = valid.unsqueeze(-1).expand_as(logp_new)          # [B, G, L]
    per_token, ratio, kl = _token_terms(logp_new, logp_old, logp_ref,
                                        adv.unsqueeze(-1).expand_as(logp_new), tokens,
                                        clip_eps, kl_beta)
    per_candidate = per_token.mean(-1)                        # [B, G], mean over L tokens
    n_valid = valid.sum(1)                                    # [B], |C(x)|
    per_user = per_candidate.sum(1) / n_valid.clamp_min(1)    # [B]
    active = n_valid > 0
    loss = per_user[active].mean() if bool(active.any()) else per_token.sum()
    return loss, _stats(ratio, kl, adv[valid], tokens, clip_eps)


def sibling_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor,
                 sib: SiblingAdvantages, valid: torch.Tensor, clip_eps: float = 0.2,
                 kl_beta: float = 1e-3) -> tuple[torch.Tensor, dict[str, float]]:
    """Sibling-GRPO loss (Eq. 19). Returns (loss, stats).

    Only the branching-decision tokens ``sib.mask`` (one per distinct node (h, v) whose parent has
    >= 2 children) contribute: at each, the clipped importance-weighted sibling advantage
    ``A(h, v) * pi(v | x, h) / pi_old(v | x, h)`` plus the k3 KL penalty. Per user, the token
    losses are summed over levels and parents and divided by |C(x)| (the user's number of valid
    candidates); the loss is the mean over users with at least one valid candidate (users without
    any branching decision contribute 0). stats as in :func:`grpo_loss`, over the masked tokens.
    """
    _check(logp_new, logp_old, logp_ref, valid)
    if sib.adv.shape != logp_new.shape or sib.mask.shape != logp_new.shape:
        raise InputError(f"expected sibling advantages of shape {tuple(logp_new.shape)}, got "
                         f"{tuple(sib.adv.shape)}", field="sib")
    tokens = sib.mask & valid.unsqueeze(-1)                   # [B, G, L]
    per_token, ratio, kl = _token_terms(logp_new, logp_old, logp_ref, sib.adv, tokens,
                                        clip_eps, kl_beta)
    n_valid = valid.sum(1)                                    # [B], |C(x)|
    per_user = per_token.sum((1, 2)) / n_valid.clamp_min(1)   # Eq. 19: sum over levels, / |C(x)|
    active = n_valid > 0
    loss = per_user[active].mean() if bool(active.any()) else per_token.sum()
    return loss, _stats(ratio, kl, sib.adv[tokens], tokens, clip_eps)
