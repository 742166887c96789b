"""Inference budget curve: accuracy vs decode cost for beam search and VED at equal budgets.

For each width W, beam search of width W feeds (L-1)*W decode forward tokens per user
(docs/method.md Eq. 10; the history prefill is free); VED with n_candidates = W gets exactly that budget
(``VEDConfig.budget=None``, ``budget_multiplier=1``) and may spend less. Both rank the split's rows
through ``vstar.decode.rank.rank_rows``, so the numbers are the pipeline's evaluation numbers.

    records = budget_curve(model, value_head, vocab, trie, splits.test, widths=(10, 20, 50))
    plot_budget_curve(records, "bench/results/budget_curve.png")

``vstar.experiments.budget.run_budget_curve`` does the whole thing for an RL run folder
(``vstar budget RUN_DIR``): it loads the run's generator and value head, rebuilds its data, splits
and SIDs, and writes JSON + PNG.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vstar.core.errors import InputError
from vstar.core.io import atomic_path
from vstar.data.types import SplitRows
from vstar.decode.beam import beam_search
from vstar.decode.config import VEDConfig
from vstar.decode.rank import rank_rows
from vstar.decode.trie import SidTrie
from vstar.decode.ved import VEDResult, make_ved_decoder
from vstar.eval.metrics import hit_rate, ndcg, target_ranks
from vstar.model.interface import SidLM
from vstar.model.vocab import SidVocab

log = logging.getLogger(__name__)

DECODERS = ("beam", "ved")
_SHRINK_WARNING = "VED: an initial beam"   # ved.py warns when init_beam would eat the budget


def _tracked(decode, stats: dict):
    """Wrap a rank_rows decoder to record the most tokens any one user spent (and VED's search)."""

    def decoder(model, vocab, trie, tokens, mask):
        res = decode(model, vocab, trie, tokens, mask)
        stats["max_tokens"] = max(stats["max_tokens"], int(res.tokens_per_user.max()))
        if isinstance(res, VEDResult):                           # VED: what the search did
            stats["expansions"] += int(res.n_expansions.sum())
            stats["incomplete"] += int((res.n_complete < res.items.shape[1]).sum())
            stats["init_beam"] = int(res.init_beam)
        return res

    return decoder


def budget_curve(model: SidLM, value_head: torch.nn.Module, vocab: SidVocab, trie: SidTrie,
                 rows: SplitRows, widths: Sequence[int] = (10, 20, 50), ks: Sequence[int] = (10,),
                 ved_cfg: VEDConfig | None = None, batch_size: int = 256,
                 max_history: int | None = 20, warmup: bool = True) -> list[dict[str, Any]]:
    """One record per (width W, decoder): beam search of width W and VED at the same budget.

    VED uses ``ved_cfg`` (default ``VEDConfig()``) with ``budget=None, budget_multiplier=1``, i.e.
    (L-1)*W decode forward tokens per user, and ``n_candidates=W``. ``value_head`` is put in eval
    mode. Each record: decoder, width, budget_per_user ((L-1)*W), HR@K and NDCG@K for ``ks``,
    decode_forward_tokens_per_user (measured, mean over users), max_forward_tokens_per_user,
    wall_seconds_per_user (prefill included), invalid_rate, distinct_items (over all users' lists),
    items_per_user (non-empty slots), n_users; VED records add ved_init_beam (after shrinking),
    ved_expansions_per_user and ved_incomplete_users (users with fewer than W items).
    ``warmup`` decodes a few rows once per decoder before timing (first calls are slow). A K
    larger than W counts targets beyond the W-item list as misses. CPU tensors (rank_rows).
    """
    if len(rows) == 0:
        raise InputError("no rows to decode", field="rows")
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise InputError(f"widths must be positive integers, got {widths}", field="widths")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be positive integers, got {ks}", field="ks")
    L = vocab.n_levels
    ved_cfg = dataclasses.replace(ved_cfg or VEDConfig(), budget=None, budget_multiplier=1.0)
    value_head.eval()
    targets = np.asarray(rows.targets)
    records = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SHRINK_WARNING)   # recorded as ved_init_beam
        for W in widths:
            decoders = {
                "beam": lambda m, v, t, tok, mask, W=W: beam_search(m, v, t, tok, mask, W),
                "ved": make_ved_decoder(value_head, W, ved_cfg),
            }
            for name, decode in decoders.items():
                if warmup:
                    rank_rows(model, vocab, trie, rows.subset(np.arange(min(8, len(rows)))), W,
                              batch_size=batch_size, max_history=max_history, decoder=decode)
                stats = {"max_tokens": 0, "expansions": 0, "incomplete": 0, "init_beam": None}
                ranked, cost = rank_rows(model, vocab, trie, rows, W, batch_size=batch_size,
                                         max_history=max_history,
                                         decoder=_tracked(decode, stats))   # ranked [R, W]
                ranks = target_ranks(ranked, targets)                       # [R]
                rec: dict[str, Any] = {"decoder": name, "width": W, "budget_per_user": (L - 1) * W}
                rec.update({f"HR@{k}": hit_rate(ranks, k) for k in ks})
                rec.update({f"NDCG@{k}": ndcg(ranks, k) for k in ks})
                rec.update({
                    "decode_forward_tokens_per_user": cost["decode_forward_tokens_per_user"],
                    "max_forward_tokens_per_user": float(stats["max_tokens"]),
                    "wall_seconds_per_user": cost["wall_seconds_per_user"],
                    "invalid_rate": cost["invalid_rate"],
                    "distinct_items": int(np.unique(ranked[ranked >= 0]).size),
                    "items_per_user": float((ranked >= 0).sum(1).mean()),
                    "n_users": len(rows),
                })
                if name == "ved":
                    rec.update({"ved_init_beam": stats["init_beam"],
                                "ved_expansions_per_user": stats["expansions"] / len(rows),
                                "ved_incomplete_users": stats["incomplete"]})
                log.info("W=%d %s: %s, %.1f tokens/user (budget %d), %.2f ms/user", W, name,
                         ", ".join(f"HR@{k} {rec[f'HR@{k}']:.4f}" for k in ks),
                         rec["decode_forward_tokens_per_user"], rec["budget_per_user"],
                         1e3 * rec["wall_seconds_per_user"])
                records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------

def plot_budget_curve(records: Sequence[dict[str, Any]], path: str | os.PathLike,
                      metric: str = "HR@10", title: str | None = None) -> Path:
    """``metric`` vs decode forward tokens per user, one line per decoder, widths annotated.

    Written atomically (PNG, or whatever matplotlib infers from the suffix); returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records or any(metric not in r for r in records):
        raise InputError(f"every record needs {metric!r} (pass ks that include its K)",
                         field="metric")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for name in sorted({r["decoder"] for r in records}):
        pts = sorted((r for r in records if r["decoder"] == name),
                     key=lambda r: r["decode_forward_tokens_per_user"])
        x = [r["decode_forward_tokens_per_user"] for r in pts]
        y = [r[metric] for r in pts]
        ax.plot(x, y, marker="o" if name == "beam" else "s", label=name)
        for r, xi, yi in zip(pts, x, y):
            ax.annotate(f"W={r['width']}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xlabel("decode forward tokens per user")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs decode budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path
