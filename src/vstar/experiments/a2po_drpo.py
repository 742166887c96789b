"""Two more of the group's RL methods as registry entries (docs/method.md, "A2PO and DRPO").

    a2po             beam groups + GRPO, business + semantic reward fused by A2PO's anchor rule
    a2po_reward_sum  ... the two rewards summed, then z-scored (the paper's ablation)
    a2po_adv_sum     ... the two advantages summed (the paper's ablation)
    drpo             offline: hard top-alpha filtering of a mixed-quality log (DRPO)
    drpo_naive       offline: advantage-weighted likelihood on every sample (negatives pushed down)
    drpo_positive    offline: advantage-weighted likelihood on the positives only
    drpo_soft        offline: AWR-style weights exp(A / tau)

All start from the same seed's SFT generator and are evaluated by the same beam search as every
generator row.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from vstar.core import dist
from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json
from vstar.data.types import SplitRows
from vstar.experiments.methods import beam_ranker, preset_rl_config, run_rl, sid_tables
from vstar.experiments.pipeline import MethodContext, Ranker, parent_run
from vstar.experiments.registry import Method, register
from vstar.model.backbone import load_model, save_model
from vstar.train.a2po import A2POTrainer, business_values
from vstar.train.drpo import DRPOTrainer, build_offline_log
from vstar.train.rewards import RewardContext, get_reward
from vstar.train.semantic_reward import SemanticScorer, train_semantic_scorer

log = logging.getLogger(__name__)

A2PO_EVAL_K = 10          # the top-k whose mean rewards an A2PO run reports on each split


# ---------------------------------------------------------------------------------------------
# A2PO
# ---------------------------------------------------------------------------------------------

def _semantic_judge(ctx: MethodContext, steps: int) -> tuple[SemanticScorer, dict]:
    """The run's semantic judge: read from the run folder when resuming, else trained on the
    training split and saved there."""
    prep, path = ctx.prep, ctx.run.layout.semantic_scorer
    if prep.item_emb is None:
        raise InputError("A2PO's semantic judge needs item embeddings (item text or "
                         "sid.vectors_path)", field="rl.a2po")
    if ctx.run.resumed and path.is_file():
        return SemanticScorer.load(path, prep.item_emb), {"trained": False}
    t0 = time.perf_counter()
    scorer, losses = train_semantic_scorer(prep.item_emb, prep.splits.train, steps=steps,
                                           max_history=prep.splits.max_history, seed=ctx.seed)
    if dist.is_main():
        scorer.save(path)
    k = max(1, min(20, len(losses) // 10))
    return scorer, {"trained": True, "steps": steps, "seconds": time.perf_counter() - t0,
                    "pairwise_loss_first": float(np.mean(losses[:k])),
                    "pairwise_loss_last": float(np.mean(losses[-k:]))}


def topk_rewards(rows: SplitRows, ranked: np.ndarray, k: int, codes: torch.Tensor, reward_fn,
                 biz_values: torch.Tensor | None, scorer: SemanticScorer,
                 max_history: int) -> dict:
    """Mean business and semantic reward of each row's top-k list (empty slots skipped): the
    list scored as one group against the row's target, as the RL step scores a group."""
    items = torch.as_tensor(np.asarray(ranked)[:, :k], dtype=torch.long)
    valid = items >= 0
    targets = torch.as_tensor(rows.targets, dtype=torch.long)
    ctx = RewardContext(items, codes[items.clamp_min(0)], valid, targets, codes[targets])
    r_biz = reward_fn(ctx)
    if biz_values is not None:
        r_biz = r_biz * biz_values[items.clamp_min(0)]
    r_sem = scorer.score(rows.histories, items, max_history)
    n = int(valid.sum())
    return {"k": k, "reward_biz_mean": float(r_biz[valid].sum()) / max(1, n),
            "reward_sem_mean": float(r_sem[valid].sum()) / max(1, n)}


def run_a2po(ctx: MethodContext) -> dict:
    """A2PO: the semantic judge first (trained on the training split, saved in the run folder),
    then ``run_rl`` with the A2PO trainer; each split's metrics.json also gets the mean business
    and semantic reward of the top-10 lists (``extra.a2po_topk``)."""
    cfg, prep = ctx.cfg, ctx.prep
    rcfg = preset_rl_config(cfg.rl, ctx.method.name, ctx.method.preset)
    rcfg.validate()
    column = rcfg.item_value_column
    biz = None
    if column:
        if column not in prep.data.item_features:
            raise InputError(f"no item column {column!r}; the data has "
                             f"{sorted(prep.data.item_features) or 'none'} (data.value_cols "
                             f"names the columns of an item table)", field="rl.item_value_column")
        biz = business_values(prep.data.item_features[column], column)
    scorer, judge = _semantic_judge(ctx, rcfg.semantic_train_steps)
    codes = torch.as_tensor(prep.sids.codes, dtype=torch.long)
    reward_fn = get_reward(rcfg.reward)
    topk: dict = {}     # filled per split by the ranker below, read when that split is written

    def wrap(rank: Ranker) -> Ranker:
        def ranked_with_rewards(rows: SplitRows, split: str):
            ranked, cost = rank(rows, split)
            topk.clear()
            topk.update(topk_rewards(rows, ranked, A2PO_EVAL_K, codes, reward_fn, biz, scorer,
                                     prep.splits.max_history))
            return ranked, cost
        return ranked_with_rewards

    return run_rl(ctx, trainer_cls=A2POTrainer,
                  trainer_kwargs={"scorer": scorer, "biz_values": biz}, wrap_ranker=wrap,
                  extra={"semantic_judge": judge, "a2po_topk": topk})


# ---------------------------------------------------------------------------------------------
# DRPO
# ---------------------------------------------------------------------------------------------

def run_drpo(ctx: MethodContext) -> dict:
    """Offline training from the same seed's SFT generator on the mixed-quality log of the
    training split (``vstar.train.drpo``), then the same beam-search evaluation. DRPO keeps no
    resumable state: a resumed run starts over. One process only."""
    cfg, prep, layout = ctx.cfg, ctx.prep, ctx.run.layout
    if dist.world_size() > 1:
        raise InputError("the offline DRPO modes run in one process, not under torchrun",
                         field="rl.drpo_mode")
    sft_ckpt = parent_run(ctx, "sft")
    vocab, trie = sid_tables(ctx)
    policy = load_model(sft_ckpt, vocab, trie.codes).to(ctx.device)
    rcfg = preset_rl_config(cfg.rl, ctx.method.name, ctx.method.preset)
    rcfg.validate()
    atomic_write_json(layout.rl_config, dataclasses.asdict(rcfg))
    if layout.rl_log.is_file():
        layout.rl_log.unlink()                     # offline runs start over (no saved state)
    train = prep.splits.train
    offline = build_offline_log(train, prep.data.n_items, rating_center=rcfg.drpo_rating_center,
                                negatives=rcfg.drpo_negatives,
                                negative_return=rcfg.drpo_negative_return, seed=ctx.seed)
    info = {"samples": len(offline), "injected": int(offline.injected.sum()),
            "with_ratings": train.target_ratings is not None,
            "return_mean": float(offline.returns.mean()),
            "negative_share": float((offline.returns < offline.returns.mean()).mean())}
    log.info("offline log: %d samples (%d injected random items), ratings %s, mean return %.3f",
             info["samples"], info["injected"], "yes" if info["with_ratings"] else "no (1.0)",
             info["return_mean"])
    trainer = DRPOTrainer(policy, vocab, trie, train, offline, rcfg, prep.splits.max_history,
                          seed=ctx.seed, autocast=ctx.autocast)
    info["kept_share"] = float((trainer.weights != 0).mean())
    t0 = time.perf_counter()
    trainer.train(layout.rl_log, progress=cfg.run.progress)
    train_s = time.perf_counter() - t0
    save_model(layout.generator_for(cfg.model.backbone), policy, vocab)
    hist = trainer.history
    keys = dict.fromkeys(k for h in hist for k in h if k not in ("step", "lr"))
    summary = {k: float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
               for k in keys
               for vals in [np.asarray([h[k] for h in hist if k in h], dtype=float)]}
    last = {f"{k}_last": float(hist[-1][k]) for k in ("max_token_nll", "entropy",
                                                      "grad_norm_neg", "nll_neg_mean")} \
        if hist else {}
    return ctx.evaluate(beam_ranker(ctx, policy, vocab, trie), train_s,
                        {"rl": {k: v for k, v in dataclasses.asdict(rcfg).items()
                                if not isinstance(v, dict)},
                         "rl_summary": {**summary, **last}, "offline_log": info},
                        {"seconds_per_rl_step": summary.get("step_seconds")})


# ---------------------------------------------------------------------------------------------
# registry entries
# ---------------------------------------------------------------------------------------------

_BEAM_GRPO = {"decoder": "beam", "sibling": False, "value_loss": False}
for _name, _mode, _help in (
        ("a2po", "fusion", "A2PO: beam groups + GRPO on a business reward anchored by a "
                           "semantic judge's advantage"),
        ("a2po_reward_sum", "reward_sum", "A2PO ablation: business + semantic reward summed, "
                                          "then z-scored"),
        ("a2po_adv_sum", "adv_sum", "A2PO ablation: business + semantic advantages summed")):
    register(Method(_name, run_a2po, kind="rl", help=_help,
                    preset={**_BEAM_GRPO, "a2po": _mode}))

for _name, _mode, _help in (
        ("drpo", "topk", "DRPO: offline likelihood on the top-alpha returns of a mixed log"),
        ("drpo_naive", "naive", "offline advantage-weighted likelihood on every sample"),
        ("drpo_positive", "positive", "offline advantage-weighted likelihood, positives only"),
        ("drpo_soft", "awr", "offline likelihood weighted by exp(A / tau) (AWR-style)")):
    register(Method(_name, run_drpo, kind="rl", help=_help,
                    preset={"sibling": False, "value_loss": False, "drpo_mode": _mode}))
