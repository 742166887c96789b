"""Value-Guided Efficient Decoding (VED), docs/method.md section 3: budgeted tree search over the SID trie.

VED proposes candidate items (the RL group C(x), or a top-K list at inference) by growing a tree
of SID prefixes per user, spending a fixed budget of backbone forward tokens where the value head
and the policy's uncertainty say it pays. Each decision the paper leaves open is listed here.

**Tree and states.** A node of depth d (0 <= d <= L-1) is a trie prefix c_<=d; it is the state
s_{d+1} = (x, c_<=d) of ``vstar.model.value``. A node is *evaluated* once the backbone has read its
last token: that gives its hidden state (so V(s) = value_fn(hidden)), its next-code distribution
renormalised over the trie-valid children (so the entropy H(s) over those children), and its own
per-layer key/value, kept in a per-node pool. The root (d = 0) is evaluated by the history prefill.
Children of an evaluated depth-(L-1) node are complete items: they need no further forward token
(their log-probs are already known), so depth-(L-1) nodes are never expanded. Priority Eq. 11:
``G(s) = V(s) + lam * H(s)``.

**Budget (Eq. 10).** Every token fed to the backbone after the history prefill costs 1, and
every node of depth 1..L-1 costs exactly one token (its last code). The per-user budget is
``floor(budget_multiplier * (budget or (L-1) * n_candidates))``, i.e. by default the cost of the
beam search of width n_candidates it replaces. Accounting is exact: a user never spends more than
its budget; a user whose budget is spent (or whose tree has nothing left to expand) stops while
the others go on. ``forward_tokens`` is the number of tokens actually fed (dead beams are not fed).

**(1) Initial tree.** A trie-constrained beam search of width ``init_beam`` run inside the tree:
at each depth d = 1..L-1 the top-``init_beam`` prefixes by log pi(c_<=d | x) among the children
of the previous level's beam are added and evaluated, costing (L-1)*init_beam tokens (less when
the trie has fewer prefixes). Unlike beam search nothing is pruned at the last level: every child
of a beam node of depth L-1 is a complete item of the tree. If the initial beam would use up the
whole budget ((L-1)*init_beam >= budget), it is shrunk to ``max(1, budget // (2*(L-1)))`` so
that about half the budget is left for expansion (with a warning): VED must really search
(docs/method.md section 3, the known bug to avoid).

**Visit counts.** N(s) = number of nodes in the subtree of s, s included (each expansion adds
one node, as one MCTS simulation would); the initial tree is counted the same way.

**(2) Selection (Eq. 13).** Each expansion descends from the root. At an evaluated node s the
options ("arms") are
  - descend into an evaluated child c of depth <= L-2, with the UCB score of Eq. 13
    ``U(c) = G(c) + beta * sqrt(ln(N(s) + 1) / (N(c) + 1))``;
  - widen s (add a new child to s), with ``U = Gbar(s) + beta * sqrt(ln(N(s) + 1) / (w(s) + 1))``,
    w(s) = the number of children of s that VED's own expansions added (the initial beam's are not
    counted), Gbar(s) = the mean G of its evaluated children (G(s) if it has none). **Decision**:
    this treats "add a child to s" as one more arm of the bandit at s, valued at what an unseen
    child is expected to be worth: the average of its siblings (first-play value). It is a form of
    progressive widening: s gets a new child when that arm's bonus beats its children's, and a new
    child (N = 1) is deepened soon after. Without this arm the root would never get a first code
    the initial beam pruned. We first valued the arm by G(s) itself, but G of different depths are
    not on one scale (an untrained head gave V(root) = 10 vs ~1.4 below), so the root was widened
    with the whole budget and no new items were reached; the siblings' mean compares like with
    like. **Decision (pulls)**: an arm's pulls are the times the search chose it, so w(s) counts
    expansions only. Counting all k(s) children (``widen_pulls="children"``, kept as an ablation)
    charged the widen arm for the init_beam children the bandit never chose: at the defaults
    (init beam 8, 16 expansions) the root's arm had bonus sqrt(ln 18 / 9) = 0.57 against 1.20 for
    a child with N = 1, could only win once every open child had N >= 8, and never fired
    (docs/method.md section 3). G(s) still decides whether s is entered from its parent (Eq. 13)
    and whether s may be widened at all (Eq. 14).
The descent takes the arm with the highest U (ties: the more probable prefix, i.e. higher
log pi(prefix | x); the widen arm's prefix is the child it would add) and stops when it widens.

**Gated expansion (Eq. 14).** s may be widened only if it has a trie-valid child not yet in the
tree and ``G(s) >= mean G of the evaluated nodes at depth(s)`` (up to 1e-6 for float rounding).
**Decision**: the mean is taken over the evaluated nodes at that depth that can still get a child
(the expansion candidates). With the mean over all of them, a high-G node whose children are all
in the tree would keep blocking its peers, and users would stop with budget left although the
trie has unexplored prefixes (this happened in our tests); this way at least one candidate per
depth passes, and budget is left unspent only when the user's whole trie has been explored.
**Decision (fall-through)**: arms that cannot lead to an allowed expansion are removed before the
argmax: the widen arm of a gated or exhausted node, and any child whose subtree holds no node
that may be widened. So the descent always ends at a node that passes the gate: the best-U
allowed option at every step. Each expansion records G(parent) and the depth mean it was gated
against (``VEDTree.gate_priority`` / ``gate_mean``).

**Completion reserve (Decision).** The search must return n_candidates items (an RL group with
empty slots is useless), and widening a node of depth < L-2 yields no item by itself. When a
user's remaining budget is no larger than the number of items it still lacks (items under its
depth-(L-1) nodes, pending ones included), only depth-(L-2) nodes may be widened (each such
expansion adds at least one item), still under the gate and UCB. With catalogues where most
depth-(L-1) prefixes hold one item (4,000 items in 256^3 codes) this is what keeps VED from
returning fewer items than asked.

**Expansion.** ``child_choice="most_probable"`` (default) adds the most probable not-yet-added
trie-valid child of s; ``"sample"`` draws one from pi renormalised over those children. The new
node is evaluated (cost 1) and its visit count back-propagated to the root.

**Batching.** All users advance together. A round makes up to ``expansions_per_round`` selections
per user, one after the other, each seeing the visit counts and children of the previous ones
(the new nodes are pending: they cannot be selected and do not enter the depth means until the
round's single batched forward has evaluated them). The forward feeds one token per new node
with a ``SharedKVCache``: the user's history cache (one copy per user, attended in place) and, as
the node's own suffix, its ancestors' keys/values from the pool (left-aligned and masked to
length L-2; position id = history length + d - 1), so the history is never re-read or copied
(a backbone without the shared cache gets it materialised as [history | ancestors] per node).
Bookkeeping is tensor code over node tables [B, M] (M = 1 + budget): per selection
O(L * B * M) for the descent and the gate, per round one forward of at most
B * expansions_per_round tokens. There is no Python loop over users, beams or codes.

**(3) Result.** Candidates are the complete items of the tree: every trie-valid child c_L of an
evaluated depth-(L-1) node s_L. They are ranked by ``leaf_score``:
  - ``"value_plus_logp"`` (default): V(s_L) + log pi(y | x), the value of the item's last state
    (the expected reward of choosing its final code; shared by siblings) plus the policy's
    constrained log-probability of the whole item, which orders siblings and makes an untrained
    (V ~ 0) head rank exactly like beam search;
  - ``"value"``: V(s_L), ties (siblings) by log pi(y | x);
  - ``"logp"``: log pi(y | x) only (likelihood ranking of the explored items).
The best ``n_candidates`` distinct items are returned (items are distinct by construction: every
tree node is a distinct prefix). If the tree holds fewer complete items (with the completion
reserve, only when the catalogue or the budget is too small), the remaining slots are padded with
item -1, codes -1, score -inf (``VEDResult.n_complete`` says how many were found).

**Degenerate case.** With lam = 0, beta = 0 and a constant value function every U and G tie, the
gate always passes and the tie-break decides: the descent walks down the most probable evaluated
prefixes and widens the first open one, so VED becomes a likelihood-greedy search that spends its
expansion budget on the next most probable children of the most probable prefix of depth L-2
(for L = 3: new second codes under the top first code), and ranks the explored items by
log-probability. Its candidate set contains the initial beam's, so its top-k log-probs are never
below those of ``beam_search(width=init_beam)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from vstar.core.errors import InputError
from vstar.decode.beam import DecodeResult, expand_beams, prefill
from vstar.decode.config import CHILD_CHOICES, LEAF_SCORES, WIDEN_PULLS, VEDConfig
from vstar.decode.trie import SidTrie, constrained_entropy, constrained_log_probs
from vstar.model.cache import SharedKVCache
from vstar.model.interface import SidLM, model_cache
from vstar.model.vocab import SidVocab

# hidden [n, D] -> V [n]; a value_fn whose ``reads_log_prob`` is True is called as
# value_fn(hidden, log_prob) with log pi of each node's prefix [n] (``ValueHead`` with a prior)
ValueFn = Callable[..., torch.Tensor]

ROOT, INIT, EXPANSION = 0, 1, 2  # VEDTree.origin: how a node entered the tree (-1: unused slot)
GATE_TOL = 1e-6   # Eq. 14 compares G with a float mean: allow this much rounding
NEG_INF = float("-inf")


@dataclass
class VEDTree:
    """The explored trees of a batch, as node tables [B, M] (slot m of user b; unused: depth -1).

    Node 0 is the root. ``codes[b, m, :depth]`` is the node's prefix (rest -1). ``value``,
    ``entropy``, ``priority`` (G, Eq. 11) are NaN for unevaluated nodes. ``log_prob`` is the
    constrained log pi(prefix | x). ``visits`` = N (nodes in the subtree). ``origin``: ROOT, INIT
    (initial beam) or EXPANSION. For EXPANSION nodes ``gate_priority`` is G(parent) and
    ``gate_mean`` the mean G at the parent's depth when the parent was expanded (Eq. 14; over the
    evaluated nodes of that depth that could still get a child);
    NaN otherwise. ``step``: the order in which nodes were added (root 0). ``round``: 0 for the
    root and the initial beam, r for nodes added in expansion round r (a node is evaluated at the
    end of its round, so the gate of round r saw exactly the nodes of earlier rounds).
    """

    n_nodes: torch.Tensor        # [B]
    depth: torch.Tensor          # [B, M]
    parent: torch.Tensor         # [B, M] (-1 for the root and unused slots)
    codes: torch.Tensor          # [B, M, L]
    value: torch.Tensor          # [B, M]
    entropy: torch.Tensor        # [B, M]
    priority: torch.Tensor       # [B, M]
    visits: torch.Tensor         # [B, M]
    log_prob: torch.Tensor       # [B, M]
    evaluated: torch.Tensor      # [B, M] bool
    origin: torch.Tensor         # [B, M]
    gate_priority: torch.Tensor  # [B, M]
    gate_mean: torch.Tensor      # [B, M]
    step: torch.Tensor           # [B, M]
    round: torch.Tensor          # [B, M]

    def nodes(self, b: int) -> list[dict]:
        """User ``b``'s tree as a list of plain dicts (for inspection and logging)."""
        out = []
        for m in range(int(self.n_nodes[b])):
            d = int(self.depth[b, m])
            out.append({"node": m, "depth": d, "parent": int(self.parent[b, m]),
                        "prefix": self.codes[b, m, :d].tolist(),
                        "V": float(self.value[b, m]), "H": float(self.entropy[b, m]),
                        "G": float(self.priority[b, m]), "N": int(self.visits[b, m]),
                        "log_prob": float(self.log_prob[b, m]),
                        "evaluated": bool(self.evaluated[b, m]),
                        "origin": ("root", "init", "expansion")[int(self.origin[b, m])]})
        return out


@dataclass
class VEDResult(DecodeResult):
    """VED's output: the ``DecodeResult`` fields (``scores`` are the leaf scores used for the
    ranking; ``tokens_per_user`` <= ``budget``) plus the search's tree and cost per user."""

    log_probs: torch.Tensor        # [B, G] constrained log pi(y | x) of the returned items
    tree: VEDTree
    n_expansions: torch.Tensor     # [B] nodes added after the initial tree
    budget: torch.Tensor           # [B] forward-token budget of each user
    n_complete: torch.Tensor       # [B] complete items in the tree (< G: slots were padded)
    widenings: torch.Tensor        # [B, L-1] expansions per parent depth 0..L-2 (sum: n_expansions)
    distinct_first_codes: torch.Tensor  # [B] distinct first codes among the returned items
    init_beam: int = 0             # the initial beam width actually used (after shrinking)

    @property
    def root_widenings(self) -> torch.Tensor:
        """[B] first codes VED opened beyond the initial beam (expansions of the root)."""
        return self.widenings[:, 0]


def ved_budget(n_levels: int, n_candidates: int, cfg: VEDConfig) -> int:
    """Per-user forward-token budget: floor(multiplier * (cfg.budget or (L-1) * n_candidates))."""
    base = cfg.budget if cfg.budget is not None else (n_levels - 1) * n_candidates
    return int(math.floor(cfg.budget_multiplier * base + 1e-9))


def _check_config(cfg: VEDConfig, n_candidates: int) -> None:
    if n_candidates < 1:
        raise InputError(f"expected n_candidates >= 1, got {n_candidates}", field="n_candidates")
    if cfg.init_beam < 1:
        raise InputError(f"expected init_beam >= 1, got {cfg.init_beam}", field="init_beam")
    if cfg.expansions_per_round < 1:
        raise InputError(f"expected expansions_per_round >= 1, got {cfg.expansions_per_round}",
                         field="expansions_per_round")
    if cfg.budget is not None and cfg.budget < 0:
        raise InputError(f"expected budget >= 0 or None, got {cfg.budget}", field="budget")
    if not cfg.budget_multiplier > 0:
        raise InputError(f"expected budget_multiplier > 0, got {cfg.budget_multiplier}",
                         field="budget_multiplier")
    if cfg.lam < 0 or cfg.beta < 0:
        raise InputError(f"expected lam >= 0 and beta >= 0, got lam={cfg.lam}, beta={cfg.beta}",
                         field="lam" if cfg.lam < 0 else "beta")
    if cfg.leaf_score not in LEAF_SCORES:
        raise InputError(f"expected one of {LEAF_SCORES}, got {cfg.leaf_score!r}",
                         field="leaf_score")
    if cfg.child_choice not in CHILD_CHOICES:
        raise InputError(f"expected one of {CHILD_CHOICES}, got {cfg.child_choice!r}",
                         field="child_choice")
    if cfg.widen_pulls not in WIDEN_PULLS:
        raise InputError(f"expected one of {WIDEN_PULLS}, got {cfg.widen_pulls!r}",
                         field="widen_pulls")


class _Search:
    """Working state of one VED call: node tables [B, M], per-node log-probs [B, M, K], KV pool."""

    def __init__(self, model: SidLM, value_fn: ValueFn, vocab: SidVocab, trie: SidTrie,
                 cfg: VEDConfig, B: int, M: int, dev: torch.device):
        self.model, self.value_fn, self.cfg = model, value_fn, cfg
        self.value_reads_log_prob = bool(getattr(value_fn, "reads_log_prob", False))
        self.vocab, self.trie = vocab, trie
        self.B, self.M, self.L = B, M, vocab.n_levels
        self.K = max(vocab.codebook_sizes)
        self.dev = dev
        L, K = self.L, self.K
        self.users = torch.arange(B, device=dev)
        self.offsets = torch.as_tensor(vocab.offsets, dtype=torch.long, device=dev)   # [L]
        self.n_nodes = torch.zeros(B, dtype=torch.long, device=dev)
        self.depth = torch.full((B, M), -1, dtype=torch.long, device=dev)
        self.parent = torch.full((B, M), -1, dtype=torch.long, device=dev)
        self.codes = torch.full((B, M, L), -1, dtype=torch.long, device=dev)
        # path[b, m, j]: the node of depth j+1 on the way from the root to m (m itself at j = d-1)
        self.path = torch.full((B, M, max(L - 1, 0)), -1, dtype=torch.long, device=dev)
        self.trie_node = torch.zeros((B, M), dtype=torch.long, device=dev)
        self.log_prob = torch.full((B, M), NEG_INF, device=dev)       # log pi(prefix | x)
        self.value = torch.full((B, M), float("nan"), device=dev)
        self.entropy = torch.full((B, M), float("nan"), device=dev)
        self.priority = torch.full((B, M), float("nan"), device=dev)  # G, Eq. 11
        self.visits = torch.zeros((B, M), dtype=torch.long, device=dev)
        self.n_children = torch.zeros((B, M), dtype=torch.long, device=dev)
        self.n_expanded = torch.zeros((B, M), dtype=torch.long, device=dev)  # children by expansion
        self.n_valid = torch.zeros((B, M), dtype=torch.long, device=dev)  # trie-valid children
        self.evaluated = torch.zeros((B, M), dtype=torch.bool, device=dev)
        self.origin = torch.full((B, M), -1, dtype=torch.long, device=dev)
        self.gate_priority = torch.full((B, M), float("nan"), device=dev)
        self.gate_mean = torch.full((B, M), float("nan"), device=dev)
        self.step = torch.full((B, M), -1, dtype=torch.long, device=dev)
        self.round = torch.full((B, M), -1, dtype=torch.long, device=dev)
        self.n_rounds = 0
        self.next_lp = torch.full((B, M, K), NEG_INF, device=dev)     # log pi(child code | node)
        self.added = torch.zeros((B, M, K), dtype=torch.bool, device=dev)
        self.spent = torch.zeros(B, dtype=torch.long, device=dev)
        self.n_leaf_items = torch.zeros(B, dtype=torch.long, device=dev)  # items below depth L-1
        self.n_steps = 0

    # ------------------------------------------------------------------ evaluation (costs tokens)
    def evaluate_root(self, tokens: torch.Tensor, pad_mask: torch.Tensor) -> None:
        """The prefill evaluates the root (free, Eq. 10) and gives the history cache."""
        logits, hidden, cache = prefill(self.model, tokens, pad_mask)   # [B, V], [B, D]
        self.hist = cache
        H, Dh = cache.keys[0].shape[1], cache.keys[0].shape[3]
        kv_dtype = cache.keys[0].dtype
        n_layer = len(cache.keys)
        self.pool_k = [torch.zeros(self.B, self.M, H, Dh, dtype=kv_dtype, device=self.dev)
                       for _ in range(n_layer)]
        self.pool_v = [torch.zeros_like(p) for p in self.pool_k]
        root = torch.zeros(self.B, dtype=torch.long, device=self.dev)
        self.depth[:, 0] = 0
        self.log_prob[:, 0] = 0.0
        self.visits[:, 0] = 1
        self.origin[:, 0] = ROOT
        self.step[:, 0] = 0
        self.round[:, 0] = 0
        self.n_nodes[:] = 1
        self._fill(self.users, root, root, logits, hidden)

    def evaluate(self, b: torch.Tensor, m: torch.Tensor) -> None:
        """Feed the last code of nodes (b[i], m[i]) (depth >= 1) in one batched forward."""
        if b.numel() == 0:
            return
        L = self.L
        d = self.depth[b, m]                                               # [n], 1..L-1
        A = L - 2                                                          # most ancestors
        anc = self.path[b, m, :A].clamp(min=0)                             # [n, A]
        anc_mask = torch.arange(A, device=self.dev)[None] < (d - 1)[:, None]  # [n, A]
        keys = [pk[b[:, None], anc].transpose(1, 2) for pk in self.pool_k]   # [n, H, A, Dh]
        values = [pv[b[:, None], anc].transpose(1, 2) for pv in self.pool_v]
        next_pos = self.hist.next_pos.index_select(0, b) + (d - 1)
        cache = SharedKVCache(self.hist, b, keys, values, anc_mask, next_pos)
        code = self.codes[b, m].gather(1, (d - 1)[:, None]).squeeze(1)
        feed = (self.offsets[d - 1] + code)[:, None]                       # [n, 1] token ids
        out = self.model(feed, cache=model_cache(self.model, cache))
        for i in range(len(self.pool_k)):                                  # the node's own KV
            self.pool_k[i][b, m] = out.cache.keys[i][:, :, -1]
            self.pool_v[i][b, m] = out.cache.values[i][:, :, -1]
        self.spent.index_add_(0, b, torch.ones_like(b))
        self._fill(b, m, d, out.logits[:, -1], out.hidden[:, -1])

    def _fill(self, b, m, d, logits, hidden) -> None:
        """V, H, G and the constrained next-code log-probs of freshly evaluated nodes."""
        if self.value_reads_log_prob:                        # a head with the policy prior
            V = self.value_fn(hidden, self.log_prob[b, m]).reshape(-1).float()
        else:
            V = self.value_fn(hidden).reshape(-1).float()                 # [n]
        if V.numel() != b.numel():
            raise ValueError(f"value_fn returned {V.numel()} values for {b.numel()} states")
        H = torch.zeros_like(V)
        node = self.trie_node[b, m]
        # every level over all rows, rows of other depths masked out (a node of no depth has no
        # allowed code): no host round trip to find which depths are present (GPU)
        for level in range(self.L):                                       # next level = depth
            at = d == level                                               # [n]
            Kl = self.vocab.codebook_sizes[level]
            allowed = self.trie.allowed(level, torch.where(at, node, -1))  # [n, Kl]
            lp = constrained_log_probs(logits[:, self.vocab.level_slice(level)], allowed)
            lp = lp.masked_fill(~allowed, NEG_INF)   # constrained_log_probs may give -3.4e38
            H = torch.where(at, constrained_entropy(lp, allowed), H)
            self.next_lp[b, m, :Kl] = torch.where(at[:, None], lp, self.next_lp[b, m, :Kl])
            self.n_valid[b, m] = torch.where(at, allowed.sum(-1), self.n_valid[b, m])
        self.value[b, m] = V
        self.entropy[b, m] = H
        self.priority[b, m] = V + self.cfg.lam * H                         # Eq. 11
        self.evaluated[b, m] = True

    # ------------------------------------------------------------------ tree edits (free)
    def add(self, b: torch.Tensor, p: torch.Tensor, code: torch.Tensor,
            origin: int) -> torch.Tensor:
        """Add children ``code`` of nodes (b, p); b must be sorted. Returns their slots m."""
        n = b.numel()
        counts = torch.bincount(b, minlength=self.B)
        first = torch.cumsum(counts, 0) - counts
        m = self.n_nodes[b] + torch.arange(n, device=self.dev) - first[b]
        d = self.depth[b, p] + 1                                           # [n]
        self.depth[b, m] = d
        self.parent[b, m] = p
        row_codes = self.codes[b, p].clone()
        row_codes.scatter_(1, (d - 1)[:, None], code[:, None])
        self.codes[b, m] = row_codes
        row_path = self.path[b, p].clone()
        row_path.scatter_(1, (d - 1)[:, None], m[:, None])
        self.path[b, m] = row_path
        parent_node = self.trie_node[b, p]
        node = torch.full_like(code, -1)
        for level in range(self.L - 1):              # every level, masked (no host round trip)
            at = d - 1 == level
            node = torch.where(at, self.trie.step(level, parent_node, code), node)
        self.trie_node[b, m] = node
        last = d == self.L - 1                                             # children are items
        n_items = self.trie.allowed(self.L - 1, torch.where(last, node, -1)).sum(-1)  # 0: not last
        self.n_leaf_items.index_add_(0, b, n_items)
        self.log_prob[b, m] = self.log_prob[b, p] + self.next_lp[b, p, code]
        self.origin[b, m] = origin
        self.step[b, m] = self.n_steps + torch.arange(n, device=self.dev) + 1
        self.n_steps += n
        self.round[b, m] = self.n_rounds
        self.added[b, p, code] = True
        self.n_children.index_put_((b, p), torch.ones_like(b), accumulate=True)
        if origin == EXPANSION:
            self.n_expanded.index_put_((b, p), torch.ones_like(b), accumulate=True)
        # back-propagate the visit: the new node and every ancestor (root + path of the parent)
        self.visits[b, m] = 1
        self.visits.index_put_((b, torch.zeros_like(b)), torch.ones_like(b), accumulate=True)
        for j in range(self.L - 1):
            anc = row_path[:, j]
            keep = (j < d - 1) & (anc >= 0)
            self.visits.index_put_((b[keep], anc[keep]), torch.ones_like(b[keep]), accumulate=True)
        self.n_nodes.index_add_(0, b, torch.ones_like(b))
        return m

    # ------------------------------------------------------------------ (1) initial beam tree
    def initial_beam(self, width: int) -> None:
        for d in range(1, self.L):
            frontier = self.evaluated & (self.depth == d - 1)              # previous beam [B, M]
            top, parent, code = expand_beams(self.log_prob.masked_fill(~frontier, NEG_INF),
                                             self.next_lp, width)          # [B, W] each
            alive = torch.isfinite(top)
            b, w = alive.nonzero(as_tuple=True)                            # sorted by user
            m = self.add(b, parent[b, w], code[b, w], INIT)
            self.evaluate(b, m)

    # ------------------------------------------------------------------ (2) select / expand
    def allowed_expansions(self, must_complete: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(can_widen [B, M], open [B, M], depth means [B, L]) under the gate of Eq. 14.

        must_complete [B]: users that may only widen depth-(L-2) nodes (completion reserve).
        """
        L = self.L
        dep = self.depth.clamp(min=0)
        candidate = (self.evaluated & (self.depth >= 0) & (self.depth <= L - 2)
                     & (self.n_children < self.n_valid))                   # could get a child
        candidate &= ~must_complete[:, None] | (self.depth == L - 2)
        g = torch.where(candidate, self.priority, torch.zeros_like(self.priority))
        sums = torch.zeros(self.B, L, device=self.dev).scatter_add_(1, dep, g)
        cnt = torch.zeros(self.B, L, device=self.dev).scatter_add_(1, dep, candidate.float())
        mean = sums / cnt.clamp(min=1)                                     # [B, L]
        can_widen = candidate & (self.priority >= mean.gather(1, dep) - GATE_TOL)   # Eq. 14
        open_ = can_widen.long()
        for d in range(L - 2, 0, -1):                                      # children -> parents
            src = open_ * (self.depth == d).long()
            open_ = open_.scatter_reduce(1, self.parent.clamp(min=0), src, reduce="amax")
        return can_widen, open_.bool(), mean

    def select(self, active: torch.Tensor, can_widen: torch.Tensor, open_: torch.Tensor
               ) -> torch.Tensor:
        """UCB descent (Eq. 13) from the root for the ``active`` users -> node to widen [B]."""
        beta = self.cfg.beta
        ar = self.users
        cur = torch.zeros(self.B, dtype=torch.long, device=self.dev)
        sel = torch.full((self.B,), -1, dtype=torch.long, device=self.dev)
        going = active.clone()
        child_arm = open_ & self.evaluated & (self.depth >= 1)             # arms to descend into
        # first-play value of a node's next child: mean G of its evaluated children, else G(s)
        kids = self.evaluated & (self.depth >= 1)
        g = torch.where(kids, self.priority, torch.zeros_like(self.priority))
        par = self.parent.clamp(min=0)
        g_sum = torch.zeros_like(g).scatter_add_(1, par, g)
        n_kids = torch.zeros_like(g).scatter_add_(1, par, kids.float())
        first_play = torch.where(n_kids > 0, g_sum / n_kids.clamp(min=1), self.priority)
        pulls = self.n_expanded if self.cfg.widen_pulls == "expansions" else self.n_children
        for _ in range(max(self.L - 1, 1)):        # users that stopped keep cur and sel
            ln_n = torch.log(self.visits[ar, cur].float() + 1.0)          # ln(N(s) + 1)  [B]
            u_child = self.priority + beta * torch.sqrt(ln_n[:, None] / (self.visits.float() + 1.0))
            is_child = child_arm & (self.parent == cur[:, None])           # [B, M]
            u_child = u_child.masked_fill(~is_child, NEG_INF)
            # widen arm: a new child is expected to be like its evaluated siblings
            u_widen = first_play[ar, cur] + beta * torch.sqrt(
                ln_n / (pulls[ar, cur].float() + 1.0))                     # [B]
            u_widen = u_widen.masked_fill(~can_widen[ar, cur], NEG_INF)
            u = torch.cat([u_widen[:, None], u_child], 1)                  # [B, 1 + M]
            best_new = self.next_lp[ar, cur].masked_fill(self.added[ar, cur], NEG_INF).amax(1)
            key = torch.cat([(self.log_prob[ar, cur] + best_new)[:, None],
                             self.log_prob], 1)                            # tie-break: likelier
            tie = (u >= u.amax(1, keepdim=True) - 1e-9) & torch.isfinite(u)
            arm = key.masked_fill(~tie, NEG_INF).argmax(1)                 # [B]
            stop = going & (arm == 0)
            sel = torch.where(stop, cur, sel)
            going = going & ~stop
            cur = torch.where(going, arm - 1, cur)
        if bool((active & (sel < 0)).any()):
            raise RuntimeError("VED descent ended without a node to expand (open-set bug)")
        return sel

    def choose_child(self, b: torch.Tensor, s: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
        lp = self.next_lp[b, s].masked_fill(self.added[b, s], NEG_INF)    # [n, K]
        if self.cfg.child_choice == "most_probable":
            return lp.argmax(1)
        return torch.multinomial(torch.softmax(lp, 1), 1, generator=generator).squeeze(1)

    def expand(self, budget: torch.Tensor, n_candidates: int,
               generator: torch.Generator | None) -> None:
        """Rounds of select / gated expand / back-propagate until every budget is spent."""
        while True:
            self.n_rounds += 1
            new_b, new_m = [], []
            remaining = budget - self.spent
            for _ in range(self.cfg.expansions_per_round):
                must_complete = remaining <= n_candidates - self.n_leaf_items
                can_widen, open_, mean = self.allowed_expansions(must_complete)
                active = (remaining > 0) & open_[:, 0]
                if not active.any():
                    break
                s = self.select(active, can_widen, open_)
                b = active.nonzero().squeeze(1)
                s = s[b]
                code = self.choose_child(b, s, generator)
                g_parent = self.priority[b, s]
                g_mean = mean[b, self.depth[b, s]]
                m = self.add(b, s, code, EXPANSION)
                self.gate_priority[b, m] = g_parent
                self.gate_mean[b, m] = g_mean
                remaining[b] -= 1
                new_b.append(b)
                new_m.append(m)
            if not new_b:
                return
            self.evaluate(torch.cat(new_b), torch.cat(new_m))

    def widenings(self) -> torch.Tensor:
        """[B, L-1]: expansions per parent depth (column 0: root widenings)."""
        exp = self.origin == EXPANSION
        return torch.stack([(exp & (self.depth == d + 1)).sum(1)
                            for d in range(max(self.L - 1, 1))], 1)

    # ------------------------------------------------------------------ (3) best leaves
    def best_leaves(self, n: int):
        B, M, K, L = self.B, self.M, self.K, self.L
        leaf_parent = self.evaluated & (self.depth == L - 1)               # [B, M]
        logp = (self.log_prob[:, :, None] + self.next_lp).masked_fill(~leaf_parent[:, :, None],
                                                                      NEG_INF)  # [B, M, K]
        logp = logp.reshape(B, M * K)
        value = self.value.nan_to_num(0.0)[:, :, None].expand(B, M, K).reshape(B, M * K)
        found = torch.isfinite(logp)
        if self.cfg.leaf_score == "logp":
            score = logp
            order = score.argsort(dim=1, descending=True, stable=True)
        elif self.cfg.leaf_score == "value_plus_logp":
            score = value + logp
            order = score.argsort(dim=1, descending=True, stable=True)
        else:  # "value": by V(s_L), siblings by log-prob
            score = value.masked_fill(~found, NEG_INF)
            by_lp = logp.argsort(dim=1, descending=True, stable=True)
            by_v = score.gather(1, by_lp).argsort(dim=1, descending=True, stable=True)
            order = by_lp.gather(1, by_v)
        k = min(n, M * K)
        top = order[:, :k]                                                 # [B, k]
        ok = found.gather(1, top)
        m, c = top // K, top % K
        node = self.trie_node.gather(1, m)
        items = torch.where(ok, self.trie.step(L - 1, node, c), -1)        # -1 if no such item
        codes = torch.cat([self.codes.gather(1, m[:, :, None].expand(B, k, L))[:, :, : L - 1],
                           c[:, :, None]], 2)
        codes = torch.where(ok[:, :, None], codes, -1)
        sc = torch.where(ok, score.gather(1, top), NEG_INF)
        lp = torch.where(ok, logp.gather(1, top), NEG_INF)
        if k < n:
            pad = n - k
            items = torch.cat([items, items.new_full((B, pad), -1)], 1)
            codes = torch.cat([codes, codes.new_full((B, pad, L), -1)], 1)
            sc = torch.cat([sc, sc.new_full((B, pad), NEG_INF)], 1)
            lp = torch.cat([lp, lp.new_full((B, pad), NEG_INF)], 1)
        n_invalid = int(((items < 0) & torch.isfinite(sc)).sum())
        return items, codes, sc, lp, n_invalid, found.sum(1)

    def tree(self) -> VEDTree:
        M = max(1, int(self.n_nodes.max()))
        return VEDTree(self.n_nodes.clone(), self.depth[:, :M], self.parent[:, :M],
                       self.codes[:, :M], self.value[:, :M], self.entropy[:, :M],
                       self.priority[:, :M], self.visits[:, :M], self.log_prob[:, :M],
                       self.evaluated[:, :M], self.origin[:, :M], self.gate_priority[:, :M],
                       self.gate_mean[:, :M], self.step[:, :M], self.round[:, :M])


@torch.no_grad()
def value_guided_decode(model: SidLM, value_fn: ValueFn, vocab: SidVocab, trie: SidTrie,
                        tokens: torch.Tensor, pad_mask: torch.Tensor, n_candidates: int,
                        cfg: VEDConfig | None = None,
                        generator: torch.Generator | None = None) -> VEDResult:
    """VED (docs/method.md section 3): the best ``n_candidates`` items per user at a token budget.

    tokens / pad_mask: left-padded prompts [B, T] (``SidVocab.encode_histories``).
    value_fn: hidden [n, D] -> V [n] (normally a ``ValueHead``; see ``vstar.model.value`` for the
    state it reads). generator: only used by ``child_choice="sample"``.
    The algorithm and every decision are described in the module docstring.
    """
    cfg = cfg or VEDConfig()
    _check_config(cfg, n_candidates)
    L = vocab.n_levels
    B = tokens.shape[0]
    dev = tokens.device
    budget = ved_budget(L, n_candidates, cfg)
    if budget < L - 1:
        raise InputError(f"a budget of {budget} forward tokens per user cannot reach a complete "
                         f"item: need at least L-1 = {L - 1}", field="budget")
    width = cfg.init_beam
    if L > 1 and (L - 1) * width >= budget:
        width = max(1, budget // (2 * (L - 1)))
        warnings.warn(f"VED: an initial beam of {cfg.init_beam} costs {(L - 1) * cfg.init_beam} "
                      f">= the budget of {budget} tokens per user; shrunk to {width} so that "
                      f"{budget - (L - 1) * width} tokens are left for expansion", stacklevel=2)
    search = _Search(model, value_fn, vocab, trie, cfg, B, 1 + budget, dev)
    search.evaluate_root(tokens, pad_mask)
    search.initial_beam(width)
    n_init = search.n_nodes.clone()
    budget_t = torch.full((B,), budget, dtype=torch.long, device=dev)
    search.expand(budget_t, n_candidates, generator)
    items, codes, scores, log_probs, n_invalid, n_complete = search.best_leaves(n_candidates)
    assert bool((search.spent <= budget_t).all()), "VED overspent its budget"
    return VEDResult(items, codes, scores, int(search.spent.sum()), search.spent.clone(),
                     n_invalid, log_probs, search.tree(), search.n_nodes - n_init, budget_t,
                     n_complete, search.widenings(), _distinct_first_codes(codes), width)


def _distinct_first_codes(codes: torch.Tensor) -> torch.Tensor:
    """[B, G, L] codes (-1: empty slot) -> [B] number of distinct first codes per user."""
    first = codes[:, :, 0]
    srt = first.sort(1).values
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    return (new & (srt >= 0)).sum(1)


def make_ved_decoder(value_fn: ValueFn, n_candidates: int, cfg: VEDConfig | None = None,
                     generator: torch.Generator | None = None):
    """A decoder for ``vstar.decode.rank.rank_rows(..., decoder=...)``: VED at a fixed setting.

    Returns ``decoder(model, vocab, trie, tokens, mask) -> VEDResult`` (which has ``.items``,
    ``.forward_tokens`` and ``.n_invalid`` like ``DecodeResult``).
    """
    cfg = cfg or VEDConfig()
    _check_config(cfg, n_candidates)

    def decoder(model: SidLM, vocab: SidVocab, trie: SidTrie, tokens: torch.Tensor,
                mask: torch.Tensor) -> VEDResult:
        return value_guided_decode(model, value_fn, vocab, trie, tokens, mask, n_candidates,
                                   cfg, generator)

    return decoder
