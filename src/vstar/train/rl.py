"""The V-STAR RL trainer, one step at a time (CleanRL-style, top to bottom).

One RL step for a batch of training rows (history x, logged next item y*):

    1. propose   C(x): G candidate items per user from the current policy
                 (beam search, sampling, or VED guided by the current value head)      [no grad]
    2. reward    R(x, y) for every candidate (default: rule + rank-aware penalty)
    3. advantage GRPO: (R - mean_C R) / (std_C R + eps) per user;
                 Sibling-GRPO (Eq. 15-18) at the branching decisions of C(x)'s prefix tree;
                 dense per-level rewards -> TD targets for the value head (docs/method.md section 4)
    4. loss      L = L_GRPO + w_sib * L_sib + w_V * L_value, KL (k3) to the frozen SFT model
    5. update    AdamW, gradient clipping, LR schedule (PPO clipping when a batch is reused)

Everything the paper's ablations switch is a field of ``RLConfig`` (``vstar.train.config``); the
named ablation rows are presets in the method registry (``vstar.experiments.methods``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from vstar.core import checkpoint
from vstar.core.errors import InputError, check_finite
from vstar.data.types import SplitRows
from vstar.decode.beam import beam_search
from vstar.decode.sampling import constrained_sample
from vstar.decode.scoring import score_candidates
from vstar.decode.trie import SidTrie
from vstar.decode.ved import value_guided_decode
from vstar.model.generator import SidGenerator
from vstar.model.value import ValueHead
from vstar.model.vocab import SidVocab
from vstar.train.advantages import (PrefixEmbeddings, dense_value_rewards, grpo_advantages,
                                    sibling_advantages, td_targets, value_loss)
from vstar.train.config import RL_DECODERS, RLConfig
from vstar.train.losses import grpo_loss, sibling_loss
from vstar.train.rewards import RewardContext, get_reward

log = logging.getLogger(__name__)

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


class RLTrainer:
    """Holds the policy, the frozen reference (SFT) model, the value head and the optimiser."""

    def __init__(self, policy: SidGenerator, vocab: SidVocab, trie: SidTrie, rows: SplitRows,
                 cfg: RLConfig, max_history: int, seed: int = 0,
                 item_emb: np.ndarray | None = None, item_values: np.ndarray | None = None,
                 reward_fn: str | Callable | None = None):
        if cfg.decoder not in RL_DECODERS:
            raise InputError(f"expected one of {RL_DECODERS}, got {cfg.decoder!r}",
                             field="rl.decoder")
        self.cfg, self.vocab, self.trie, self.rows = cfg, vocab, trie, rows
        self.max_history = max_history
        # RL runs without dropout (eval mode, gradients still flow): the sampling policy pi_old,
        # the updated pi and the frozen reference are then the same function before the update,
        # so ratios start at 1 and the KL starts at 0.
        self.policy = policy.eval()
        self.reference = copy.deepcopy(policy).eval()          # frozen SFT model for the KL term
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.value_head = ValueHead(policy.hidden_size, cfg.value_head).eval()
        self.reward_fn = get_reward(reward_fn or cfg.reward)
        self.item_emb = None if item_emb is None else torch.as_tensor(item_emb, dtype=torch.float32)
        self.item_values = None if item_values is None else torch.as_tensor(item_values).float()
        self.prefix_emb = (PrefixEmbeddings(trie.codes, self.item_emb, cfg.prefix_emb)
                           if self.item_emb is not None else None)
        self.opt = torch.optim.AdamW([
            {"params": list(policy.parameters()), "lr": cfg.lr},
            {"params": list(self.value_head.parameters()), "lr": cfg.value_lr},
        ], weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.step_idx = 0
        self.history: list[dict] = []

    def _lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))
        if self.cfg.schedule == "constant":
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, self.cfg.steps) / max(1, self.cfg.steps)))

    # ------------------------------------------------------------------ 1. propose
    @torch.no_grad()
    def propose(self, idx: np.ndarray) -> RLBatch:
        cfg, G = self.cfg, self.cfg.n_candidates
        tokens, mask = self.vocab.encode_histories([self.rows.histories[i] for i in idx],
                                                   self.trie.codes, max_items=self.max_history)
        if cfg.decoder == "beam":
            res = beam_search(self.policy, self.vocab, self.trie, tokens, mask, G)
        elif cfg.decoder == "sample":
            res = constrained_sample(self.policy, self.vocab, self.trie, tokens, mask, G,
                                     cfg.temperature, cfg.top_k, generator=self.gen)
        else:
            res = value_guided_decode(self.policy, self.value_head, self.vocab, self.trie, tokens,
                                      mask, G, cfg.ved, generator=self.gen)
        targets = torch.as_tensor(self.rows.targets[idx], dtype=torch.long)
        return RLBatch(tokens, mask, res.items, res.codes, res.items >= 0, targets,
                       self.trie.codes[targets], int(res.forward_tokens))

    # ------------------------------------------------------------------ 2-4. rewards, advantages, loss
    def rewards(self, b: RLBatch) -> torch.Tensor:
        ctx = RewardContext(b.items, b.codes.clamp(min=0), b.valid, b.target_items, b.target_codes,
                            item_emb=self.item_emb, item_values=self.item_values)
        return self.reward_fn(ctx)                                        # [B, G]

    def losses(self, b: RLBatch, adv, sib, dense, logp_old) -> tuple[dict, dict, torch.Tensor]:
        """The three loss terms (tensors), logged statistics, and logp_old for batch reuse."""
        cfg = self.cfg
        sc = score_candidates(self.policy, self.vocab, self.trie, b.tokens, b.pad_mask, b.codes)
        with torch.no_grad():
            logp_ref = score_candidates(self.reference, self.vocab, self.trie, b.tokens,
                                        b.pad_mask, b.codes).log_probs    # [B, G, L]
        if logp_old is None:                                              # first use of the batch
            logp_old = sc.log_probs.detach()
        terms, stats = {}, {}
        terms["grpo"], g_stats = grpo_loss(sc.log_probs, logp_old, logp_ref, adv, b.valid,
                                           cfg.clip_eps, cfg.kl_beta)
        stats.update({f"grpo_{k}": v for k, v in g_stats.items()})
        if cfg.sibling:                                                   # Eq. 19
            terms["sib"], s_stats = sibling_loss(sc.log_probs, logp_old, logp_ref, sib, b.valid,
                                                 cfg.clip_eps, cfg.kl_beta)
            stats["sib_clip_frac"] = s_stats.get("clip_frac", 0.0)
        if cfg.value_loss or cfg.value_warmup_steps:
            hidden = sc.hidden if cfg.value_grad_to_backbone else sc.hidden.detach()
            values = self.value_head(hidden)                              # [B, G, L]: V(s_1..s_L)
            terms["value"] = value_loss(values, td_targets(values, dense, cfg.gamma), b.valid)
            stats["value_mean"] = float(values.detach()[b.valid].mean()) if b.valid.any() else 0.0
        stats.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
        return terms, stats, logp_old

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        idx = self.rng.choice(len(self.rows), size=min(cfg.users_per_step, len(self.rows)),
                              replace=False)
        b = self.propose(idx)                                             # 1. propose
        t_decode = time.perf_counter() - t0
        rewards = self.rewards(b)                                         # 2. reward
        step = self.step_idx + 1
        check_finite(rewards[b.valid], "reward", step)
        adv = grpo_advantages(rewards, b.valid, cfg.adv_eps)              # 3. advantages
        check_finite(adv[b.valid], "advantage", step)
        sib = sibling_advantages(b.codes.clamp(min=0), rewards, b.valid, cfg.adv_eps)
        dense = dense_value_rewards(b.codes.clamp(min=0), b.target_codes, b.target_items, b.valid,
                                    level_weights=cfg.level_weights, prefix_emb=self.prefix_emb)
        value_only = self.step_idx < cfg.value_warmup_steps
        logp_old = None
        for _ in range(cfg.updates_per_batch):                            # 4-5. loss, update
            terms, stats, logp_old = self.losses(b, adv, sib, dense, logp_old)
            if value_only:                                                # value warm-up
                loss = terms["value"]
            else:                                    # L = L_GRPO + w_sib L_sib + w_V L_value
                loss = (terms["grpo"] + cfg.w_sib * terms.get("sib", 0.0)
                        + (cfg.w_value * terms["value"] if cfg.value_loss else 0.0))
            check_finite(loss, "loss", step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                list(self.policy.parameters()) + list(self.value_head.parameters()), cfg.grad_clip)
            self.opt.step()
        self.sched.step()
        self.step_idx += 1
        record = self._step_record(b, rewards, adv, sib, stats, float(grad_norm), t_decode,
                                   time.perf_counter() - t0)
        self.history.append(record)
        return record

    def _step_record(self, b, rewards, adv, sib, stats, grad_norm, t_decode, t_step) -> dict:
        B, G, L = b.codes.shape
        v = b.valid
        uniq_items = [len(set(b.items[i][v[i]].tolist())) / G for i in range(B)]
        uniq_codes = {f"unique_codes_l{l + 1}": float(np.mean([
            len(set(b.codes[i, v[i], l].tolist())) for i in range(B)])) for l in range(L)}
        hit = (b.items == b.target_items[:, None]) & v
        rv = rewards[v]
        return {"step": self.step_idx, "reward_mean": float(rv.mean()) if rv.numel() else 0.0,
                "reward_std": float(rv.std()) if rv.numel() > 1 else 0.0,
                "adv_std": float(adv[v].std()) if v.sum() > 1 else 0.0,
                "sib_adv_std": float(sib.adv[sib.mask].std()) if sib.mask.sum() > 1 else 0.0,
                "sibling_groups_with_signal": float(sib.n_groups_with_signal.float().mean()),
                "kl": stats.get("grpo_kl_mean", 0.0), "unique_items_per_G": float(np.mean(uniq_items)),
                **uniq_codes, "target_in_group": float(hit.any(1).float().mean()),
                "decode_forward_tokens_per_user": b.forward_tokens / B,
                "grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0],
                "decode_seconds": t_decode, "step_seconds": t_step, **stats}

    # ------------------------------------------------------------------ loop, checkpoints
    def train(self, log_path: str | os.PathLike | None = None,
              checkpoint_path: str | os.PathLike | None = None,
              progress: bool = True) -> list[dict]:
        """Steps until ``cfg.steps``: each step's record is appended to ``log_path`` (JSON lines)
        and the state is saved to ``checkpoint_path`` every ``cfg.checkpoint_every`` steps."""
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step_idx, desc="rl", disable=not progress)
        while self.step_idx < cfg.steps:
            rec = self.step()
            if log_path is not None:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
            if self.step_idx % cfg.log_every == 0 or self.step_idx == cfg.steps:
                value = f"{rec['loss_value']:.4f}" if "loss_value" in rec else "off"
                log.info("rl step %d: reward %.4f +- %.4f, adv std %.3f, sibling groups %.2f, "
                         "KL %.2e, value loss %s, unique items/G %.2f, target in group %.2f, "
                         "decode tokens/user %.1f, %.2fs/step", rec["step"], rec["reward_mean"],
                         rec["reward_std"], rec["adv_std"], rec["sibling_groups_with_signal"],
                         rec["kl"], value, rec["unique_items_per_G"],
                         rec["target_in_group"], rec["decode_forward_tokens_per_user"],
                         rec["step_seconds"])
            if checkpoint_path is not None and cfg.checkpoint_every \
                    and self.step_idx % cfg.checkpoint_every == 0:
                self.save(checkpoint_path)
            bar.update(1)
        bar.close()
        return self.history

    def save(self, path: str | os.PathLike) -> None:
        """Policy, value head, optimiser moments, step counter and RNGs: an ``rl_state``
        checkpoint (``vstar.core.checkpoint``) from which ``load`` continues bit-exactly."""
        checkpoint.save_rl_state(
            path, policy=self.policy.state_dict(), value_head=self.value_head.state_dict(),
            optimizer_state=self.opt.state_dict()["state"], sampler_rng=self.gen.get_state(),
            step=self.step_idx, numpy_rng=self.rng.bit_generator.state,
            lr_schedule=self.sched.state_dict(), config=asdict(self.cfg))

    def load(self, path: str | os.PathLike) -> None:
        """Resume from ``save``: weights, optimiser moments, step counter and sampling RNG."""
        state = checkpoint.load_rl_state(path)
        self.policy.load_state_dict(state.policy)
        self.value_head.load_state_dict(state.value_head)
        opt_state = self.opt.state_dict()
        for pid, tensors in state.optimizer_state.items():
            opt_state["state"].setdefault(pid, {}).update(tensors)
        self.opt.load_state_dict(opt_state)
        self.gen.set_state(state.sampler_rng)
        self.step_idx = state.step
        self.rng.bit_generator.state = state.numpy_rng
        self.sched.load_state_dict(state.lr_schedule)
        for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr
