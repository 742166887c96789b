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
                 adv: torch.Tensor, tokens: torch.Tensor, clip_eps: float, kl_beta: float,
                 clip_eps_high: float | None = None, sequence_ratio: bool = False,
                 weights: torch.Tensor | None = None):
    """Clipped surrogate + KL per token (0 off ``tokens``); also ratio and KL for the stats.

    ``clip_eps_high`` (DAPO): the ratio is clipped to [1 - clip_eps, 1 + clip_eps_high] (None:
    symmetric). ``sequence_ratio`` (GSPO): every token of a candidate carries the candidate's
    ratio exp(mean over its tokens of log pi_theta - log pi_old). ``weights`` [L] (HEPO's c_l)
    scale the surrogate of each level (not the KL).
    """
    zero = torch.zeros_like(logp_new)
    new = torch.where(tokens, logp_new, zero)                 # [B, G, L], no grad off tokens
    old = torch.where(tokens, logp_old.detach(), zero)
    ref = torch.where(tokens, logp_ref.detach(), zero)
    adv = torch.where(tokens, adv.detach().to(new.dtype), zero)
    if sequence_ratio:                                        # GSPO: geometric mean per candidate
        n = tokens.sum(-1, keepdim=True).clamp_min(1)
        log_ratio = ((new - old).sum(-1, keepdim=True) / n).expand_as(new)
        ratio = torch.where(tokens, torch.exp(log_ratio), torch.ones_like(new))
    else:
        ratio = torch.exp(new - old)                          # pi_theta / pi_old per token
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + hi)
    surrogate = -torch.minimum(ratio * adv, clipped * adv)    # PPO clipped surrogate
    if weights is not None:
        surrogate = surrogate * weights.to(surrogate)
    kl = kl_k3(new, ref)                                      # [B, G, L]
    per_token = torch.where(tokens, surrogate + kl_beta * kl, zero)
    return per_token, ratio, kl


@torch.no_grad()
def _stats(ratio: torch.Tensor, kl: torch.Tensor, adv: torch.Tensor, tokens: torch.Tensor,
           clip_eps: float, clip_eps_high: float | None = None) -> dict[str, float]:
    """clip_frac: share of tokens whose ratio lies outside [1-eps, 1+eps_high] (CleanRL's
    definition); clip_frac_low / clip_frac_high: below / above it."""
    n = int(tokens.sum())
    if n == 0:
        return {"clip_frac": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 1.0,
                "kl_mean": 0.0, "adv_std": 0.0, "n_tokens": 0.0}
    r, a = ratio[tokens], adv.detach().float()
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    low, high = (r < 1.0 - clip_eps).float().mean(), (r > 1.0 + hi).float().mean()
    return {
        "clip_frac": float(low + high),
        "clip_frac_low": float(low),
        "clip_frac_high": float(high),
        "ratio_mean": float(r.mean()),
        "kl_mean": float(kl[tokens].mean()),
        "adv_std": float(a.std(unbiased=False)) if a.numel() else 0.0,
        "n_tokens": float(n),
    }


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor,
              adv: torch.Tensor, valid: torch.Tensor, clip_eps: float = 0.2,
              kl_beta: float = 1e-3, clip_eps_high: float | None = None,
              ratio_level: str = "token",
              level_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sequence-level GRPO loss with token-level ratios (docs/method.md section 5). Returns (loss, stats).

    ``adv`` [B, G] (from :func:`vstar.train.advantages.grpo_advantages`) is shared by the L tokens
    of a candidate; ``adv`` [B, G, L] gives each token its own (TreeRL, HEPO). Normalisation: mean
    over the L tokens of a candidate, then mean over the user's valid candidates, then mean over
    the users with at least one valid candidate. (With every user having the same number of valid
    candidates this is the plain mean over all valid tokens; else each user weighs the same, as in
    Eq. 19.) stats: clip_frac, ratio_mean, kl_mean (over valid tokens), adv_std (population std
    of the valid candidates' advantages), n_tokens.

    Other RL methods (docs/method.md "Other RL methods"): ``ratio_level="sequence"`` is GSPO's
    ratio exp(mean_l log rho_l) per candidate; ``clip_eps_high`` DAPO's asymmetric clip range
    [1 - clip_eps, 1 + clip_eps_high]; ``level_weights`` [L] HEPO's c_l on each level's surrogate.
    """
    _check(logp_new, logp_old, logp_ref, valid)
    if adv.shape != valid.shape and adv.shape != logp_new.shape:
        raise InputError(f"expected shape {tuple(valid.shape)} or {tuple(logp_new.shape)}, got "
                         f"{tuple(adv.shape)}", field="adv")
    if ratio_level not in ("token", "sequence"):
        raise InputError(f"expected 'token' or 'sequence', got {ratio_level!r}",
                         field="ratio_level")
    if level_weights is not None and tuple(level_weights.shape) != (logp_new.shape[-1],):
        raise InputError(f"expected {logp_new.shape[-1]} level weights, got "
                         f"{tuple(level_weights.shape)}", field="level_weights")
    tokens = valid.unsqueeze(-1).expand_as(logp_new)          # [B, G, L]
    adv_tok = adv if adv.dim() == 3 else adv.unsqueeze(-1).expand_as(logp_new)
    per_token, ratio, kl = _token_terms(logp_new, logp_old, logp_ref, adv_tok, tokens,
                                        clip_eps, kl_beta, clip_eps_high,
                                        ratio_level == "sequence", level_weights)
    per_candidate = per_token.mean(-1)                        # [B, G], mean over L tokens
    n_valid = valid.sum(1)                                    # [B], |C(x)|
    per_user = per_candidate.sum(1) / n_valid.clamp_min(1)    # [B]
    active = n_valid > 0
    loss = per_user[active].mean() if bool(active.any()) else per_token.sum()
    return loss, _stats(ratio, kl, adv[valid], tokens, clip_eps, clip_eps_high)


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


def sdpo_loss(pos_new: torch.Tensor, pos_ref: torch.Tensor, neg_new: torch.Tensor,
              neg_ref: torch.Tensor, neg_valid: torch.Tensor,
              beta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Softmax-DPO with several negatives (S-DPO; docs/method.md "Other RL methods").

    ``pos_new`` / ``pos_ref`` [B, L]: log pi_theta / log pi_ref of the positive's codes (the
    logged target); ``neg_new`` / ``neg_ref`` [B, G, L]: the same for the negatives (beam
    candidates other than the target), ``neg_valid`` bool [B, G]. With the sequence log-ratio
    ``h(y) = sum_l log pi_theta(y_l | .) - log pi_ref(y_l | .)``, per user

        L = -log sigmoid( -log sum_{j in negatives} exp(beta * (h(y_j) - h(y+))) )

    and the loss is the mean over the users with at least one negative (0 if none). stats:
    ``pos_logratio`` / ``neg_logratio`` (mean h), ``margin`` (mean of h(y+) - max_j h(y_j)),
    ``acc`` (share of users with h(y+) above every negative's), ``n_neg`` (negatives per user).
    """
    B, G, L = neg_new.shape
    if neg_valid.dtype != torch.bool or tuple(neg_valid.shape) != (B, G):
        raise InputError(f"expected a bool tensor [{B}, {G}], got {neg_valid.dtype} "
                         f"{tuple(neg_valid.shape)}", field="neg_valid")
    for name, t, shape in (("pos_new", pos_new, (B, L)), ("pos_ref", pos_ref, (B, L)),
                           ("neg_ref", neg_ref, (B, G, L))):
        if tuple(t.shape) != shape:
            raise InputError(f"expected shape {list(shape)}, got {tuple(t.shape)}", field=name)
    h_pos = (pos_new - pos_ref.detach()).sum(-1)                          # [B]
    zero = torch.zeros_like(neg_new)
    tok = neg_valid[..., None].expand_as(neg_new)
    h_neg = torch.where(tok, neg_new, zero).sum(-1) - torch.where(tok, neg_ref.detach(),
                                                                  zero).sum(-1)      # [B, G]
    logits = torch.where(neg_valid, beta * (h_neg - h_pos[:, None]),
                         torch.full_like(h_neg, -torch.inf))
    active = neg_valid.any(1)                                             # [B]
    z = torch.logsumexp(torch.where(active[:, None], logits, torch.zeros_like(logits)), 1)
    per_user = torch.nn.functional.softplus(z)                            # -log sigmoid(-z)
    loss = per_user[active].mean() if bool(active.any()) else (h_pos * 0.0).sum()
    with torch.no_grad():
        if bool(active.any()):
            hn = h_neg.masked_fill(~neg_valid, -torch.inf)
            best_neg = hn.max(1).values[active]
            stats = {"pos_logratio": float(h_pos[active].mean()),
                     "neg_logratio": float(h_neg[neg_valid].mean()),
                     "margin": float((h_pos[active] - best_neg).mean()),
                     "acc": float((h_pos[active] > best_neg).float().mean()),
                     "n_neg": float(neg_valid.sum(1)[active].float().mean())}
        else:
            stats = {"pos_logratio": 0.0, "neg_logratio": 0.0, "margin": 0.0, "acc": 0.0,
                     "n_neg": 0.0}
    return loss, stats
