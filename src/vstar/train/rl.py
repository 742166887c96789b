"""The V-STAR RL trainer, one step at a time (CleanRL-style, top to bottom).

One RL step for a batch of training rows (history x, logged next item y*):

    1. propose   C(x): G candidate items per user from the current policy
                 (beam search, sampling, or VED guided by the current value head)      [no grad]
    2. reward    R(x, y) for every candidate (default: rule + rank-aware penalty)
    3. advantage GRPO: (R - mean_C R) / (std_C R + eps) per user;
                 Sibling-GRPO (Eq. 15-18) at the branching decisions of C(x)'s prefix tree, on
                 the sibling reward (docs/method.md section 5);
                 dense per-level rewards -> TD targets for the value head, on the candidates and
                 on every node VED evaluated (docs/method.md section 4)
    4. loss      L = L_GRPO + w_sib * L_sib + w_V * L_value, KL (k3) to the frozen SFT model
    5. update    AdamW; the policy loss's and the value loss's gradients clipped separately;
                 LR schedule (PPO clipping when a batch is reused)

Before RL, ``value_warmup_steps`` steps train the value head alone on the SFT policy's groups.
Every ``value_diag_every`` steps a diagnostic ranks the target's prefix by V and by log pi; VED
decodes with V only once that diagnostic says V knows something (``value_gate``); before, VED
runs with a value of 0 (docs/method.md section 9).

Everything the paper's ablations switch is a field of ``RLConfig`` (``vstar.train.config``); the
named ablation rows are presets in the method registry (``vstar.experiments.methods``).

Under torchrun (``vstar.core.dist``) every rank draws the same users for a step and works on its
share of them: it proposes, rewards and computes GRPO / sibling advantages and value targets for
its own users only (they are per user); each loss term is weighted by the rank's share of the
term's units (active users, value entries) and gradients of the policy and the value head are
summed over ranks before clipping, so a step equals the single-process step on the same users.
The value diagnostic (and so VED's value gate) is reduced over ranks; rank 0 writes the log and
the checkpoints, which hold every rank's sampling RNG.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from vstar.core import checkpoint, dist
from vstar.core.device import autocast as autocast_region
from vstar.core.device import module_device
from vstar.core.errors import InputError, check_finite
from vstar.core.scalars import NullScalars, Scalars
from vstar.data.types import SplitRows
from vstar.decode.beam import beam_search
from vstar.decode.sampling import constrained_sample
from vstar.decode.scoring import score_candidates
from vstar.decode.trie import SidTrie
from vstar.decode.ved import value_guided_decode
from vstar.model.backbone import SidModel
from vstar.model.value import ValueHead, state_log_probs
from vstar.model.vocab import SidVocab
from vstar.train.advantages import (PrefixEmbeddings, SiblingAdvantages, dense_value_rewards,
                                    grpo_advantages, rank_percentile, return_to_go,
                                    sibling_advantages, sibling_mass_on_target_path,
                                    td_targets, tree_value_paths, value_loss,
                                    within_user_correlation)
from vstar.train.advantages import (hepo_advantages, hepo_process_rewards, tree_advantages,
                                    zero_variance_keep)
from vstar.train.config import (RL_DECODERS, RL_SIBLING_SAME, RL_VALUE_GATES, RL_VALUE_TARGETS,
                                RLConfig)
from vstar.train.config import RL_ADVANTAGES, RL_POLICY_LOSSES, RL_RATIO_LEVELS
from vstar.train.losses import grpo_loss, kl_k3, sdpo_loss, sibling_loss
from vstar.train.rewards import REWARDS, RewardContext, get_reward
from vstar.train.schedule import lr_factor

log = logging.getLogger(__name__)

DIAG_ROWS = 4096     # candidate rows per scoring call of the value diagnostic (memory bound)


@dataclass
class RLBatch:
    """What one step proposes and scores (all [B, G] or [B, G, L])."""

    tokens: torch.Tensor
    pad_mask: torch.Tensor
    items: torch.Tensor
    codes: torch.Tensor
    valid: torch.Tensor
    target_items: torch.Tensor
    target_codes: torch.Tensor
    forward_tokens: int
    decode_stats: dict | None = None         # logged figures of the decoder (VED: see propose)
    tree_codes: torch.Tensor | None = None   # [B, P, L] extra value paths (VED tree), -1 = pad
    tree_valid: torch.Tensor | None = None   # [B, P]
    keep_users: torch.Tensor | None = None   # [B] users in the clipped policy loss (DAPO's
                                             # filter; None: all)


def check_rl_config(cfg: RLConfig) -> None:
    """Raise ``InputError`` naming the ``rl.*`` field of a setting the trainer cannot use."""
    def bad(field: str, msg: str):
        raise InputError(msg, field=f"rl.{field}")

    if cfg.decoder not in RL_DECODERS:
        bad("decoder", f"expected one of {RL_DECODERS}, got {cfg.decoder!r}")
    if cfg.sibling_reward != RL_SIBLING_SAME and cfg.sibling_reward not in REWARDS:
        bad("sibling_reward", f"expected {RL_SIBLING_SAME!r} or one of {sorted(REWARDS)}, got "
            f"{cfg.sibling_reward!r}")
    if not cfg.sibling_std_floor >= 0:
        bad("sibling_std_floor", f"expected >= 0, got {cfg.sibling_std_floor}")
    if cfg.value_targets not in RL_VALUE_TARGETS:
        bad("value_targets", f"expected one of {RL_VALUE_TARGETS}, got {cfg.value_targets!r}")
    if cfg.value_gate not in RL_VALUE_GATES:
        bad("value_gate", f"expected one of {RL_VALUE_GATES}, got {cfg.value_gate!r}")
    if cfg.value_warmup_steps < 0:
        bad("value_warmup_steps", f"expected >= 0, got {cfg.value_warmup_steps}")
    if cfg.value_updates_per_step < 1:
        bad("value_updates_per_step", f"expected >= 1, got {cfg.value_updates_per_step}")
    if cfg.value_diag_every < 0:
        bad("value_diag_every", f"expected >= 0, got {cfg.value_diag_every}")
    if cfg.value_gate != "always" and cfg.value_loss and cfg.value_diag_every == 0:
        bad("value_diag_every", f"value_gate {cfg.value_gate!r} opens on the value diagnostic: "
            "expected value_diag_every >= 1 (or value_gate 'always')")
    for name in ("grad_clip", "value_grad_clip"):
        if not getattr(cfg, name) > 0:
            bad(name, f"expected a max gradient norm > 0, got {getattr(cfg, name)}")
    # other RL methods (docs/method.md "Other RL methods")
    if cfg.advantage not in RL_ADVANTAGES:
        bad("advantage", f"expected one of {RL_ADVANTAGES}, got {cfg.advantage!r}")
    if cfg.ratio_level not in RL_RATIO_LEVELS:
        bad("ratio_level", f"expected one of {RL_RATIO_LEVELS}, got {cfg.ratio_level!r}")
    if cfg.policy_loss not in RL_POLICY_LOSSES:
        bad("policy_loss", f"expected one of {RL_POLICY_LOSSES}, got {cfg.policy_loss!r}")
    if cfg.decoder == "value_beam" and not cfg.value_loss:
        bad("value_loss", "expected true with decoder 'value_beam' (it reads the value head)")
    if cfg.advantage == "hepo" and not cfg.value_loss:
        bad("value_loss", "expected true with advantage 'hepo' (its GAE reads the value head)")
    if cfg.advantage == "hepo" and cfg.decoder == "ved" and cfg.value_targets == "tree":
        bad("value_targets", "expected 'candidates' with advantage 'hepo' and decoder 'ved'")


def _zero_value(hidden: torch.Tensor) -> torch.Tensor:
    """VED's value before the gate opens: 0 for every state (docs/method.md section 9)."""
    return hidden.new_zeros(hidden.shape[:-1], dtype=torch.float32)


class RLTrainer:
    """Holds the policy, the frozen reference (SFT) model, the value head and the optimiser.

    Device: the policy's (``vstar.core.device``); the reference, the value head, the item
    embeddings and values and the sampling generator are put beside it, the trie must be there
    already, and every step's prompts and targets go there. ``autocast`` (``run.autocast``):
    decoding, the value diagnostic and the loss forwards run in that region, the backward
    outside it; log-probs, rewards, advantages and values are float32.
    """

    def __init__(self, policy: SidModel, vocab: SidVocab, trie: SidTrie, rows: SplitRows,
                 cfg: RLConfig, max_history: int, seed: int = 0,
                 item_emb: np.ndarray | None = None, item_values: np.ndarray | None = None,
                 reward_fn: str | Callable | None = None, autocast: str = "none"):
        check_rl_config(cfg)
        if cfg.a2po != "off" and not getattr(self, "fuses_semantic_reward", False):
            raise InputError("rl.a2po needs the A2PO trainer: run a method 'a2po*' (or "
                             "vstar.train.a2po.A2POTrainer)", field="rl.a2po")
        self.cfg, self.vocab, self.trie, self.rows = cfg, vocab, trie, rows
        self.max_history = max_history
        self.device, self.autocast = module_device(policy), autocast
        dev = self.device
        # RL runs without dropout (eval mode, gradients still flow): the sampling policy pi_old,
        # the updated pi and the frozen reference are then the same function before the update,
        # so ratios start at 1 and the KL starts at 0.
        self.policy = policy.eval()
        if dist.world_size() > min(cfg.users_per_step, len(rows)):
            raise InputError(f"got {cfg.users_per_step} users per step ({len(rows)} rows), "
                             f"expected at least one per process ({dist.world_size()})",
                             field="rl.users_per_step")
        dist.broadcast_module(policy)                          # every rank: rank 0's weights
        self.reference = copy.deepcopy(policy).eval()          # frozen SFT model for the KL term
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.value_head = ValueHead(policy.hidden_size, cfg.value_head).to(dev).eval()
        dist.broadcast_module(self.value_head)
        self.reward_fn = get_reward(reward_fn or cfg.reward)
        self.sibling_reward_fn = (None if cfg.sibling_reward == RL_SIBLING_SAME
                                  else get_reward(cfg.sibling_reward))
        self.item_emb = (None if item_emb is None
                         else torch.as_tensor(item_emb, dtype=torch.float32).to(dev))
        self.item_values = (None if item_values is None
                            else torch.as_tensor(item_values).float().to(dev))
        self.prefix_emb = (PrefixEmbeddings(trie.codes, self.item_emb, cfg.prefix_emb)
                           if self.item_emb is not None else None)
        # value-only steps before RL: only when the value head is trained at all
        self.n_value_warmup = cfg.value_warmup_steps if cfg.value_loss else 0
        self.total_steps = self.n_value_warmup + cfg.steps
        self.opt = torch.optim.AdamW([
            {"params": list(policy.parameters()), "lr": cfg.lr},
            {"params": list(self.value_head.parameters()), "lr": cfg.value_lr},
        ], weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, [self._policy_lr_factor, self._value_lr_factor])
        self.rng = np.random.default_rng(seed)
        # per rank (sampling), on the policy's device (where the draws are made)
        self.gen = torch.Generator(device=dev).manual_seed(dist.rank_seed(seed))
        self.step_idx = 0
        # VED decodes with V from this step on (-1: not yet); docs/method.md section 9
        self.value_in_ved_since = 0 if cfg.value_gate == "always" else -1
        self.history: list[dict] = []
        self._value_data = None     # the step's detached value states (refit_value)
        L = vocab.n_levels          # HEPO's c_l (docs/method.md "Other RL methods")
        c = cfg.hepo_level_weights or [(l + 1) / L for l in range(L)]
        if len(c) != L:
            raise InputError(f"expected {L} weights (one per SID level), got {len(c)}",
                             field="rl.hepo_level_weights")
        self.hepo_level_weights = torch.tensor(c, dtype=torch.float32, device=dev)

    def _policy_lr_factor(self, step: int) -> float:
        """The policy's schedule starts after the value warm-up (lr 0 during it)."""
        rl_step = step - self.n_value_warmup
        return (0.0 if rl_step < 0 else
                lr_factor(rl_step, self.cfg.steps, self.cfg.warmup_steps, self.cfg.schedule))

    def _value_lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.cfg.warmup_steps, self.cfg.schedule)

    @property
    def in_value_warmup(self) -> bool:
        return self.step_idx < self.n_value_warmup

    @property
    def value_in_ved(self) -> bool:
        return 0 <= self.value_in_ved_since <= self.step_idx

    def precision(self):
        """The region the model forwards run in (``run.autocast``; ``vstar.core.device``)."""
        return autocast_region(self.device, self.autocast)

    def _encode(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts of rows ``idx``, built on the CPU, on the policy's device."""
        tokens, mask = self.vocab.encode_histories([self.rows.histories[i] for i in idx],
                                                   self.trie.codes.cpu(),
                                                   max_items=self.max_history)
        return tokens.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ 1. propose
    @torch.no_grad()
    def propose(self, idx: np.ndarray) -> RLBatch:
        cfg, G = self.cfg, self.cfg.n_candidates
        tokens, mask = self._encode(idx)
        tree = None
        if cfg.decoder == "beam":
            res = beam_search(self.policy, self.vocab, self.trie, tokens, mask, G)
        elif cfg.decoder == "value_beam":      # V steers only once the value gate is open
            res = beam_search(self.policy, self.vocab, self.trie, tokens, mask, G,
                              value_fn=self.value_head if self.value_in_ved else None,
                              value_weight=cfg.value_beam_weight)
        elif cfg.decoder == "sample":
            res = constrained_sample(self.policy, self.vocab, self.trie, tokens, mask, G,
                                     cfg.temperature, cfg.top_k, generator=self.gen)
        else:
            value_fn = self.value_head if self.value_in_ved else _zero_value
            res = value_guided_decode(self.policy, value_fn, self.vocab, self.trie, tokens,
                                      mask, G, cfg.ved, generator=self.gen)
            tree = res.tree
        targets = torch.as_tensor(self.rows.targets[idx], dtype=torch.long, device=self.device)
        stats = None
        if getattr(res, "root_widenings", None) is not None:      # VEDResult (issue 8, part 1)
            stats = {"root_widenings_per_user": float(res.root_widenings.float().mean())}
        if getattr(res, "value_swapped", None) is not None:        # value-guided beam
            stats = {"value_beam_swapped": float(res.value_swapped.mean())}
        b = RLBatch(tokens, mask, res.items, res.codes, res.items >= 0, targets,
                    self.trie.codes[targets], int(res.forward_tokens), stats)
        if tree is not None and cfg.value_loss and cfg.value_targets == "tree":
            b.tree_codes, b.tree_valid = tree_value_paths(
                tree.depth, tree.codes, tree.evaluated, tree.parent, b.codes, b.valid,
                self.trie.codes, generator=self.gen)
        return b

    # ------------------------------------------------------------------ 2-4. rewards, advantages, loss
    def _context(self, b: RLBatch) -> RewardContext:
        return RewardContext(b.items, b.codes.clamp(min=0), b.valid, b.target_items,
                             b.target_codes, item_emb=self.item_emb, item_values=self.item_values)

    def rewards(self, b: RLBatch) -> torch.Tensor:
        return self.reward_fn(self._context(b))                           # [B, G]

    def advantages(self, b: RLBatch, rewards: torch.Tensor) -> torch.Tensor:
        """The per-candidate advantage [B, G] of the policy loss: GRPO's group z-score (a
        subclass may fuse several rewards here, e.g. ``vstar.train.a2po.A2POTrainer``)."""
        return grpo_advantages(rewards, b.valid, self.cfg.adv_eps)

    def sibling_advantages(self, b: RLBatch, rewards: torch.Tensor) -> SiblingAdvantages:
        """Eq. 15-18 on the sibling reward (``rl.sibling_reward``; docs/method.md section 5)."""
        r = rewards if self.sibling_reward_fn is None else self.sibling_reward_fn(self._context(b))
        return sibling_advantages(b.codes.clamp(min=0), r, b.valid, self.cfg.adv_eps,
                                  self.cfg.sibling_std_floor)

    def _dense(self, codes: torch.Tensor, valid: torch.Tensor, b: RLBatch) -> torch.Tensor:
        return dense_value_rewards(codes.clamp(min=0), b.target_codes, b.target_items, valid,
                                   level_weights=self.cfg.level_weights,
                                   prefix_emb=self.prefix_emb)

    def losses(self, b: RLBatch, adv, sib, dense, logp_old,
               value_only: bool = False) -> tuple[dict, dict, torch.Tensor]:
        """The loss terms (tensors), logged statistics, and logp_old for batch reuse.

        ``value_only`` (the value warm-up): only the value term, on detached hidden states.
        """
        cfg = self.cfg
        terms, stats = {}, {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not value_only):
            sc = score_candidates(self.policy, self.vocab, self.trie, b.tokens, b.pad_mask,
                                  b.codes)
        if not value_only:
            with torch.no_grad():
                logp_ref = score_candidates(self.reference, self.vocab, self.trie, b.tokens,
                                            b.pad_mask, b.codes).log_probs    # [B, G, L]
            if logp_old is None:                                          # first use of the batch
                logp_old = sc.log_probs.detach()
            # both policy losses are means over the users with a valid candidate: this rank's
            # weight in the global mean (1 with one process; vstar.core.dist)
            user_share = dist.global_share(int((b.valid.sum(1) > 0).sum()))
            if cfg.policy_loss == "sdpo":                                 # S-DPO instead
                terms["sdpo"], d_stats = self._sdpo_term(b, sc.log_probs, logp_ref)
                stats.update({f"sdpo_{k}": v for k, v in d_stats.items()})
            else:
                # DAPO's filter: only the kept users (all without it) enter the GRPO mean
                pv = b.valid if b.keep_users is None else b.valid & b.keep_users[:, None]
                terms["grpo"], g_stats = grpo_loss(
                    sc.log_probs, logp_old, logp_ref, adv, pv, cfg.clip_eps, cfg.kl_beta,
                    cfg.clip_eps_high, cfg.ratio_level,
                    self.hepo_level_weights if cfg.advantage == "hepo" else None)
                terms["grpo"] = terms["grpo"] * dist.global_share(int((pv.sum(1) > 0).sum()))
                stats.update({f"grpo_{k}": v for k, v in g_stats.items()})
            if cfg.sibling:                                               # Eq. 19
                terms["sib"], s_stats = sibling_loss(sc.log_probs, logp_old, logp_ref, sib,
                                                     b.valid, cfg.clip_eps, cfg.kl_beta)
                terms["sib"] = terms["sib"] * user_share
                stats["sib_clip_frac"] = s_stats.get("clip_frac", 0.0)
        if cfg.value_loss:
            terms["value"], v_stats = self._value_term(b, sc.hidden, sc.log_probs, dense,
                                                         value_only)
            stats.update(v_stats)
        stats.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
        return terms, stats, logp_old

    def _sdpo_term(self, b: RLBatch, logp_cand: torch.Tensor,
                   ref_cand: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """S-DPO: the logged target against the group's other candidates (docs/method.md
        "Other RL methods"). Under torchrun: this rank's share of the mean over users."""
        pos = b.target_codes[:, None, :]                                  # [B, 1, L]
        logp_pos = score_candidates(self.policy, self.vocab, self.trie, b.tokens, b.pad_mask,
                                    pos).log_probs[:, 0]                  # [B, L]
        with torch.no_grad():
            ref_pos = score_candidates(self.reference, self.vocab, self.trie, b.tokens,
                                       b.pad_mask, pos).log_probs[:, 0]
        neg = b.valid & (b.items != b.target_items[:, None])              # [B, G]
        loss, stats = sdpo_loss(logp_pos, ref_pos, logp_cand, ref_cand, neg, self.cfg.sdpo_beta)
        with torch.no_grad():
            tok = b.valid[..., None].expand_as(logp_cand)
            stats["kl_mean"] = (float(kl_k3(logp_cand[tok], ref_cand[tok]).mean())
                                if bool(tok.any()) else 0.0)
        return loss * dist.global_share(int(neg.any(1).sum())), stats

    def _values(self, hidden: torch.Tensor, level_log_probs: torch.Tensor) -> torch.Tensor:
        """V of the states of scored paths [..., L]: ``hidden`` [..., L, D] and the paths'
        per-level log-probs [..., L] (``score_candidates``; read only by a value head with the
        policy prior, ``rl.value_head.prior``)."""
        if self.value_head.reads_log_prob:
            return self.value_head(hidden, state_log_probs(level_log_probs.detach()))
        return self.value_head(hidden)

    def _value_term(self, b: RLBatch, cand_hidden: torch.Tensor, cand_log_probs: torch.Tensor,
                    dense: torch.Tensor, value_only: bool) -> tuple[torch.Tensor, dict]:
        """TD loss on the candidates' states and on the VED tree's extra paths (section 4).

        Keeps the detached hidden states, path log-probs, dense rewards and masks in
        ``self._value_data`` for the head-only refits of :meth:`refit_value`.
        """
        cfg = self.cfg
        to_backbone = cfg.value_grad_to_backbone and not value_only
        hiddens, denses, masks = [cand_hidden], [dense], [b.valid]
        logps = [cand_log_probs.detach()]
        n_tree = 0
        if b.tree_codes is not None and b.tree_codes.shape[1] > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and to_backbone):
                tree = score_candidates(self.policy, self.vocab, self.trie, b.tokens,
                                        b.pad_mask, b.tree_codes)
            hiddens.append(tree.hidden)
            logps.append(tree.log_probs.detach())
            denses.append(self._dense(b.tree_codes, b.tree_valid, b))
            masks.append(b.tree_valid)
            n_tree = int(b.tree_valid.sum())
        if not to_backbone:
            hiddens = [h.detach() for h in hiddens]
        self._value_data = ([h.detach() for h in hiddens], logps, denses, masks)
        loss, values = self._td_loss(hiddens, logps, denses, masks)
        v = values.detach()
        stats = {"value_mean": float(v[b.valid].mean()) if b.valid.any() else 0.0,
                 "value_paths_tree_per_user": n_tree / b.valid.shape[0],
                 "value_return_corr": within_user_correlation(
                     v[..., 1:], return_to_go(dense, cfg.gamma)[..., 1:], b.valid)}
        return loss, stats

    def _td_loss(self, hiddens, logps, denses, masks) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared TD error over all paths; also V of the first part (the candidates).
        Under torchrun: this rank's share of the mean over every rank's entries."""
        values = [self._values(h, lp) for h, lp in zip(hiddens, logps)]  # [B, G_i, L] each
        targets = [td_targets(v, r, self.cfg.gamma) for v, r in zip(values, denses)]
        mask = torch.cat(masks, 1)
        loss = value_loss(torch.cat(values, 1), torch.cat(targets, 1), mask)
        loss = loss * dist.global_share(int(mask.sum()))     # entries: mask x L on every rank
        return loss, values[0]

    def refit_value(self, n: int) -> float:
        """``n`` more head-only updates on the step's (detached) value data: the TD targets are
        recomputed from the current V each time (docs/method.md section 9, "Value updates per
        step"). Costs no backbone pass. Returns the last value loss (NaN if n = 0)."""
        last = float("nan")
        head = list(self.value_head.parameters())
        for _ in range(n):
            loss, _ = self._td_loss(*self._value_data)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.all_reduce_grads(head)
            torch.nn.utils.clip_grad_norm_(head, self.cfg.value_grad_clip)
            self.opt.step()                       # the policy has no gradient: left unchanged
            last = float(loss.detach())   # this rank's share (the step record sums them)
        return last

    # ------------------------------------------------------------------ 5. update
    def backward(self, terms: dict, value_only: bool = False) -> tuple[float, float]:
        """Gradients of the step's loss, the policy loss's and the value loss's each clipped to
        its own max norm (``grad_clip``, ``value_grad_clip``; docs/method.md section 9).

        Returns the norms before clipping (policy loss, value loss). With
        ``value_grad_to_backbone`` the value loss's gradient (head and backbone) is taken apart
        first, clipped on its own and added to the clipped policy gradient, so a large value loss
        never rescales the policy's update.
        """
        cfg = self.cfg
        pol = [p for p in self.policy.parameters() if p.requires_grad]
        head = list(self.value_head.parameters())
        loss_pi = None if value_only else (terms.get("grpo", 0.0) + terms.get("sdpo", 0.0)
                                           + cfg.w_sib * terms.get("sib", 0.0))
        loss_v = None
        if "value" in terms:
            loss_v = terms["value"] * (1.0 if value_only else cfg.w_value)
        self.opt.zero_grad(set_to_none=True)
        shared = cfg.value_grad_to_backbone and not value_only and loss_v is not None
        if shared:
            params = pol + head
            grads = torch.autograd.grad(loss_v, params, retain_graph=loss_pi is not None,
                                        allow_unused=True)
            grads = dist.reduce_grad_list(params, grads)             # summed over ranks
            present = [g for g in grads if g is not None]
            norm_v = float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in present]))) if present else 0.0
            scale = min(1.0, cfg.value_grad_clip / (norm_v + 1e-6))
            norm_p = 0.0
            if loss_pi is not None:
                loss_pi.backward()
                dist.all_reduce_grads(pol)
                norm_p = float(torch.nn.utils.clip_grad_norm_(pol, cfg.grad_clip))
            for p, g in zip(params, grads):
                if g is None:
                    continue
                p.grad = g * scale if p.grad is None else p.grad + g * scale
            return norm_p, norm_v
        total = (loss_pi if loss_pi is not None else 0.0) + (loss_v if loss_v is not None else 0.0)
        if isinstance(total, torch.Tensor) and total.requires_grad:
            total.backward()
        dist.all_reduce_grads(pol + head)
        norm_p = float(torch.nn.utils.clip_grad_norm_(pol, cfg.grad_clip))
        norm_v = float(torch.nn.utils.clip_grad_norm_(head, cfg.value_grad_clip))
        return norm_p, norm_v

    # ------------------------------------------------------------------ other RL methods
    def other_advantages(self, idx: np.ndarray, b: RLBatch, rewards: torch.Tensor,
                         adv: torch.Tensor, dense: torch.Tensor):
        """DAPO's group filter, TreeRL's or HEPO's advantage when the config asks for them
        (docs/method.md "Other RL methods"). Returns (advantage [B, G] or [B, G, L], value
        rewards [B, G, L], logged statistics); sets ``b.keep_users`` for the filter."""
        cfg, stats = self.cfg, {}
        if cfg.filter_zero_variance:
            b.keep_users = zero_variance_keep(rewards, b.valid)
            n_users = int((b.valid.sum(1) > 0).sum())
            stats["dapo_kept_share"] = int(b.keep_users.sum()) / max(1, n_users)
        if cfg.advantage == "treerl":
            adv = tree_advantages(b.codes.clamp(min=0), rewards, b.valid)
        elif cfg.advantage == "hepo":
            process = hepo_process_rewards(b.codes, b.valid, *self._history_codes(idx),
                                           self._sibling_codes(b.codes), cfg.hepo_alpha)
            with torch.no_grad():
                sc = score_candidates(self.policy, self.vocab, self.trie, b.tokens,
                                      b.pad_mask, b.codes)
                values = self._values(sc.hidden, sc.log_probs)            # [B, G, L]
            adv, dense = hepo_advantages(process, rewards, values, b.valid, cfg.gamma,
                                         cfg.gae_lambda, cfg.adv_eps)
            L, v = process.shape[-1], b.valid
            coarse = process[..., : L - 1][v]                             # [n, L-1]
            stats["hepo_process_reward_mean"] = float(coarse.mean()) if coarse.numel() else 0.0
            stats["hepo_process_reward_nonzero"] = (float((coarse > 0).float().mean())
                                                    if coarse.numel() else 0.0)
        if adv.dim() == 3:
            a = adv[b.valid]                                              # [n, L]
            stats.update({f"adv_abs_l{l + 1}": float(a[:, l].abs().mean()) if a.numel() else 0.0
                          for l in range(adv.shape[-1])})
        return adv, dense, stats

    def _history_codes(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """SIDs of the history items the model reads (the last ``max_history``): [B, H, L] and
        a mask [B, H]."""
        hist = [np.asarray(self.rows.histories[i])[-self.max_history:] for i in idx]
        H = max(1, max(len(h) for h in hist))
        items = torch.zeros(len(hist), H, dtype=torch.long)
        mask = torch.zeros(len(hist), H, dtype=torch.bool)
        for r, h in enumerate(hist):
            items[r, : len(h)] = torch.as_tensor(h, dtype=torch.long)
            mask[r, : len(h)] = True
        return self.trie.codes[items.to(self.device)], mask.to(self.device)

    def _sibling_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The trie-valid codes at each level under each candidate's prefix: [B, G, L, K_max]."""
        B, G, L = codes.shape
        K = max(self.trie.codebook_sizes)
        flat = codes.clamp(min=0).reshape(B * G, L)
        node = torch.zeros(B * G, dtype=torch.long, device=codes.device)
        out = torch.zeros(B * G, L, K, dtype=torch.bool, device=codes.device)
        for l in range(L):
            allowed = self.trie.allowed(l, node)                          # [B*G, K_l]
            out[:, l, : allowed.shape[1]] = allowed
            node = self.trie.step(l, node, flat[:, l])
        return out.reshape(B, G, L, K)

    # ------------------------------------------------------------------ value diagnostic
    @torch.no_grad()
    def value_diagnostic(self, idx: np.ndarray) -> dict:
        """Where V and log pi rank the target's prefix among its siblings (docs/method.md
        section 9, "Value diagnostic").

        For each depth d = 1..L-1 and user: the trie-valid children c of the target's parent
        prefix y*<d; V(x, y*<d, c) (the value VED would read at that node) and
        log pi(c | x, y*<d) each rank them; logged: the target's mean rank and mean percentile
        (0 best, 0.5 chance) by V and by log pi, and the mean number of children. Under
        torchrun each rank scores its users and the means are taken over every rank's users.
        """
        L = self.vocab.n_levels
        tokens, mask = self._encode(idx)
        target = self.trie.codes[torch.as_tensor(self.rows.targets[idx], dtype=torch.long,
                                                 device=self.device)]
        B, dev = target.shape[0], target.device
        # per key: (sum over this rank's users, number of users), reduced over ranks below
        sums: dict[str, list[float]] = {}
        node = torch.zeros(B, dtype=torch.long, device=dev)
        for d in range(1, L):
            allowed = self.trie.allowed(d - 1, node)                      # [B, K_d]
            K = allowed.shape[1]
            v = torch.empty(B, K, device=dev)
            lp = torch.empty(B, K, device=dev)
            chunk = max(1, DIAG_ROWS // max(1, B))
            for lo in range(0, K, chunk):
                hi = min(K, lo + chunk)
                cand = target[:, None, :].repeat(1, hi - lo, 1)           # [B, k, L]
                cand[:, :, d - 1] = torch.arange(lo, hi, device=dev)
                cand[:, :, d:] = 0        # V(s_{d+1}) and log pi(c_d) do not read later codes
                sc = score_candidates(self.policy, self.vocab, self.trie, tokens, mask, cand)
                v[:, lo:hi] = self._values(sc.hidden, sc.log_probs)[:, :, d]
                lp[:, lo:hi] = sc.log_probs[:, :, d - 1]
            code = target[:, d - 1]
            r_v, p_v, ok = rank_percentile(v, allowed, code)
            r_lp, p_lp, _ = rank_percentile(lp, allowed, code)
            n_ok = float(ok.sum())
            for key, x in ((f"vdiag_rank_v_l{d}", r_v), (f"vdiag_rank_logp_l{d}", r_lp),
                           (f"vdiag_pct_v_l{d}", p_v), (f"vdiag_pct_logp_l{d}", p_lp),
                           (f"vdiag_children_l{d}", allowed.sum(1)),
                           ("vdiag_pct_v", p_v), ("vdiag_pct_logp", p_lp)):
                total = sums.setdefault(key, [0.0, 0.0])
                total[0] += float(x[ok].double().sum())
                total[1] += n_ok
            node = self.trie.step(d - 1, node, code)
        reduced = dist.all_sum([v for pair in sums.values() for v in pair])
        return {key: reduced[2 * i] / reduced[2 * i + 1] for i, key in enumerate(sums)
                if reduced[2 * i + 1] > 0}

    def _update_gate(self, diag: dict) -> None:
        """Open VED's value term once the diagnostic shows that V knows something (never during
        the value warm-up: its groups are the SFT policy's, decoded without V)."""
        cfg = self.cfg
        if self.value_in_ved_since >= 0 or "vdiag_pct_v" not in diag or self.in_value_warmup:
            return
        ref = 0.5 if cfg.value_gate == "chance" else diag["vdiag_pct_logp"]
        if diag["vdiag_pct_v"] <= ref - cfg.value_gate_margin:
            self.value_in_ved_since = self.step_idx
            log.info("rl step %d: VED now decodes with the value head (V ranks the target's "
                     "prefix at percentile %.3f, reference %.3f, margin %.3f)", self.step_idx,
                     diag["vdiag_pct_v"], ref, cfg.value_gate_margin)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        idx = self.rng.choice(len(self.rows), size=min(cfg.users_per_step, len(self.rows)),
                              replace=False)
        idx = dist.shard(idx)                            # this rank's users (all with one process)
        value_only = self.in_value_warmup
        diag = {}
        if cfg.value_loss and cfg.value_diag_every and self.step_idx % cfg.value_diag_every == 0:
            with self.precision():
                diag = self.value_diagnostic(idx)                         # V before this update
            if cfg.value_gate != "always":
                self._update_gate(diag)
        t_diag = time.perf_counter() - t0
        with self.precision():
            b = self.propose(idx)                                         # 1. propose
        t_decode = time.perf_counter() - t0 - t_diag
        rewards = self.rewards(b)                                         # 2. reward
        step = self.step_idx + 1
        check_finite(rewards[b.valid], "reward", step)
        adv = self.advantages(b, rewards)                                 # 3. advantages
        check_finite(adv[b.valid], "advantage", step)
        sib = self.sibling_advantages(b, rewards)
        dense = self._dense(b.codes, b.valid, b)
        with self.precision():                       # HEPO reads V of the candidates' states
            adv, dense, method_stats = self.other_advantages(idx, b, rewards, adv, dense)
        check_finite(adv[b.valid], "advantage", step)
        logp_old = None
        for _ in range(cfg.updates_per_batch):                            # 4-5. loss, update
            with self.precision():                   # forwards; the backward runs outside
                terms, stats, logp_old = self.losses(b, adv, sib, dense, logp_old, value_only)
            for name, term in terms.items():
                check_finite(term, f"loss_{name}", step)
            norm_p, norm_v = self.backward(terms, value_only)
            self.opt.step()
        if cfg.value_loss and cfg.value_updates_per_step > 1:
            stats["loss_value_refit"] = self.refit_value(cfg.value_updates_per_step - 1)
        self._value_data = None
        self.sched.step()
        value_in_ved = float(self.value_in_ved)
        self.step_idx += 1                               # the record's "step": steps done
        record = self._step_record(b, rewards, adv, sib, stats, t_decode,
                                   time.perf_counter() - t0)
        record.update({"value_warmup": float(value_only), "value_in_ved": value_in_ved,
                       "grad_norm_policy": norm_p, "grad_norm_value": norm_v,
                       "diag_seconds": t_diag, **diag, **method_stats})
        if cfg.ratio_level == "sequence" and "grpo_ratio_mean" in stats:
            record["gspo_seq_ratio_mean"] = stats["grpo_ratio_mean"]   # last update's
        # over ranks: the (share-weighted) losses summed into the global losses, the other
        # statistics averaged over the ranks' users
        record = dist.reduce_record(record, [k for k in record if k.startswith("loss_")])
        self.history.append(record)
        return record

    def _step_record(self, b, rewards, adv, sib, stats, t_decode, t_step) -> dict:
        B, G, L = b.codes.shape
        v = b.valid
        items, codes, v_cpu = b.items.cpu(), b.codes.cpu(), v.cpu()     # one copy, not B
        uniq_items = [len(set(items[i][v_cpu[i]].tolist())) / G for i in range(B)]
        uniq_codes = {f"unique_codes_l{l + 1}": float(np.mean([
            len(set(codes[i, v_cpu[i], l].tolist())) for i in range(B)])) for l in range(L)}
        hit = (b.items == b.target_items[:, None]) & v
        rv = rewards[v]
        mass, on_path = sibling_mass_on_target_path(sib, b.codes.clamp(min=0), b.target_codes)
        total = float(mass.sum())
        return {"step": self.step_idx, "reward_mean": float(rv.mean()) if rv.numel() else 0.0,
                "reward_std": float(rv.std()) if rv.numel() > 1 else 0.0,
                "adv_std": float(adv[v].std()) if v.sum() > 1 else 0.0,
                "sib_adv_std": float(sib.adv[sib.mask].std()) if sib.mask.sum() > 1 else 0.0,
                "sibling_groups_with_signal": float(sib.n_groups_with_signal.float().mean()),
                "sib_adv_mass": total / B, "sib_adv_mass_on_target_path": float(on_path.sum()) / B,
                "sib_adv_share_on_target_path": (float(on_path.sum()) / total if total > 0
                                                 else float("nan")),
                "kl": stats.get("grpo_kl_mean", stats.get("sdpo_kl_mean", 0.0)),
                "unique_items_per_G": float(np.mean(uniq_items)),
                **uniq_codes, "target_in_group": float(hit.any(1).float().mean()),
                "decode_forward_tokens_per_user": b.forward_tokens / B,
                "lr": self.sched.get_last_lr()[0],
                "decode_seconds": t_decode, "step_seconds": t_step, **(b.decode_stats or {}),
                **stats}

    # ------------------------------------------------------------------ loop, checkpoints
    def train(self, log_path: str | os.PathLike | None = None,
              checkpoint_path: str | os.PathLike | None = None,
              progress: bool = True, scalars: Scalars | None = None) -> list[dict]:
        """Steps until ``value_warmup_steps + steps`` (the warm-up only with the value loss):
        each step's record is appended to ``log_path`` (JSON lines) and given to ``scalars``
        (``vstar.core.scalars``: every entry as the curve ``rl/<name>`` at x = ``step``), and the
        state is saved to ``checkpoint_path`` every ``cfg.checkpoint_every`` steps."""
        cfg = self.cfg
        scalars = scalars or NullScalars()
        if self.step_idx:          # resumed: curves logged after the checkpoint are hidden
            scalars.restart_at(self.step_idx + 1)
        bar = tqdm(total=self.total_steps, initial=self.step_idx, desc="rl",
                   disable=not progress or not dist.is_main())
        while self.step_idx < self.total_steps:
            rec = self.step()
            if log_path is not None and dist.is_main():
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
            scalars.log("rl", {k: v for k, v in rec.items() if k != "step"}, rec["step"])
            if self.step_idx % cfg.log_every == 0 or self.step_idx == self.total_steps:
                value = f"{rec['loss_value']:.4f}" if "loss_value" in rec else "off"
                log.info("rl step %d%s: reward %.4f +- %.4f, adv std %.3f, sibling groups %.2f "
                         "(share on target path %.2f), KL %.2e, value loss %s, V in VED %d, "
                         "unique items/G %.2f, target in group %.2f, decode tokens/user %.1f, "
                         "%.2fs/step", rec["step"], " (value warm-up)" if rec["value_warmup"]
                         else "", rec["reward_mean"], rec["reward_std"], rec["adv_std"],
                         rec["sibling_groups_with_signal"], rec["sib_adv_share_on_target_path"],
                         rec["kl"], value, rec["value_in_ved"], rec["unique_items_per_G"],
                         rec["target_in_group"], rec["decode_forward_tokens_per_user"],
                         rec["step_seconds"])
            if checkpoint_path is not None and cfg.checkpoint_every \
                    and self.step_idx % cfg.checkpoint_every == 0:
                self.save(checkpoint_path)
            bar.update(1)
        bar.close()
        return self.history

    def save(self, path: str | os.PathLike) -> None:
        """Policy, value head, optimiser moments, step counter, RNGs and the value gate: an
        ``rl_state`` checkpoint (``vstar.core.checkpoint``) from which ``load`` continues
        bit-exactly. Under torchrun every rank calls it (the sampling RNGs of all ranks are
        gathered) and rank 0 writes."""
        sampler_rng = dist.gather_rng_state(self.gen.get_state())
        if not dist.is_main():
            return
        checkpoint.save_rl_state(
            path, policy=self.policy.state_dict(), value_head=self.value_head.state_dict(),
            optimizer_state=self.opt.state_dict()["state"], sampler_rng=sampler_rng,
            step=self.step_idx, numpy_rng=self.rng.bit_generator.state,
            lr_schedule=self.sched.state_dict(), config=asdict(self.cfg),
            trainer={"value_in_ved_since": self.value_in_ved_since})

    def load(self, path: str | os.PathLike) -> None:
        """Resume from ``save``: weights, optimiser moments, step counter, sampling RNG and the
        value gate."""
        state = checkpoint.load_rl_state(path)
        self.policy.load_state_dict(state.policy)
        self.value_head.load_state_dict(state.value_head)
        opt_state = self.opt.state_dict()
        for pid, tensors in state.optimizer_state.items():
            opt_state["state"].setdefault(pid, {}).update(tensors)
        self.opt.load_state_dict(opt_state)
        self.gen.set_state(dist.pick_rng_state(state.sampler_rng))
        self.step_idx = state.step
        self.rng.bit_generator.state = state.numpy_rng
        self.sched.load_state_dict(state.lr_schedule)
        for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr
        self.value_in_ved_since = int(state.trainer.get(
            "value_in_ved_since", 0 if self.cfg.value_gate == "always" else -1))
