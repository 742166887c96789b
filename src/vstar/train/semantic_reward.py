"""A2PO's semantic reward: an offline, personalised judge over frozen item text embeddings.

S-GRec scores a (user, item) pair with an LLM judge on several aspects and mixes the aspect
scores with a user-conditional aggregator; the judge is never called at serving time. vstar's
**reconstruction** for public data (docs/method.md, "A2PO and DRPO") replaces the LLM by three
aspect scores computed from the items' L2-normalised text embeddings e (MiniLM; cached by
``vstar.sid.embed``) and the user's history h_1..h_n (oldest first):

    profile(x, y) = cos(e_y, mean_j e_{h_j})                 fit to the user's whole history
    future(x, y)  = cos(e_y, sum_j d^(n-j) e_{h_j})          fit to where the history is heading
                                                             (recency weights, d = 0.7)
    novelty(x, y) = 1 - max_j cos(e_y, e_{h_j})              distance to the closest seen item

and the aggregator

    w(x, y) = softmax(MLP([m(x), a(x, y)]))   (3 non-negative weights summing to 1)
    s(x, y) = sum_k w_k(x, y) * a_k(x, y)

where m(x) is the normalised history-mean embedding and a = (profile, future, novelty). The MLP
is trained on the training split with a pairwise (BPR) objective: the logged next item should
score above an item drawn uniformly from the catalogue, ``-log sigmoid(t * (s(x, y+) - s(x, y-)))``
with a learned scale t (it only sharpens the sigmoid; rankings and z-scores ignore it). The
trained weights are saved as a ``semantic_scorer`` checkpoint in the run folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vstar.core import checkpoint
from vstar.core.errors import InputError
from vstar.data.types import SplitRows

log = logging.getLogger(__name__)

ASPECTS = ("profile", "future", "novelty")
FUTURE_DECAY = 0.7         # recency weight d of the "future" aspect (our choice)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1, eps=1e-12)


def history_tensors(histories: Sequence[np.ndarray], max_len: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned history items [U, H] (pad 0) and their mask [U, H] (True = an item).

    The last ``max_len`` items of each history are kept (all if None)."""
    hs = [np.asarray(h, dtype=np.int64)[-max_len:] if max_len else np.asarray(h, np.int64)
          for h in histories]
    if any(len(h) == 0 for h in hs):
        raise InputError("a history is empty; the semantic judge needs at least one item",
                         field="histories")
    H = max(len(h) for h in hs)
    items = torch.zeros(len(hs), H, dtype=torch.long)
    mask = torch.zeros(len(hs), H, dtype=torch.bool)
    for u, h in enumerate(hs):
        items[u, H - len(h):] = torch.from_numpy(h)
        mask[u, H - len(h):] = True
    return items, mask


def user_features(emb: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor,
                  decay: float = FUTURE_DECAY) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(profile vector m [U, D], future vector f [U, D], history embeddings [U, H, D]), m and f
    L2-normalised. m = mean of the history's embeddings; f = their sum weighted by
    ``decay ** (age)``, age 0 for the most recent item."""
    e = _normalise(emb)[hist] * mask[..., None]                           # [U, H, D]
    H = hist.shape[1]
    age = torch.arange(H - 1, -1, -1, dtype=torch.float32)                # right-aligned
    w = (decay ** age)[None, :] * mask                                    # [U, H]
    m = _normalise(e.sum(1) / mask.sum(1, keepdim=True).clamp_min(1))
    f = _normalise((e * w[..., None]).sum(1))
    return m, f, e


def aspect_scores(emb: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor,
                  items: torch.Tensor, decay: float = FUTURE_DECAY) -> torch.Tensor:
    """The three aspect scores [U, G, 3] (profile, future, novelty) of candidate ``items``
    [U, G] (entries < 0 give 0) for the users' histories."""
    m, f, e_hist = user_features(emb, hist, mask, decay)
    e = _normalise(emb)[items.clamp_min(0)]                              # [U, G, D]
    profile = (e * m[:, None]).sum(-1)
    future = (e * f[:, None]).sum(-1)
    cos_hist = torch.einsum("ugd,uhd->ugh", e, e_hist)                   # [U, G, H]
    cos_hist = cos_hist.masked_fill(~mask[:, None, :], float("-inf"))
    novelty = 1.0 - cos_hist.max(-1).values
    out = torch.stack([profile, future, novelty], -1)
    return torch.where((items >= 0)[..., None], out, torch.zeros_like(out))


class Aggregator(nn.Module):
    """w(x, y) = softmax(MLP([m(x), a(x, y)])): one hidden layer (``hidden`` units, tanh)."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.mlp = nn.Sequential(nn.Linear(self.dim + len(ASPECTS), self.hidden), nn.Tanh(),
                                 nn.Linear(self.hidden, len(ASPECTS)))
        self.log_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def weights(self, m: torch.Tensor, aspects: torch.Tensor) -> torch.Tensor:
        """[U, G, 3] non-negative weights summing to 1, from m [U, D] and aspects [U, G, 3]."""
        x = torch.cat([m[:, None, :].expand(-1, aspects.shape[1], -1), aspects], -1)
        return torch.softmax(self.mlp(x), -1)

    def forward(self, m: torch.Tensor, aspects: torch.Tensor) -> torch.Tensor:
        return (self.weights(m, aspects) * aspects).sum(-1)                # [U, G]


@dataclass
class SemanticScorer:
    """The judge: frozen item embeddings + a trained aggregator. ``score`` gives s(x, y)."""

    emb: torch.Tensor            # [N, D] item embeddings (normalised on use)
    aggregator: Aggregator
    decay: float = FUTURE_DECAY

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray], items: torch.Tensor,
              max_history: int | None = None) -> torch.Tensor:
        """s(x, y) [U, G] for candidate items [U, G] (entries < 0 give 0)."""
        hist, mask = history_tensors(histories, max_history)
        a = aspect_scores(self.emb, hist, mask, items, self.decay)
        m, _, _ = user_features(self.emb, hist, mask, self.decay)
        s = self.aggregator.eval()(m, a)
        return torch.where(items >= 0, s, torch.zeros_like(s))

    def save(self, path) -> None:
        checkpoint.save_semantic_scorer(path, self.aggregator.state_dict(),
                                        dim=self.aggregator.dim, hidden=self.aggregator.hidden,
                                        decay=self.decay, aspects=list(ASPECTS))

    @classmethod
    def load(cls, path, emb: np.ndarray | torch.Tensor) -> "SemanticScorer":
        state, meta = checkpoint.load_semantic_scorer(path)
        emb = torch.as_tensor(emb, dtype=torch.float32)
        if int(meta["dim"]) != emb.shape[1]:
            raise InputError(f"the saved judge reads {meta['dim']}-d item embeddings, the "
                             f"experiment has {emb.shape[1]}-d ones", file=str(path))
        agg = Aggregator(int(meta["dim"]), int(meta["hidden"]))
        agg.load_state_dict(state)
        return cls(emb, agg.eval(), float(meta["decay"]))


def train_semantic_scorer(emb: np.ndarray | torch.Tensor, rows: SplitRows, *, steps: int = 300,
                          batch_size: int = 256, lr: float = 1e-2, hidden: int = 32,
                          max_history: int | None = None, seed: int = 0,
                          decay: float = FUTURE_DECAY) -> tuple[SemanticScorer, list[float]]:
    """Fit the aggregator with the pairwise loss on ``rows`` (history, logged next item) against
    uniform catalogue negatives (redrawn if equal to the target). Returns the scorer and the
    loss of every step."""
    emb = torch.as_tensor(emb, dtype=torch.float32)
    if emb.dim() != 2 or emb.shape[0] < 2:
        raise InputError(f"expected item embeddings [N >= 2, D], got {tuple(emb.shape)}",
                         field="item_emb")
    if len(rows) == 0:
        raise InputError("no training rows to fit the semantic judge on", field="rows")
    n_items = emb.shape[0]
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    agg = Aggregator(emb.shape[1], hidden)
    opt = torch.optim.Adam(agg.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)
        hist, mask = history_tensors([rows.histories[i] for i in idx], max_history)
        pos = torch.as_tensor(rows.targets[idx], dtype=torch.long)
        neg = torch.randint(0, n_items, pos.shape, generator=gen)
        neg = torch.where(neg == pos, (neg + 1) % n_items, neg)
        items = torch.stack([pos, neg], 1)                                # [U, 2]
        with torch.no_grad():
            a = aspect_scores(emb, hist, mask, items, decay)
            m, _, _ = user_features(emb, hist, mask, decay)
        s = agg(m, a)
        loss = -F.logsigmoid(agg.log_scale.exp() * (s[:, 0] - s[:, 1])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if losses:
        log.info("semantic judge: pairwise loss %.4f -> %.4f over %d steps", losses[0],
                 losses[-1], steps)
    return SemanticScorer(emb, agg.eval(), decay), losses
