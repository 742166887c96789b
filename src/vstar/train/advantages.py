"""Advantages and value targets for one RL step (docs/method.md sections 4 and 5). No model in here.

Conventions: a batch of B users, each with a group of G candidates in the decoder's order
(position 0 = best), each candidate a SID of L codes.

- ``cand_codes``  int64 [B, G, L]; rows of invalid candidates are ignored (may hold anything).
- ``rewards``     float [B, G]; entries of invalid candidates are ignored.
- ``valid``       bool  [B, G].

Groups are always formed **per user** (docs/method.md section 5, Decision): two users never share a group,
even when their candidates have identical codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vstar.core.errors import InputError
from vstar.train.rewards import prefix_match


def _check_group(cand_codes: torch.Tensor | None, rewards: torch.Tensor | None,
                 valid: torch.Tensor) -> None:
    if valid.dtype != torch.bool or valid.dim() != 2:
        raise InputError(f"expected a bool tensor [B, G], got {valid.dtype} "
                         f"{tuple(valid.shape)}", field="valid")
    if rewards is not None and rewards.shape != valid.shape:
        raise InputError(f"expected shape {tuple(valid.shape)}, got {tuple(rewards.shape)}",
                         field="rewards")
    if cand_codes is not None and (cand_codes.dim() != 3
                                   or cand_codes.shape[:2] != valid.shape):
        raise InputError(f"expected shape [{valid.shape[0]}, {valid.shape[1]}, L], "
                         f"got {tuple(cand_codes.shape)}", field="cand_codes")


# --------------------------------------------------------------------------- GRPO


def grpo_advantages(rewards: torch.Tensor, valid: torch.Tensor,
                    eps: float = 1e-4) -> torch.Tensor:
    """Sequence-level GRPO advantage per user: ``(R - mean_C R) / (std_C R + eps)``. ``[B, G]``.

    Mean and std run over the user's valid candidates C(x); std is the population std (divide by
    |C(x)|, not |C(x)| - 1). Invalid candidates get 0, and so does every candidate of a user whose
    rewards are all equal.
    """
    _check_group(None, rewards, valid)
    w = valid.to(rewards.dtype)                               # [B, G]
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = w.sum(1, keepdim=True).clamp_min(1.0)                 # [B, 1], |C(x)|
    mean = (r * w).sum(1, keepdim=True) / n                   # [B, 1]
    std = (((r - mean) ** 2 * w).sum(1, keepdim=True) / n).sqrt()
    adv = (r - mean) / (std + eps)
    return torch.where(valid, adv, torch.zeros_like(adv))


# --------------------------------------------------------------------------- Sibling-GRPO


@dataclass
class SiblingAdvantages:
    """Sibling advantages of every candidate at every level (Eq. 15-18).

    ``adv[b, g, l-1]`` = A(h, v) of the node (h, v) candidate g of user b passes through at depth l
    (0 where its parent h has fewer than 2 distinct children, and for invalid candidates).
    ``mask[b, g, l-1]`` is True for one representative candidate per distinct node (h, v) whose
    parent branches (|S(h)| >= 2): the first such candidate in decoder order, so that Eq. 19 counts
    each branching decision once. ``n_groups_with_signal[b]`` = number of parents h (all depths)
    with |S(h)| >= 2.
    """

    adv: torch.Tensor                   # float [B, G, L]
    mask: torch.Tensor                  # bool  [B, G, L]
    n_groups_with_signal: torch.Tensor  # int64 [B]


def sibling_advantages(cand_codes: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor,
                       eps: float = 1e-4, std_floor: float = 0.0) -> SiblingAdvantages:
    """Sibling-GRPO advantages (Eq. 15-18), per user, vectorised over users and candidates.

    For each depth l = 1..L and parent prefix h (the first l-1 codes):
    G(h) = the user's valid candidates starting with h (Eq. 15); S(h) = their distinct l-th codes
    (Eq. 16); Rbar(h, v) = mean reward of the candidates in G(h) whose l-th code is v (Eq. 17);
    A(h, v) = (Rbar(h, v) - mean_v' Rbar(h, v')) / (std_v' Rbar(h, v') + eps), each distinct
    sibling v' in S(h) counted once, population std (Eq. 18). Parents with |S(h)| < 2 give no
    signal (advantage 0, mask False). Nodes are found with ``torch.unique`` on (user, prefix)
    rows, one pass per level. ``std_floor`` > 0 divides by ``max(std, std_floor) + eps`` instead,
    so that sibling gaps much smaller than the floor give advantages near 0 (docs/method.md
    section 5).
    """
    _check_group(cand_codes, rewards, valid)
    if not std_floor >= 0:
        raise InputError(f"expected a floor >= 0, got {std_floor}", field="sibling_std_floor")
    B, G, L = cand_codes.shape
    device = cand_codes.device
    rewards = rewards.detach()
    adv = torch.zeros(B, G, L, dtype=rewards.dtype, device=device)
    mask = torch.zeros(B, G, L, dtype=torch.bool, device=device)
    n_groups_with_signal = torch.zeros(B, dtype=torch.long, device=device)

    live = valid.reshape(-1).nonzero().squeeze(1)             # [M], flat index b*G + g
    if live.numel() == 0:
        return SiblingAdvantages(adv, mask, n_groups_with_signal)
    user = live // G                                          # [M]
    pos = live % G                                            # [M], decoder position
    codes = cand_codes.reshape(B * G, L)[live].long()         # [M, L]
    r = rewards.reshape(B * G)[live]                          # [M]
    adv_flat, mask_flat = adv.view(B * G, L), mask.view(B * G, L)

    for l in range(1, L + 1):
        # Eq. 15: parent h = (user, first l-1 codes); node (h, v) = (user, first l codes)
        parent_rows, parent = torch.unique(torch.cat([user[:, None], codes[:, : l - 1]], 1),
                                           dim=0, return_inverse=True)     # parent: [M]
        node_rows, node = torch.unique(torch.cat([user[:, None], codes[:, :l]], 1),
                                       dim=0, return_inverse=True)         # node: [M]
        n_parents, n_nodes = parent_rows.shape[0], node_rows.shape[0]

        # Eq. 17: node score = mean reward of the candidates through (h, v)
        ones = torch.ones_like(r)
        node_count = torch.zeros(n_nodes, dtype=r.dtype, device=device).index_add_(0, node, ones)
        node_score = torch.zeros(n_nodes, dtype=r.dtype, device=device).index_add_(0, node, r)
        node_score = node_score / node_count                  # [n_nodes], Rbar(h, v)

        # Eq. 16: each node counted once among its parent's distinct children S(h)
        node_parent = torch.zeros(n_nodes, dtype=torch.long, device=device)
        node_parent.scatter_(0, node, parent)                 # [n_nodes]
        n_children = torch.zeros(n_parents, dtype=r.dtype, device=device)
        n_children.index_add_(0, node_parent, torch.ones_like(node_score))   # |S(h)|
        sib_mean = torch.zeros_like(n_children).index_add_(0, node_parent, node_score)
        sib_mean = sib_mean / n_children                      # [n_parents]
        dev = node_score - sib_mean[node_parent]              # [n_nodes]
        sib_std = (torch.zeros_like(n_children).index_add_(0, node_parent, dev ** 2)
                   / n_children).sqrt()                       # population std over siblings

        # Eq. 18: sibling advantage; no signal where the parent has a single child
        branching = n_children[node_parent] >= 2              # [n_nodes]
        scale = sib_std.clamp_min(std_floor)[node_parent] + eps
        node_adv = torch.where(branching, dev / scale,
                               torch.zeros_like(dev))

        # one representative per node: its first candidate in decoder order
        first_pos = torch.full((n_nodes,), G, dtype=torch.long, device=device)
        first_pos.scatter_reduce_(0, node, pos, reduce="amin")
        representative = pos == first_pos[node]               # [M]

        adv_flat[live, l - 1] = node_adv[node]
        mask_flat[live, l - 1] = representative & branching[node]
        parent_user = parent_rows[:, 0]                       # [n_parents]
        n_groups_with_signal += torch.bincount(parent_user[n_children >= 2], minlength=B)

    return SiblingAdvantages(adv, mask, n_groups_with_signal)


def sibling_mass_on_target_path(sib: SiblingAdvantages, cand_codes: torch.Tensor,
                                 target_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sibling-advantage mass ``sum |A(h, v)|`` per user, in all and at parents h on the target's
    path (h = y*<l; the root always is). Each branching decision counts once (``sib.mask``).
    Returns (total [B], on_path [B]); on_path / total is the share logged by the trainer.
    """
    B, G, L = cand_codes.shape
    on_path = prefix_match(cand_codes, target_codes).bool()          # y<=l == y*<=l, [B, G, L]
    parent_on_path = torch.cat([torch.ones_like(on_path[..., :1]), on_path[..., :-1]], -1)
    mass = (sib.adv.abs() * sib.mask).to(torch.float32)              # [B, G, L]
    return mass.sum((1, 2)), (mass * parent_on_path).sum((1, 2))


# --------------------------------------------------------------------------- value learning


def default_level_weights(n_levels: int) -> list[float]:
    """Per-level dense-reward weights w_l (docs/method.md section 4).

    L=3: the paper's (0.3, 0.5, 1.0). Other L: linearly spaced from 0.3 to 1.0 (L=1: (1.0,)),
    so the deepest, most specific level always weighs 1.0 and the first 0.3, as in the paper.
    """
    if n_levels < 1:
        raise InputError(f"expected at least one SID level, got {n_levels}", field="level_weights")
    if n_levels == 3:
        return [0.3, 0.5, 1.0]
    if n_levels == 1:
        return [1.0]
    return [round(float(w), 10) for w in np.linspace(0.3, 1.0, n_levels)]


def _prefix_keys(prefix: torch.Tensor, radix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed-radix int64 key of each prefix ``[..., l]`` and whether it fits the radix ``[l]``."""
    inside = ((prefix >= 0) & (prefix < radix)).all(-1)      # [...]
    key = torch.zeros(prefix.shape[:-1], dtype=torch.long, device=prefix.device)
    for i in range(prefix.shape[-1]):
        key = key * radix[i] + prefix[..., i].clamp(0, int(radix[i]) - 1)
    return key, inside


class PrefixEmbeddings:
    """e(y<=l): an embedding for every SID prefix of the catalogue (docs/method.md section 4).

    Built once from the catalogue's ``codes`` [N, L] and ``item_emb`` [N, D]; calling it on a
    batch of candidate SIDs ``[..., L]`` returns ``[..., L, D]``, the embedding of the prefix
    y<=l of each candidate at each depth l = 1..L.

    mode ``"bucket_mean"`` (default, the paper's description): the mean embedding of the catalogue
    items under the prefix. mode ``"single_item"`` (the authors' released code): the candidate's
    own item embedding at every depth (the item whose full SID the candidate is; the mean over the
    colliding items if SIDs collide). A prefix that is not in the catalogue gets the zero vector
    (cosine 0 with anything). Lookup is vectorised: prefixes become int64 mixed-radix keys and are
    found by ``torch.searchsorted`` in a sorted table per depth.
    """

    def __init__(self, codes: torch.Tensor | np.ndarray, item_emb: torch.Tensor,
                 mode: str = "bucket_mean"):
        if mode not in ("bucket_mean", "single_item"):
            raise InputError(f"expected 'bucket_mean' or 'single_item', got {mode!r}", field="mode")
        codes = torch.as_tensor(codes, dtype=torch.long, device=item_emb.device)
        if codes.dim() != 2 or item_emb.dim() != 2 or codes.shape[0] != item_emb.shape[0]:
            raise InputError(f"expected codes [N, L] and item_emb [N, D] with the same N, got "
                             f"{tuple(codes.shape)} and {tuple(item_emb.shape)}", field="codes")
        if codes.numel() == 0 or bool((codes < 0).any()):
            raise InputError("expected a non-empty catalogue with codes >= 0", field="codes")
        self.mode = mode
        self.item_emb = item_emb                              # [N, D]
        self.n_levels = codes.shape[1]
        self.radix = codes.max(0).values + 1                  # [L], codes per level seen
        if float(torch.log2(self.radix.double()).sum()) >= 62:
            raise InputError("SID prefixes too large for int64 keys", field="codes")
        self.keys: list[torch.Tensor] = []                    # [L] x sorted [P_l] int64
        self.means: list[torch.Tensor] = []                   # [L] x [P_l, D]
        emb = item_emb.float()
        for l in range(1, self.n_levels + 1):
            key, _ = _prefix_keys(codes[:, :l], self.radix[:l])
            uniq, inverse = torch.unique(key, return_inverse=True)   # sorted
            sums = torch.zeros(len(uniq), emb.shape[1], device=emb.device)
            sums.index_add_(0, inverse, emb)                  # [P_l, D]
            count = torch.bincount(inverse, minlength=len(uniq)).clamp_min(1)
            self.keys.append(uniq)
            self.means.append(sums / count.unsqueeze(1).to(sums.dtype))

    def to(self, device: torch.device | str) -> "PrefixEmbeddings":
        """Move the tables to ``device`` (in place); returns self."""
        self.item_emb, self.radix = self.item_emb.to(device), self.radix.to(device)
        self.keys = [k.to(device) for k in self.keys]
        self.means = [m.to(device) for m in self.means]
        return self

    def __call__(self, prefix_codes: torch.Tensor) -> torch.Tensor:
        """Embeddings of the prefixes y<=1 .. y<=L of each SID: ``[..., L]`` -> ``[..., L, D]``."""
        if prefix_codes.shape[-1] != self.n_levels:
            raise InputError(f"expected {self.n_levels} codes per SID, got "
                             f"{prefix_codes.shape[-1]}", field="cand_codes")
        prefix_codes = prefix_codes.long().to(self.radix.device)
        out = []
        for l in range(1, self.n_levels + 1):
            depth = self.n_levels if self.mode == "single_item" else l
            key, inside = _prefix_keys(prefix_codes[..., :depth], self.radix[:depth])
            table = self.keys[depth - 1]
            at = torch.searchsorted(table, key).clamp_max(len(table) - 1)
            found = inside & (table[at] == key)               # [...]
            e = self.means[depth - 1][at]                     # [..., D]
            out.append(torch.where(found.unsqueeze(-1), e, torch.zeros_like(e)))
        return torch.stack(out, dim=-2)                       # [..., L, D]


def code_overlap_similarity(cand_codes: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
    """Stand-in for cos(e(y<=l), e(y*)) on ID-only datasets (no item text). ``[B, G, L]``.

    cos_l := (length of the common prefix of y<=l and y*<=l) / l, i.e. the fraction of the first l
    codes that lie on the target's path in the SID trie. Codes after the first mismatch do not
    count (a code under a different parent names a different region for hierarchical tokenizers).
    """
    same = prefix_match(cand_codes, target_codes)                           # [B, G, L]
    depth = torch.arange(1, cand_codes.shape[-1] + 1, device=cand_codes.device)
    return same.cumsum(-1).float() / depth                    # [B, G, L]


def dense_value_rewards(cand_codes: torch.Tensor, target_codes: torch.Tensor,
                        target_items: torch.Tensor, valid: torch.Tensor, *,
                        level_weights: Sequence[float] | None = None,
                        prefix_emb: PrefixEmbeddings | Callable[[torch.Tensor], torch.Tensor]
                        | torch.Tensor | None = None,
                        item_emb: torch.Tensor | None = None) -> torch.Tensor:
    """Dense per-level reward r_l used only to train the value head (docs/method.md section 4). [B, G, L].

    r_l = w_l if the candidate's prefix y<=l equals the target's prefix y*<=l,
    else  -w_l * (1 - cos(e(y<=l), e(y*))), with e(y*) = the target item's embedding.

    ``level_weights``: w_1..w_L (default :func:`default_level_weights`). ``prefix_emb``: a
    :class:`PrefixEmbeddings`, any callable ``cand_codes [B, G, L] -> [B, G, L, D]``, or the
    tensor ``[B, G, L, D]`` itself. ``item_emb`` [N, D] gives e(y*) (taken from ``prefix_emb``
    when it is a :class:`PrefixEmbeddings`). Without ``prefix_emb`` (ID-only data) the cosine is
    :func:`code_overlap_similarity`. Invalid candidates get 0 at every level.
    """
    _check_group(cand_codes, None, valid)
    B, G, L = cand_codes.shape
    if tuple(target_codes.shape) != (B, L):
        raise InputError(f"expected shape [{B}, {L}], got {tuple(target_codes.shape)}",
                         field="target_codes")
    weights = default_level_weights(L) if level_weights is None else list(level_weights)
    if len(weights) != L:
        raise InputError(f"expected {L} weights (one per SID level), got {len(weights)}",
                         field="level_weights")

    if prefix_emb is None:
        if item_emb is not None:
            raise InputError("item_emb needs prefix_emb too: pass "
                             "PrefixEmbeddings(catalogue_codes, item_emb)", field="prefix_emb")
        cos = code_overlap_similarity(cand_codes, target_codes)            # [B, G, L]
    else:
        e_prefix = prefix_emb if isinstance(prefix_emb, torch.Tensor) else prefix_emb(cand_codes)
        if item_emb is None and isinstance(prefix_emb, PrefixEmbeddings):
            item_emb = prefix_emb.item_emb
        if item_emb is None:
            raise InputError("the target embedding e(y*) needs item_emb [N, D]", field="item_emb")
        if tuple(e_prefix.shape[:3]) != (B, G, L):
            raise InputError(f"expected prefix embeddings [{B}, {G}, {L}, D], got "
                             f"{tuple(e_prefix.shape)}", field="prefix_emb")
        e_target = item_emb.float()[target_items.to(item_emb.device)].to(e_prefix.device)
        cos = (F.normalize(e_prefix.float(), dim=-1)
               * F.normalize(e_target, dim=-1)[:, None, None, :]).sum(-1)   # [B, G, L]

    w = torch.tensor(weights, dtype=torch.float32, device=cand_codes.device)    # [L]
    on_path = prefix_match(cand_codes, target_codes).bool()           # y<=l == y*<=l
    cos = cos.to(w.device)
    r = torch.where(on_path, w.expand_as(cos), -w * (1.0 - cos))   # docs/method.md section 4
    return torch.where(valid.unsqueeze(-1), r, torch.zeros_like(r))


def td_targets(values: torch.Tensor, dense_rewards: torch.Tensor,
               gamma: float = 0.99) -> torch.Tensor:
    """Temporal-difference targets ``r_l + gamma * sg(V(s_{l+1}))``, l = 1..L. ``[B, G, L]``.

    Which state each value sits on: ``values[..., l-1]`` = V(s_l), read at the hidden state of the
    LAST token of s_l = (history, y<l), i.e. the state before code l is chosen (s_1 = the history
    only, read at its last token). The reward r_l (``dense_rewards[..., l-1]``) is earned by the
    choice of code l, which moves s_l to s_{l+1}. s_{L+1} (the complete item) is terminal:
    V(s_{L+1}) := 0, so target_L = r_L. ``values`` may also be ``[B, G, L+1]`` (a value read after
    the last code too); that last entry is ignored, as the state is terminal. The targets carry no
    gradient (stop-gradient).
    """
    L = dense_rewards.shape[-1]
    if values.shape[:-1] != dense_rewards.shape[:-1] or values.shape[-1] not in (L, L + 1):
        raise InputError(f"expected values [..., {L}] or [..., {L + 1}] matching dense rewards "
                         f"{tuple(dense_rewards.shape)}, got {tuple(values.shape)}", field="values")
    v = values[..., :L].detach()                               # [B, G, L], V(s_1..s_L)
    v_next = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], -1)  # V(s_2..s_L), V(s_{L+1})=0
    return dense_rewards + gamma * v_next


def value_loss(values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error ``(V(s_l) - target_l)^2`` over the masked entries. Scalar.

    ``values`` [B, G, L] (or [B, G, L+1], the last entry ignored), ``targets`` [B, G, L] (from
    :func:`td_targets`, treated as constants), ``mask`` bool [B, G] (valid candidates) or
    [B, G, L]. Returns 0 (still attached to ``values``) when nothing is masked in.
    """
    L = targets.shape[-1]
    v = values[..., :L]
    if v.shape != targets.shape:
        raise InputError(f"expected values matching targets {tuple(targets.shape)}, got "
                         f"{tuple(values.shape)}", field="values")
    if mask.dim() == targets.dim() - 1:
        mask = mask.unsqueeze(-1).expand_as(targets)
    if mask.shape != targets.shape:
        raise InputError(f"expected mask [B, G] or {tuple(targets.shape)}, got "
                         f"{tuple(mask.shape)}", field="mask")
    err = torch.where(mask, v - targets.detach(), torch.zeros_like(v))   # TD error, 0 off-mask
    return (err ** 2).sum() / mask.sum().clamp_min(1)


def return_to_go(dense_rewards: torch.Tensor, gamma: float = 0.99) -> torch.Tensor:
    """Dense return from each state: ``R_l = sum_{k >= l} gamma^(k-l) r_k``. ``[..., L]``.

    What V(s_l) estimates along a candidate (the Monte-Carlo counterpart of :func:`td_targets`).
    """
    out = torch.zeros_like(dense_rewards)
    acc = torch.zeros_like(dense_rewards[..., 0])
    for l in range(dense_rewards.shape[-1] - 1, -1, -1):
        acc = dense_rewards[..., l] + gamma * acc
        out[..., l] = acc
    return out


def within_user_correlation(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over users and levels of the Pearson correlation of x and y over a user's valid
    candidates (x, y [B, G, L]; valid [B, G]). (user, level) pairs where x or y is constant, or
    with fewer than 2 valid candidates, are left out; NaN when none is left."""
    w = valid.unsqueeze(-1).expand_as(x).to(torch.float64)           # [B, G, L]
    x, y = x.detach().double(), y.detach().double()
    n = w.sum(1)                                                      # [B, L]
    mx = (x * w).sum(1) / n.clamp_min(1)
    my = (y * w).sum(1) / n.clamp_min(1)
    dx, dy = (x - mx[:, None]) * w, (y - my[:, None]) * w
    cov, vx, vy = (dx * dy).sum(1), (dx * dx).sum(1), (dy * dy).sum(1)
    ok = (n >= 2) & (vx > 1e-12) & (vy > 1e-12)
    if not bool(ok.any()):
        return float("nan")
    return float((cov[ok] / (vx[ok] * vy[ok]).sqrt()).mean())


def rank_percentile(scores: torch.Tensor, allowed: torch.Tensor,
                    target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where ``scores`` [B, K] rank the ``target`` column [B] among the ``allowed`` [B, K] ones.

    Returns (rank [B] (1 = best; ties share the mean rank), percentile [B] = (rank - 1) /
    (n - 1), 0 = best, 1 = worst, 0.5 = chance; ok [B]: the target is allowed and n >= 2).
    """
    s = scores.detach().double().masked_fill(~allowed, float("-inf"))
    t = s.gather(1, target[:, None])                                  # [B, 1]
    better = ((s > t) & allowed).sum(1).double()
    ties = ((s == t) & allowed).sum(1).double() - 1                   # others tied with it
    rank = 1 + better + ties / 2
    n = allowed.sum(1).double()
    ok = allowed.gather(1, target[:, None]).squeeze(1) & (n >= 2)
    pct = (rank - 1) / (n - 1).clamp_min(1)
    return rank, pct, ok


def tree_value_paths(depth: torch.Tensor, node_codes: torch.Tensor, evaluated: torch.Tensor,
                     parent: torch.Tensor, cand_codes: torch.Tensor, valid: torch.Tensor,
                     catalogue_codes: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Extra paths that put a TD target on every node a tree search evaluated (docs/method.md
    section 4, "Value targets on the search tree").

    depth, evaluated, parent [B, M] and node_codes [B, M, L] describe each user's tree (node 0 the
    root, depth d = the prefix length; ``vstar.decode.ved.VEDTree``). A node's state already
    gets a target from any path through it: a valid candidate whose first d codes are the node's
    prefix, or the path of an evaluated child. Every other evaluated node (a leaf of the search
    that no candidate passes through) gets one path: its prefix completed by a catalogue item
    drawn uniformly among the items under that prefix (``catalogue_codes`` [N, L]).

    Returns (codes [B, P, L] (-1 rows are padding), valid [B, P]); P = the most paths of a user.
    """
    B, M = depth.shape
    L = node_codes.shape[-1]
    dev = node_codes.device
    node = evaluated & (depth >= 1)                                   # [B, M]
    # covered through an evaluated child
    has_child = torch.zeros(B, M, dtype=torch.long, device=dev)
    has_child.scatter_add_(1, parent.clamp(min=0), (node & (parent >= 0)).long())
    # covered by a candidate: its first d codes equal the node's prefix
    d_idx = (depth.clamp(min=1) - 1)                                  # [B, M]
    same = (node_codes[:, :, None, :] == cand_codes[:, None, :, :]).long().cumprod(-1)  # [B,M,G,L]
    same = same.gather(3, d_idx[:, :, None, None].expand(B, M, same.shape[2], 1)).squeeze(3)
    by_cand = (same.bool() & valid[:, None, :]).any(2)               # [B, M]
    need = node & (has_child == 0) & ~by_cand                         # [B, M]
    b, m = need.nonzero(as_tuple=True)
    if b.numel() == 0:
        return (torch.full((B, 0, L), -1, dtype=torch.long, device=dev),
                torch.zeros(B, 0, dtype=torch.bool, device=dev))
    cat = catalogue_codes.to(dev).long()                              # [N, L]
    prefix = node_codes[b, m]                                         # [n, L]
    d = depth[b, m]                                                   # [n]
    match = (cat[None] == prefix[:, None]).long().cumprod(-1)         # [n, N, L]
    under = match.gather(2, (d - 1)[:, None, None].expand(-1, cat.shape[0], 1)).squeeze(2)
    if bool((under.sum(1) == 0).any()):
        raise InputError("a tree node's prefix has no catalogue item under it",
                         field="catalogue_codes")
    pick = torch.multinomial(under.float(), 1, generator=generator).squeeze(1)   # [n]
    counts = torch.bincount(b, minlength=B)
    P = int(counts.max())
    slot = torch.arange(b.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[b]
    codes = torch.full((B, P, L), -1, dtype=torch.long, device=dev)
    codes[b, slot] = cat[pick]
    ok = torch.zeros(B, P, dtype=torch.bool, device=dev)
    ok[b, slot] = True
    return codes, ok


# --------------------------------------------------------------------------- other RL methods
# docs/method.md "Other RL methods": DAPO's group filter, a TreeRL-style tree advantage and
# HEPO's process rewards + GAE (GPR). Each returns plain tensors; the trainer picks one with
# ``rl.advantage`` / ``rl.filter_zero_variance``.


def zero_variance_keep(rewards: torch.Tensor, valid: torch.Tensor,
                       tol: float = 0.0) -> torch.Tensor:
    """DAPO's dynamic filter: True for the users whose valid rewards are not all equal. ``[B]``.

    A group whose rewards tie (max - min <= ``tol``; also a group of 0 or 1 valid candidates)
    has a zero GRPO advantage everywhere: it only dilutes the mean over users and adds its KL
    term, so DAPO leaves it out of the policy loss.
    """
    _check_group(None, rewards, valid)
    hi = torch.where(valid, rewards, torch.full_like(rewards, -torch.inf)).amax(1)   # [B]
    lo = torch.where(valid, rewards, torch.full_like(rewards, torch.inf)).amin(1)
    return (valid.sum(1) >= 2) & (hi - lo > tol)


def tree_advantages(cand_codes: torch.Tensor, rewards: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """TreeRL-style token advantage on the prefix tree of each user's group. ``[B, G, L]``.

    Node n = (user, y<=l); V(n) = mean reward of the user's valid candidates below n (the leaves
    of n); the root is the whole group. The token of candidate y at depth l gets
    ``A_l = [(V(n_l) - V(n_{l-1})) + (V(n_l) - V(root))] / sqrt(|leaves(n_l)|)``, n_0 = root:
    the local gain of the choice over its parent plus its global gain over the group, divided
    by the square root of the candidates that share the node (each of them repeats the token).
    No std normalisation. Invalid candidates get 0.
    """
    _check_group(cand_codes, rewards, valid)
    B, G, L = cand_codes.shape
    rewards = rewards.detach()
    adv = torch.zeros(B, G, L, dtype=rewards.dtype, device=rewards.device)
    live = valid.reshape(-1).nonzero().squeeze(1)                     # [M], flat b*G + g
    if live.numel() == 0:
        return adv
    user = live // G
    codes = cand_codes.reshape(B * G, L)[live].long()                 # [M, L]
    r = rewards.reshape(B * G)[live]                                  # [M]
    ones = torch.ones_like(r)

    def node_mean(depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """V and |leaves| of the depth-``depth`` node of every live candidate ([M] each)."""
        _, node = torch.unique(torch.cat([user[:, None], codes[:, :depth]], 1), dim=0,
                               return_inverse=True)
        n = torch.zeros(int(node.max()) + 1, dtype=r.dtype, device=r.device)
        count = n.index_add(0, node, ones)
        total = n.index_add(0, node, r)
        return (total / count)[node], count[node]

    v_root, _ = node_mean(0)
    v_parent = v_root
    flat = adv.view(B * G, L)
    for l in range(1, L + 1):
        v_node, n_leaves = node_mean(l)
        flat[live, l - 1] = ((v_node - v_parent) + (v_node - v_root)) / n_leaves.sqrt()
        v_parent = v_node
    return adv


def hepo_process_rewards(cand_codes: torch.Tensor, valid: torch.Tensor,
                         hist_codes: torch.Tensor, hist_valid: torch.Tensor,
                         allowed: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """HEPO's process reward per SID level (GPR; docs/method.md "Other RL methods"). ``[B, G, L]``.

    ``hist_codes`` [B, H, L] / ``hist_valid`` [B, H]: the SIDs of the user's history items;
    ``allowed`` bool [B, G, L, K]: the trie-valid codes at level l under the candidate's prefix
    y<l (K = the largest codebook). P_l(t) = share of the history items whose first l codes are
    (y<l, t); ``Delta_l = P_l(y_l) - mean_{t allowed} P_l(t)``; ``r_l = alpha * max(0,
    Delta_l)`` for l < L. The last level's entry is 0 (its reward is the terminal reward R,
    added by :func:`hepo_advantages`), and so is every entry of an invalid candidate or of a
    user without history.
    """
    _check_group(cand_codes, None, valid)
    B, G, L = cand_codes.shape
    K = allowed.shape[-1]
    if allowed.shape[:3] != (B, G, L) or allowed.dtype != torch.bool:
        raise InputError(f"expected a bool tensor [{B}, {G}, {L}, K], got {allowed.dtype} "
                         f"{tuple(allowed.shape)}", field="allowed")
    if hist_codes.dim() != 3 or hist_codes.shape[0] != B or hist_codes.shape[2] != L \
            or hist_valid.shape != hist_codes.shape[:2]:
        raise InputError(f"expected hist_codes [{B}, H, {L}] and hist_valid [{B}, H], got "
                         f"{tuple(hist_codes.shape)} and {tuple(hist_valid.shape)}",
                         field="hist_codes")
    codes = cand_codes.clamp(min=0).long()
    hist = hist_codes.clamp(min=0).long()
    n_hist = hist_valid.sum(1).to(torch.float32).clamp_min(1.0)          # [B]
    # same[b, g, h, l] = the history item h shares the candidate's first l codes (l = 0..L-1)
    eq = (codes[:, :, None, :] == hist[:, None, :, :]).long().cumprod(-1)   # [B, G, H, L]
    same_before = torch.cat([torch.ones_like(eq[..., :1]), eq[..., :-1]], -1)  # y<l matches
    same_before = same_before * hist_valid[:, None, :, None].long()
    onehot = F.one_hot(hist, K).to(torch.float32)                         # [B, H, L, K]
    counts = torch.einsum("bghl,bhlk->bglk", same_before.to(torch.float32), onehot)
    share = counts / n_hist[:, None, None, None]                          # P_l(t), [B, G, L, K]
    chosen = share.gather(3, codes[..., None]).squeeze(3)                 # P_l(y_l)
    n_allowed = allowed.sum(-1).clamp_min(1).to(share.dtype)
    mean_sib = (share * allowed).sum(-1) / n_allowed                      # over trie-valid t
    r = alpha * (chosen - mean_sib).clamp_min(0.0)                        # [B, G, L]
    r[..., L - 1] = 0.0
    has_hist = hist_valid.any(1)[:, None, None]
    return torch.where(valid[..., None] & has_hist, r, torch.zeros_like(r))


def gae_advantages(level_rewards: torch.Tensor, values: torch.Tensor, gamma: float = 0.99,
                   lam: float = 0.95) -> torch.Tensor:
    """GAE over SID levels: ``delta_l = r_l + gamma V(s_{l+1}) - V(s_l)`` with V(s_{L+1}) := 0,
    ``A_l = sum_{k >= 0} (gamma lam)^k delta_{l+k}``. ``[..., L]`` (values: V(s_1..s_L))."""
    if values.shape != level_rewards.shape:
        raise InputError(f"expected values of shape {tuple(level_rewards.shape)}, got "
                         f"{tuple(values.shape)}", field="values")
    v = values.detach()
    v_next = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], -1)
    delta = level_rewards + gamma * v_next - v
    adv = torch.zeros_like(delta)
    acc = torch.zeros_like(delta[..., 0])
    for l in range(delta.shape[-1] - 1, -1, -1):
        acc = delta[..., l] + gamma * lam * acc
        adv[..., l] = acc
    return adv


def hepo_advantages(process: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor,
                    valid: torch.Tensor, gamma: float = 0.99, lam: float = 0.95,
                    eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """HEPO's per-level advantages and the per-level rewards the value head is trained on.

    Level rewards: r_l = ``process[..., l]`` for l < L, r_L = R (the step's reward). Levels
    l < L: GAE with the value head (:func:`gae_advantages`); the last level: the group z-score
    of R (:func:`grpo_advantages`). Returns (adv [B, G, L], level_rewards [B, G, L]); invalid
    candidates get 0 in both.
    """
    _check_group(process, rewards, valid)
    L = process.shape[-1]
    level_rewards = process.clone()
    level_rewards[..., L - 1] = torch.where(valid, rewards.detach(), torch.zeros_like(rewards))
    adv = gae_advantages(level_rewards, values, gamma, lam)
    adv[..., L - 1] = grpo_advantages(rewards.detach(), valid, eps)
    zero = torch.zeros_like(adv)
    return (torch.where(valid[..., None], adv, zero),
            torch.where(valid[..., None], level_rewards, zero))
