"""DRPO: offline training of the SID generator on a logged (history, item, return) set, without
rollouts (docs/method.md, "A2PO and DRPO").

The log D holds samples i = (history x_i, item y_i, return R_i) of mixed quality. Every mode
minimises a weighted negative log-likelihood of the logged items,

    L = -(1 / |batch|) * sum_i w_i * (1/L) * sum_l log pi(y_{i,l} | x_i, y_{i,<l})

(trie-constrained log-probs, ``vstar.decode.scoring``) and differs only in the weight w_i.
With A_i = (R_i - mean_D R) / (std_D R + 1e-8), the log-level normalised advantage:

    topk      DRPO (hard filtering): w_i = 1[R_i >= q] * |D| / |K|, q = the return of the
              ceil(alpha |D|)-th best sample of the whole log, K = {i : R_i >= q} (ties at q are
              all kept, so |K| >= alpha |D|; without ties |D| / |K| = 1 / alpha).
              **Reconstruction**: the maximiser of sup_{Q : dQ/dP_D <= 1/alpha} E_Q[log pi] puts
              density 1/alpha on the top-alpha quantile of returns, so the minibatch mean is an
              unbiased estimate of that optimistic distributionally robust objective.
    naive     w_i = A_i on every sample: negatives are pushed down (the repulsive gradient).
    positive  w_i = max(A_i, 0): advantage-weighted SFT on the positives only.
    awr       w_i = min(exp(A_i / tau), w_max): AWR-style soft down-weighting, never negative.
    soft_nll  w_i = A_i, times exp(-lambda * NLL_i / L) (detached) where A_i < 0: a negative
              already made unlikely stops being pushed.

Logged per step (``rl_log.jsonl``): the loss, the collapse diagnostics ``max_token_nll`` (largest
-log pi of any token in the batch) and ``entropy`` (mean entropy of the trie-constrained
next-code distribution at the batch's states), ``grad_norm_neg`` / ``grad_norm_pos`` (norms of
the gradient of the samples with A < 0 / A >= 0, before clipping), the mean NLL of both, the
weights' mean and the share of samples with a non-zero weight.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from vstar.core.device import autocast as autocast_region
from vstar.core.device import module_device
from vstar.core.errors import InputError, check_finite
from vstar.data.types import SplitRows
from vstar.decode.scoring import score_candidates
from vstar.decode.trie import SidTrie
from vstar.model.backbone import SidModel
from vstar.model.vocab import SidVocab
from vstar.train.config import RL_DRPO_MODES, RLConfig
from vstar.train.schedule import lr_factor

log = logging.getLogger(__name__)

ADV_EPS = 1e-8


@dataclass
class OfflineLog:
    """Samples of an offline log: ``rows[i]`` indexes the history (a training row), ``items[i]``
    the logged item, ``returns[i]`` its return; ``injected[i]`` marks an injected random item."""

    rows: np.ndarray        # int64 [S]
    items: np.ndarray       # int64 [S]
    returns: np.ndarray     # float64 [S]
    injected: np.ndarray    # bool [S]

    def __len__(self) -> int:
        return len(self.items)


def build_offline_log(rows: SplitRows, n_items: int, *, rating_center: float = 3.0,
                      negatives: float = 0.5, negative_return: float = -2.0,
                      seed: int = 0) -> OfflineLog:
    """A mixed-quality log from training rows: each row's logged next item with return
    ``rating - rating_center`` (1.0 when the data has no ratings), plus
    ``round(negatives * rows)`` injected samples: a uniformly drawn training row's history with a
    uniformly drawn catalogue item other than its target, return ``negative_return``."""
    R = len(rows)
    if R == 0:
        raise InputError("no training rows to build the offline log from", field="rows")
    if n_items < 2:
        raise InputError(f"expected a catalogue of at least 2 items, got {n_items}",
                         field="n_items")
    if rows.target_ratings is not None:
        logged = np.asarray(rows.target_ratings, dtype=np.float64) - float(rating_center)
    else:
        logged = np.ones(R, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_neg = int(round(float(negatives) * R))
    neg_rows = rng.integers(0, R, size=n_neg)
    neg_items = rng.integers(0, n_items, size=n_neg)
    clash = neg_items == rows.targets[neg_rows]
    neg_items[clash] = (neg_items[clash] + 1) % n_items
    return OfflineLog(
        rows=np.concatenate([np.arange(R), neg_rows]).astype(np.int64),
        items=np.concatenate([rows.targets, neg_items]).astype(np.int64),
        returns=np.concatenate([logged, np.full(n_neg, float(negative_return))]),
        injected=np.concatenate([np.zeros(R, bool), np.ones(n_neg, bool)]))


def normalised_advantage(returns: np.ndarray) -> np.ndarray:
    """A_i = (R_i - mean R) / (std R + 1e-8) over the whole log (population std)."""
    r = np.asarray(returns, dtype=np.float64)
    return (r - r.mean()) / (r.std() + ADV_EPS)


def topk_threshold(returns: np.ndarray, alpha: float) -> float:
    """q: the return of the ceil(alpha * n)-th best sample (samples with R >= q are kept)."""
    if not 0 < alpha <= 1:
        raise InputError(f"got {alpha}, expected a fraction in (0, 1]", field="rl.drpo_alpha")
    r = np.sort(np.asarray(returns, dtype=np.float64))[::-1]
    k = max(1, math.ceil(alpha * len(r) - 1e-9))
    return float(r[k - 1])


def sample_weights(mode: str, returns: np.ndarray, *, alpha: float = 0.3, tau: float = 1.0,
                   max_weight: float = 20.0) -> np.ndarray:
    """The static weight w_i of every sample of the log under ``mode`` (soft_nll: A_i, its
    negatives are scaled by the NLL in :func:`drpo_loss`). topk: 1 / (kept share) on the kept
    samples, 0 elsewhere."""
    adv = normalised_advantage(returns)
    if mode == "topk":
        keep = np.asarray(returns) >= topk_threshold(returns, alpha)
        return keep.astype(np.float64) * (len(keep) / keep.sum())
    if mode in ("naive", "soft_nll"):
        return adv
    if mode == "positive":
        return np.maximum(adv, 0.0)
    if mode == "awr":
        return np.minimum(np.exp(adv / tau), max_weight)
    raise InputError(f"expected one of {RL_DRPO_MODES}, got {mode!r}", field="rl.drpo_mode")


def drpo_loss(logp: torch.Tensor, weights: torch.Tensor, negative: torch.Tensor,
              mode: str = "topk", nll_lambda: float = 1.0) -> torch.Tensor:
    """Per-sample loss [S]: ``-w_i * mean_l log pi(y_{i,l})`` from logp [S, L]; under
    ``soft_nll`` the weights of ``negative`` samples are scaled by exp(-lambda * NLL_i / L)."""
    L = logp.shape[-1]
    w = weights.to(logp.dtype)
    if mode == "soft_nll":
        nll = -logp.detach().sum(-1)
        w = torch.where(negative, w * torch.exp(-nll_lambda * nll / L), w)
    return -(w * logp.mean(-1))


class DRPOTrainer:
    """Offline weighted-likelihood training of the policy on an :class:`OfflineLog`.

    ``rl.users_per_step`` samples per step (drawn uniformly without replacement), ``rl.steps``
    steps, AdamW at ``rl.lr`` with the RL schedule (linear warm-up, then cosine or constant), the
    gradient clipped at ``rl.grad_clip``. No reference model, value head or KL: the log is fixed.
    """

    def __init__(self, policy: SidModel, vocab: SidVocab, trie: SidTrie, rows: SplitRows,
                 offline: OfflineLog, cfg: RLConfig, max_history: int, seed: int = 0,
                 autocast: str = "none"):
        if cfg.drpo_mode not in RL_DRPO_MODES:
            raise InputError(f"expected one of {RL_DRPO_MODES}, got {cfg.drpo_mode!r}",
                             field="rl.drpo_mode")
        if len(offline) == 0:
            raise InputError("the offline log is empty", field="rl.drpo_mode")
        self.policy = policy.eval()            # no dropout, as in RL (gradients still flow)
        self.vocab, self.trie, self.rows, self.log, self.cfg = vocab, trie, rows, offline, cfg
        self.max_history = max_history
        # the policy's device (the trie must be there too); run.autocast around the forward
        self.device, self.autocast = module_device(policy), autocast
        self.adv = normalised_advantage(offline.returns)
        self.weights = sample_weights(cfg.drpo_mode, offline.returns, alpha=cfg.drpo_alpha,
                                      tau=cfg.drpo_tau, max_weight=cfg.drpo_max_weight)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.rng = np.random.default_rng(seed)
        self.step_idx = 0
        self.history: list[dict] = []

    def _lr_factor(self, step: int) -> float:
        return lr_factor(step, self.cfg.steps, self.cfg.warmup_steps, self.cfg.schedule)

    def _grads(self, loss: torch.Tensor, retain: bool) -> list[torch.Tensor]:
        if not loss.requires_grad:
            return [torch.zeros_like(p) for p in self.params]
        grads = torch.autograd.grad(loss, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]

    @staticmethod
    def _norm(grads: list[torch.Tensor]) -> float:
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

    def step(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        n = min(cfg.users_per_step, len(self.log))
        idx = self.rng.choice(len(self.log), size=n, replace=False)
        hist = [self.rows.histories[r] for r in self.log.rows[idx]]
        tokens, mask = self.vocab.encode_histories(hist, self.trie.codes.cpu(),
                                                   max_items=self.max_history)
        dev = self.device
        items = torch.as_tensor(self.log.items[idx], dtype=torch.long, device=dev)
        with autocast_region(dev, self.autocast):
            sc = score_candidates(self.policy, self.vocab, self.trie, tokens.to(dev),
                                  mask.to(dev), self.trie.codes[items][:, None, :])
        logp, entropy = sc.log_probs[:, 0], sc.entropy[:, 0].detach()    # [n, L]
        negative = torch.as_tensor(self.adv[idx] < 0, device=dev)
        w = torch.as_tensor(self.weights[idx], dtype=torch.float32, device=dev)
        per_sample = drpo_loss(logp, w, negative, cfg.drpo_mode, cfg.drpo_nll_lambda)
        step = self.step_idx + 1
        check_finite(per_sample.detach(), "loss_drpo", step)
        zero = per_sample.sum() * 0.0
        loss_neg = per_sample[negative].sum() / n if negative.any() else zero
        loss_pos = per_sample[~negative].sum() / n if (~negative).any() else zero
        g_neg = self._grads(loss_neg, retain=True)
        g_pos = self._grads(loss_pos, retain=False)
        self.opt.zero_grad(set_to_none=True)
        for p, a, b in zip(self.params, g_neg, g_pos):
            p.grad = a + b
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        self.opt.step()
        self.sched.step()
        self.step_idx += 1
        nll = -logp.detach()                                             # [n, L]
        seq_nll = nll.mean(-1)
        neg_np = negative.cpu().numpy()
        rec = {"step": self.step_idx, "lr": self.sched.get_last_lr()[0],
               "loss_drpo": float((loss_neg + loss_pos).detach()),
               "max_token_nll": float(nll.max()),
               "entropy": float(entropy.mean()),
               "nll_pos_mean": float(seq_nll[~negative].mean()) if (~negative).any()
               else float("nan"),
               "nll_neg_mean": float(seq_nll[negative].mean()) if negative.any()
               else float("nan"),
               "grad_norm": norm, "grad_norm_neg": self._norm(g_neg),
               "grad_norm_pos": self._norm(g_pos),
               "weight_mean": float(w.mean()), "kept_share": float((w != 0).float().mean()),
               "negative_share": float(neg_np.mean()),
               "injected_share": float(self.log.injected[idx].mean()),
               "return_mean": float(self.log.returns[idx].mean()),
               "step_seconds": time.perf_counter() - t0}
        self.history.append(rec)
        return rec

    def train(self, log_path: str | os.PathLike | None = None, progress: bool = False
              ) -> list[dict]:
        """``rl.steps`` steps; each record appended to ``log_path`` (JSON lines)."""
        from tqdm.auto import tqdm

        for _ in tqdm(range(self.step_idx, self.cfg.steps), desc=f"drpo ({self.cfg.drpo_mode})",
                      disable=not progress):
            rec = self.step()
            if log_path is not None:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
            if self.step_idx % self.cfg.log_every == 0 or self.step_idx == self.cfg.steps:
                log.info("drpo step %d (%s): loss %.4f, max token NLL %.2f, entropy %.3f, "
                         "grad norm %.3f (negatives %.3f), kept %.2f, %.2fs/step",
                         rec["step"], self.cfg.drpo_mode, rec["loss_drpo"],
                         rec["max_token_nll"], rec["entropy"], rec["grad_norm"],
                         rec["grad_norm_neg"], rec["kept_share"], rec["step_seconds"])
        return self.history
