"""A2PO (S-GRec): one RL step with a business and a semantic reward (docs/method.md, "A2PO and
DRPO").

Per group C(x) of candidates:

    A_biz = zscore_C(r_biz),  A_sem = zscore_C(r_sem)                  (separately, GRPO's z-score)
    lambda = 1[sign A_biz = sign A_sem] * min(|A_biz|, |A_sem|) / (max(|A_biz|, |A_sem|) + eps)
    A      = A_biz + lambda * A_sem                                     (rl.a2po = "fusion")

so the semantic term only reinforces a business advantage of the same sign and never exceeds it
(|lambda * A_sem| <= |A_biz|). Ablations: ``reward_sum`` (z-score of r_biz + r_sem) and
``adv_sum`` (A_biz + A_sem). The semantic judge (``vstar.train.semantic_reward``) scores only a
``rl.semantic_fraction`` of each step's groups; the other groups use A_biz alone.

Business reward (a documented proxy: public data has no eCPM): the step's reward ``rl.reward``
(default rule + rank penalty), times ``value(y) / mean(value)`` of an item column
``rl.item_value_column`` when one is named.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vstar.core.errors import InputError
from vstar.train.advantages import grpo_advantages
from vstar.train.rewards import RewardContext
from vstar.train.rl import RLBatch, RLTrainer
from vstar.train.semantic_reward import SemanticScorer

FUSION_EPS = 1e-8


def a2po_fuse(a_biz: torch.Tensor, a_sem: torch.Tensor, eps: float = FUSION_EPS
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A2PO's anchored fusion: (A, lambda), elementwise.

    ``lambda = 1[sign(a_biz) == sign(a_sem)] * min(|a_biz|, |a_sem|) / (max(|a_biz|, |a_sem|) + eps)``
    and ``A = a_biz + lambda * a_sem``. Where the signs differ (or one is 0 and the other not)
    A = a_biz; |lambda * a_sem| <= |a_biz| always.
    """
    if a_biz.shape != a_sem.shape:
        raise InputError(f"expected equal shapes, got {tuple(a_biz.shape)} and "
                         f"{tuple(a_sem.shape)}", field="a_sem")
    agree = torch.sign(a_biz) == torch.sign(a_sem)
    lo = torch.minimum(a_biz.abs(), a_sem.abs())
    hi = torch.maximum(a_biz.abs(), a_sem.abs())
    lam = torch.where(agree, lo / (hi + eps), torch.zeros_like(lo))
    return a_biz + lam * a_sem, lam


def a2po_advantages(r_biz: torch.Tensor, r_sem: torch.Tensor, valid: torch.Tensor,
                    judged: torch.Tensor, mode: str = "fusion", eps: float = 1e-4
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages [B, G] of A2PO and its ablations, and lambda [B, G] (0 where not fused).

    ``judged`` bool [B]: the groups the semantic judge scored; the others get A_biz (z-score of
    r_biz). ``mode``: ``fusion`` (A2PO), ``reward_sum`` (z-score of r_biz + r_sem), ``adv_sum``
    (A_biz + A_sem).
    """
    a_biz = grpo_advantages(r_biz, valid, eps)
    lam = torch.zeros_like(a_biz)
    if mode == "fusion":
        fused, lam = a2po_fuse(a_biz, grpo_advantages(r_sem, valid, eps))
    elif mode == "adv_sum":
        fused = a_biz + grpo_advantages(r_sem, valid, eps)
    elif mode == "reward_sum":
        fused = grpo_advantages(r_biz + r_sem, valid, eps)
    else:
        raise InputError(f"expected one of ('fusion', 'reward_sum', 'adv_sum'), got {mode!r}",
                         field="rl.a2po")
    judged = judged[:, None] & valid
    lam = torch.where(judged, lam, torch.zeros_like(lam))
    return torch.where(judged, fused, a_biz), lam


def business_values(values: np.ndarray | None, column: str) -> torch.Tensor | None:
    """Per-item multiplier value / mean(value) of the column (missing values count as the mean);
    None without a column."""
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any() or np.nanmean(np.where(finite, v, np.nan)) <= 0:
        raise InputError(f"item column {column!r}: expected values with a positive mean over "
                         f"the catalogue", field="rl.item_value_column")
    mean = float(v[finite].mean())
    return torch.as_tensor(np.where(finite, v, mean) / mean, dtype=torch.float32)


class A2POTrainer(RLTrainer):
    """The RL trainer with A2PO's two rewards and fused advantage (``rl.a2po`` != "off").

    ``scorer`` is the semantic judge; ``biz_values`` the per-item multiplier of the business
    reward (None: the plain ``rl.reward``). Logged per step: ``reward_biz_mean``,
    ``reward_sem_mean`` (over the judged groups' valid candidates; NaN when no group was judged),
    ``semantic_groups`` (share of groups judged), ``a2po_lambda_mean`` and
    ``a2po_sem_active`` (share of judged candidates where the semantic term is non-zero).
    """

    fuses_semantic_reward = True

    def __init__(self, *args, scorer: SemanticScorer, biz_values: torch.Tensor | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.a2po == "off":
            raise InputError("the A2PO trainer needs rl.a2po in ('fusion', 'reward_sum', "
                             "'adv_sum')", field="rl.a2po")
        self.scorer = scorer                                    # the judge stays on the CPU
        self.biz_values = None if biz_values is None else biz_values.to(self.device)
        self._idx: np.ndarray | None = None
        self._a2po: dict = {}

    def propose(self, idx: np.ndarray) -> RLBatch:
        self._idx = np.asarray(idx)
        return super().propose(idx)

    def business_reward(self, ctx: RewardContext) -> torch.Tensor:
        r = self.reward_fn(ctx)
        if self.biz_values is not None:
            r = r * self.biz_values[ctx.cand_items.clamp_min(0)]
        return torch.where(ctx.valid, r, torch.zeros_like(r))

    def rewards(self, b: RLBatch) -> torch.Tensor:
        """The business reward (what ``reward_mean`` logs); the semantic reward of the judged
        groups is kept for :meth:`advantages`."""
        r_biz = self.business_reward(self._context(b))
        B = r_biz.shape[0]
        n_judged = min(B, math.ceil(self.cfg.semantic_fraction * B - 1e-9))
        judged = torch.zeros(B, dtype=torch.bool)
        judged[torch.as_tensor(self.rng.choice(B, size=n_judged, replace=False),
                               dtype=torch.long)] = True
        r_sem = torch.zeros_like(r_biz)
        if n_judged:
            rows = self._idx[judged.numpy()]
            r_sem[judged.to(r_sem.device)] = self.scorer.score(
                [self.rows.histories[i] for i in rows], b.items.cpu()[judged],
                self.max_history).to(r_sem.device)
        judged = judged.to(r_sem.device)
        r_sem = torch.where(b.valid, r_sem, torch.zeros_like(r_sem))
        self._a2po = {"r_sem": r_sem, "judged": judged, "r_biz": r_biz}
        return r_biz

    def advantages(self, b: RLBatch, rewards: torch.Tensor) -> torch.Tensor:
        st = self._a2po
        adv, lam = a2po_advantages(rewards, st["r_sem"], b.valid, st["judged"], self.cfg.a2po,
                                   self.cfg.adv_eps)
        st["lam"] = lam
        return adv

    def _step_record(self, b, rewards, adv, sib, stats, t_decode, t_step) -> dict:
        rec = super()._step_record(b, rewards, adv, sib, stats, t_decode, t_step)
        st, v = self._a2po, b.valid
        jv = st["judged"][:, None] & v
        rec.update({
            "reward_biz_mean": float(st["r_biz"][v].mean()) if v.any() else 0.0,
            "reward_sem_mean": float(st["r_sem"][jv].mean()) if jv.any() else float("nan"),
            "semantic_groups": float(st["judged"].float().mean()),
            "a2po_lambda_mean": float(st["lam"][jv].mean()) if jv.any() else float("nan"),
            "a2po_sem_active": float((st["lam"][jv] > 0).float().mean()) if jv.any()
            else float("nan"),
        })
        return rec
