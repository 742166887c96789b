"""Rewards for a group of candidate items (docs/method.md section 6).

A reward function maps one :class:`RewardContext` (a batch of B users, each with a group of G
candidates in the decoder's order, position 0 = best) to a reward per candidate, ``[B, G]``:

    def my_reward(ctx: RewardContext) -> torch.Tensor:  # [B, G]
        ...

Any function with that signature can be passed to :func:`get_reward` (or to the trainer), so a new
reward is one function; :data:`REWARDS` names the built-in ones.

Conventions shared by every built-in reward:

- ``cand_items[b, g] == -1`` marks an empty slot (padding); such slots must have ``valid`` False.
- Candidates with ``valid`` False get reward 0 from the built-ins; :func:`get_reward` replaces it
  by ``invalid_penalty`` (default 0) for every reward, built-in or user-supplied.
- A hit is decided by item index, never by SID string (colliding SIDs would count a hit for the
  wrong item; see docs/protocol.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from vstar.core.errors import InputError

RewardFn = Callable[["RewardContext"], torch.Tensor]


@dataclass
class RewardContext:
    """Everything a reward function may look at for one batch of candidate groups."""

    cand_items: torch.Tensor             # int64 [B, G], catalogue item index, -1 = no candidate
    cand_codes: torch.Tensor             # int64 [B, G, L], SID codes (rows of -1 items ignored)
    valid: torch.Tensor                  # bool  [B, G]
    target_items: torch.Tensor           # int64 [B]
    target_codes: torch.Tensor           # int64 [B, L]
    item_emb: torch.Tensor | None = None     # float [N, D], L2-normalised item embeddings
    item_values: torch.Tensor | None = None  # float [N], business value of each item

    def __post_init__(self) -> None:
        if self.cand_items.dim() != 2:
            raise InputError(f"expected shape [B, G], got {tuple(self.cand_items.shape)}",
                             field="cand_items")
        B, G = self.cand_items.shape
        if self.cand_codes.dim() != 3 or tuple(self.cand_codes.shape[:2]) != (B, G):
            raise InputError(f"expected shape [{B}, {G}, L], got {tuple(self.cand_codes.shape)}",
                             field="cand_codes")
        L = self.cand_codes.shape[2]
        if self.valid.dtype != torch.bool or tuple(self.valid.shape) != (B, G):
            raise InputError(f"expected a bool tensor [{B}, {G}], got {self.valid.dtype} "
                             f"{tuple(self.valid.shape)}", field="valid")
        if tuple(self.target_items.shape) != (B,):
            raise InputError(f"expected shape [{B}], got {tuple(self.target_items.shape)}",
                             field="target_items")
        if tuple(self.target_codes.shape) != (B, L):
            raise InputError(f"expected shape [{B}, {L}], got {tuple(self.target_codes.shape)}",
                             field="target_codes")
        if bool((self.valid & (self.cand_items < 0)).any()):
            raise InputError("a candidate with item -1 (empty slot) is marked valid",
                             field="valid")
        for name in ("item_emb", "item_values"):
            table = getattr(self, name)
            if table is None:
                continue
            n_items = table.shape[0]
            too_big = (self.cand_items >= n_items) | (self.target_items >= n_items).unsqueeze(1)
            if bool((too_big & self.valid).any()) or bool((self.target_items < 0).any()):
                raise InputError(f"item index outside 0..{n_items - 1} (the rows of {name})",
                                 field=name)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.cand_items.shape)  # (B, G)

    def hits(self) -> torch.Tensor:
        """bool [B, G]: the valid candidate is the target item."""
        return self.valid & (self.cand_items == self.target_items.unsqueeze(1))


def rule_reward(ctx: RewardContext) -> torch.Tensor:
    """Rule reward: 1 if the candidate is the target item, else 0. Returns ``[B, G]``."""
    return ctx.hits().float()


def rank_aware_penalty(ctx: RewardContext) -> torch.Tensor:
    """Rank-aware penalty (MiniOneRec/ReRe, docs/method.md section 6). Returns ``[B, G]`` (<= 0).

    When the target is in the user's group, the wrong candidate at position k (0-based, decoder
    order) gets ``-(1/log2(k+2)) / sum_j 1/log2(j+2)``, where **j ranges over all valid positions
    of the group** (the target's position included; for a full group of G valid candidates this is
    j = 0..G-1, exactly MiniOneRec's normalisation). The target itself gets 0, invalid slots get 0.
    When the target is not in the group every candidate gets 0: there is nothing to rank against.
    """
    B, G = ctx.shape
    hit = ctx.hits()                                          # [B, G]
    k = torch.arange(G, device=ctx.cand_items.device, dtype=torch.float32)
    discount = 1.0 / torch.log2(k + 2.0)                      # [G], 1/log2(k+2)
    norm = (discount * ctx.valid).sum(1, keepdim=True)        # [B, 1], sum_j over valid j
    penalty = -discount / norm.clamp_min(1e-12)               # [B, G]
    target_in_group = hit.any(1, keepdim=True)                # [B, 1]
    wrong = ctx.valid & ~hit & target_in_group
    return torch.where(wrong, penalty, torch.zeros_like(penalty))


def rule_plus_rank_penalty(ctx: RewardContext) -> torch.Tensor:
    """The default reward: :func:`rule_reward` + :func:`rank_aware_penalty`. Returns ``[B, G]``."""
    return rule_reward(ctx) + rank_aware_penalty(ctx)


def prefix_match(cand_codes: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, G, L]``: 1 at level l if the candidate's first l codes equal the target's."""
    return (cand_codes == target_codes.unsqueeze(1)).long().cumprod(-1)


def common_prefix_length(cand_codes: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
    """Number of leading SID codes the candidate shares with the target, int64 ``[B, G]``."""
    return prefix_match(cand_codes, target_codes).sum(-1)


def prefix_partial_credit(weights: Sequence[float] = (1.0, 0.1, 0.01)) -> RewardFn:
    """Prefix partial credit: the reward depends on how deep the candidate's SID follows the target.

    ``weights`` run from the full match downwards: ``weights[0]`` for the target item itself,
    ``weights[1]`` when the longest common SID prefix has L-1 codes, ``weights[2]`` for L-2, ...;
    prefixes shorter than that (and no common code at all) get 0. With L=3 and the default
    (1.0, 0.1, 0.01): full / two-level / one-level match. Full credit needs the item itself, so a
    different item whose SID collides with the target's gets ``weights[1]``.
    """
    weights = [float(w) for w in weights]
    if not weights:
        raise InputError("expected at least one weight", field="weights")

    def reward(ctx: RewardContext) -> torch.Tensor:
        L = ctx.cand_codes.shape[2]
        prefix_len = common_prefix_length(ctx.cand_codes, ctx.target_codes).clamp_max(L - 1)
        prefix_len = torch.where(ctx.hits(), torch.full_like(prefix_len, L), prefix_len)
        table = (weights[:L] + [0.0] * (L + 1))[: L + 1]      # index = levels missed, 0..L
        table = torch.tensor(table, device=prefix_len.device)  # [L+1], table[L] = 0 (no prefix)
        r = table[L - prefix_len]                             # [B, G]
        return torch.where(ctx.valid, r, torch.zeros_like(r))

    reward.__name__ = "prefix_partial_credit"
    return reward


def semantic_similarity(ctx: RewardContext) -> torch.Tensor:
    """Cosine similarity between the candidate's and the target's item embedding. ``[B, G]``.

    Needs ``ctx.item_emb``; rows are re-normalised here, so unnormalised embeddings also work.
    The target itself gets 1, invalid slots 0.
    """
    if ctx.item_emb is None:
        raise InputError("the semantic_similarity reward needs item embeddings", field="item_emb")
    emb = F.normalize(ctx.item_emb.float(), dim=-1)            # [N, D]
    e_cand = emb[ctx.cand_items.clamp_min(0)]                 # [B, G, D]
    e_target = emb[ctx.target_items]                          # [B, D]
    cos = (e_cand * e_target.unsqueeze(1)).sum(-1)            # [B, G]
    return torch.where(ctx.valid, cos, torch.zeros_like(cos))


def item_value_reward(scale: float = 1.0) -> RewardFn:
    """Business reward ("hit times value", S-GRec/GPR setting): the value of a hit.

    reward = ``scale * item_values[target]`` if the candidate is the target item, else 0. The
    per-item value (price, margin, eCPM...) comes from ``ctx.item_values`` [N]. To combine it
    with another reward (e.g. ``rule_plus_rank_penalty``), add the two in a plain function.
    """
    scale = float(scale)

    def reward(ctx: RewardContext) -> torch.Tensor:
        if ctx.item_values is None:
            raise InputError("the item_value reward needs per-item values", field="item_values")
        value = ctx.item_values.float()[ctx.target_items]      # [B]
        return scale * ctx.hits().float() * value.unsqueeze(1)  # [B, G]

    reward.__name__ = "item_value_reward"
    return reward


# Built-in rewards by name (parametrised ones with their default parameters).
REWARDS: dict[str, RewardFn] = {
    "rule": rule_reward,
    "rank_penalty": rank_aware_penalty,
    "rule_plus_rank_penalty": rule_plus_rank_penalty,
    "prefix_partial_credit": prefix_partial_credit(),
    "semantic_similarity": semantic_similarity,
    "item_value": item_value_reward(),
    "hit_times_value": item_value_reward(),
}


def get_reward(reward: str | RewardFn, *, invalid_penalty: float = 0.0) -> RewardFn:
    """Resolve a reward by name (a key of :data:`REWARDS`) or take any ``fn(ctx) -> [B, G]``.

    The returned function checks the output shape and gives every candidate with ``valid`` False
    the reward ``invalid_penalty`` (default 0), whatever the wrapped function returned there.
    """
    if isinstance(reward, str):
        if reward not in REWARDS:
            raise InputError(f"unknown reward {reward!r}; expected one of {sorted(REWARDS)} "
                             "or a function fn(ctx) -> Tensor [B, G]", field="reward")
        fn = REWARDS[reward]
    elif callable(reward):
        fn = reward
    else:
        raise InputError(f"expected a reward name or a function, got {type(reward).__name__}",
                         field="reward")
    name = getattr(fn, "__name__", repr(fn))
    penalty = float(invalid_penalty)
    if not math.isfinite(penalty):
        raise InputError(f"expected a finite number, got {invalid_penalty!r}",
                         field="invalid_penalty")

    def wrapped(ctx: RewardContext) -> torch.Tensor:
        r = fn(ctx)
        if not isinstance(r, torch.Tensor) or tuple(r.shape) != ctx.shape:
            got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise InputError(f"reward {name!r} must return a tensor of shape {ctx.shape}, "
                             f"got {got}", field="reward")
        r = r.float()
        return torch.where(ctx.valid, r, torch.full_like(r, penalty))

    wrapped.__name__ = name
    return wrapped
