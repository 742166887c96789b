"""The built-in methods: each a runner registered under its name (``vstar.experiments.registry``).

    popularity         most popular training items                      (baseline)
    sasrec             SASRec, full-softmax cross-entropy                (baseline)
    sft                the SID generator, next-item SFT                  (sft)
    rl                 RL from the SFT generator with the config's rl section as is
    grpo_beam          beam-search groups + GRPO (the MiniOneRec recipe)
    grpo_beam_sibling  ... + Sibling-GRPO
    grpo_ved           VED groups + GRPO (value head trained with TD)
    vstar              VED + Sibling-GRPO: full V-STAR
    gspo, dapo, grpo_beam_tree, hepo, hepo_vbeam, sdpo
                       other RL methods on beam groups (docs/method.md "Other RL methods")

Every runner trains (or fits) one seed in ``ctx.run`` and evaluates through ``ctx.evaluate``:
full-catalogue ranking of the evaluation splits (constrained beam search of width
``eval.beam_width`` for generators), so every row of a table is measured the same way.
An RL recipe is a runner (``run_rl``) plus a preset of ``rl.*`` overrides. VED without the value
loss would decode with an untrained value (the authors' released-code bug), so the VED rows keep
the TD loss on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from vstar.baselines import PopularityRecommender, train_sasrec
from vstar.core import dist
from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json
from vstar.data.splits import hold_out_last
from vstar.data.types import SplitRows
from vstar.decode.beam import item_head_decoder
from vstar.decode.rank import rank_rows
from vstar.decode.trie import SidTrie
from vstar.experiments.collab import (ranking_metrics, sasrec_device, sasrec_validation,
                                      teacher_sasrec)
from vstar.experiments.pipeline import MethodContext, Ranker, parent_run
from vstar.experiments.registry import Method, register
from vstar.model.backbone import SidModel, load_model, make_model_vocab, new_model, save_model
from vstar.model.vocab import SidVocab
from vstar.train.rl import RLTrainer
from vstar.train.config import RLConfig
from vstar.train.sft import train_sft

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------

def timed_ranker(model: Any, width: int) -> Ranker:
    """rank(rows, split) for a model with ``.rank(histories, k)`` (popularity, SASRec)."""
    def rank(rows: SplitRows, split: str):
        t0 = time.perf_counter()
        ranked = model.rank(rows.histories, width)
        wall = time.perf_counter() - t0
        return ranked, {"wall_seconds": wall, "wall_seconds_per_user": wall / max(1, len(rows)),
                        "invalid_rate": 0.0}
    return rank


def beam_ranker(ctx: MethodContext, model: SidModel, vocab: SidVocab, trie: SidTrie) -> Ranker:
    """rank(rows, split) for a SID generator: constrained beam search of width eval.beam_width."""
    cfg = ctx.cfg

    def rank(rows: SplitRows, split: str):
        with ctx.precision():                      # run.autocast (scores stay float32)
            return rank_rows(model, vocab, trie, rows, cfg.eval.beam_width,
                             batch_size=cfg.eval.batch_size,
                             max_history=ctx.prep.splits.max_history,
                             decoder=item_head_decoder(cfg.eval.beam_width, cfg.eval.item_head),
                             progress=cfg.run.progress, desc=f"beam search {split}")
    return rank




def sid_tables(ctx: MethodContext) -> tuple[SidVocab, SidTrie]:
    """The vocabulary the configured generator reads, and the SID trie on the run's device
    (where the generator is: decoders look codes up next to the logits)."""
    sids = ctx.prep.sids
    return (make_model_vocab(ctx.cfg.model, sids.codebook_sizes, sids.n_items,
                             ctx.prep.data.item_text),
            SidTrie(sids.codes, sids.codebook_sizes).to(ctx.device))


def keep_logged_steps(log_path, step: int) -> list[dict]:
    """Cut ``rl_log.jsonl`` back to the records of steps <= ``step`` (those a resumed state has
    seen; later ones were logged after its last checkpoint and will be redone) and return them."""
    import json

    from vstar.core.io import atomic_write_text, read_log_records

    if not log_path.is_file():
        return []
    kept = [r for r in read_log_records(log_path) if r.get("step", step + 1) <= step]
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


# ---------------------------------------------------------------------------------------------
# runners
# ---------------------------------------------------------------------------------------------

def run_popularity(ctx: MethodContext) -> dict:
    t0 = time.perf_counter()
    model = PopularityRecommender().fit(ctx.prep.splits.train, ctx.prep.data.n_items)
    return ctx.evaluate(timed_ranker(model, ctx.cfg.eval.beam_width), time.perf_counter() - t0, {})


def run_sasrec(ctx: MethodContext) -> dict:
    cfg, splits = ctx.cfg, ctx.prep.splits
    scfg = dataclasses.replace(cfg.sasrec, max_len=splits.max_history,
                               device=sasrec_device(cfg, ctx.device))

    t0 = time.perf_counter()
    # baselines are not data-parallel: under torchrun each rank trains the same SASRec (same
    # seed) and rank 0 saves it
    model = train_sasrec(splits, ctx.prep.data.n_items, scfg, seed=ctx.seed,
                         validate=sasrec_validation(splits, scfg),
                         checkpoint_path=ctx.run.layout.sasrec if dist.is_main() else None)
    return ctx.evaluate(timed_ranker(model, cfg.eval.beam_width), time.perf_counter() - t0,
                        {"n_parameters": sum(p.numel() for p in model.parameters())})


def run_sft(ctx: MethodContext) -> dict:
    cfg, splits = ctx.cfg, ctx.prep.splits
    vocab, trie = sid_tables(ctx)
    model = new_model(cfg.model, vocab, trie.codes, splits.max_history).to(ctx.device)
    log.info("generator (%s backbone): %d parameters, vocabulary %d, %d SID levels, on %s",
             cfg.model.backbone, model.num_parameters(), vocab.size, vocab.n_levels, ctx.device)

    def validate(model: SidModel, rows: SplitRows) -> dict:
        with ctx.precision():
            ranked, _ = rank_rows(model, vocab, trie, rows, cfg.sft.val_beam,
                                  max_history=splits.max_history,
                                  decoder=item_head_decoder(cfg.sft.val_beam, cfg.eval.item_head))
        return ranking_metrics(ranked, rows.targets, 10)

    t0 = time.perf_counter()
    teacher = None
    if cfg.sft.distill > 0:
        with dist.main_first():                   # rank 0 trains and saves it if missing
            teacher = teacher_sasrec(cfg, splits, ctx.prep.data.n_items, ctx.experiment.teacher)
    item_teacher = None
    if cfg.sft.item_distill > 0:                  # the experiment's teacher, or a wider SASRec
        width = cfg.sft.item_teacher_hidden
        item_teacher = teacher if width == 0 and teacher is not None else None
        if item_teacher is None:
            with dist.main_first():
                item_teacher = teacher_sasrec(
                    cfg, splits, ctx.prep.data.n_items, ctx.experiment.item_teacher(width),
                    hidden=width, baseline=ctx.experiment.run("sasrec", cfg.sid.seed))
    sft_splits = splits
    if cfg.sft.rl_holdout:                        # RL's rows stay unseen by SFT
        sft_rows, held = hold_out_last(splits.train, cfg.sft.rl_holdout)
        sft_splits = dataclasses.replace(splits, train=sft_rows)
        log.info("sft.rl_holdout=%d: %d training rows for SFT, %d held out for RL",
                 cfg.sft.rl_holdout, len(sft_rows), len(held))
    model, history = train_sft(model, vocab, trie, sft_splits, cfg.sft, seed=ctx.seed,
                               validate=validate, progress=cfg.run.progress, teacher=teacher,
                               checkpoint_path=ctx.run.layout.sft_state,
                               resume=ctx.run.resumed, scalars=ctx.scalars,
                               autocast=ctx.autocast, item_teacher=item_teacher)
    train_s = time.perf_counter() - t0
    if dist.is_main():
        atomic_write_json(ctx.run.layout.sft_history, history)
        save_model(ctx.run.layout.generator_for(cfg.model.backbone), model, vocab)
    return ctx.evaluate(beam_ranker(ctx, model, vocab, trie), train_s,
                        {"n_parameters": model.num_parameters(), "epochs": len(history),
                         "sid_levels": vocab.n_levels})


def rl_rows(ctx: MethodContext) -> SplitRows:
    """The training rows RL draws its users from: every training row, or with
    ``sft.rl_holdout`` = k the k last ones per user that the SFT generator never saw. The SFT
    run this RL run starts from must have been trained with the same k."""
    k = ctx.cfg.sft.rl_holdout
    parent_cfg = ctx.experiment.run("sft", ctx.seed).config
    if parent_cfg.is_file():
        saved = OmegaConf.select(OmegaConf.load(parent_cfg), "sft.rl_holdout", default=0)
        if saved != k:
            raise InputError(f"got {k}, but the SFT generator this run starts from was trained "
                             f"with sft.rl_holdout={saved}: RL would draw rows SFT "
                             f"{'saw' if k < saved else 'did not hold out'}",
                             field="sft.rl_holdout")
    rows = ctx.prep.splits.train
    if k:
        rows = hold_out_last(rows, k)[1]
        log.info("RL draws from the %d training rows held out from SFT (sft.rl_holdout=%d)",
                 len(rows), k)
    return rows


def preset_rl_config(rl: RLConfig, method: str, preset: dict) -> RLConfig:
    """The config's ``rl`` section with a recipe's preset applied. A field the config sets to
    something other than both its default and the preset's value is an InputError naming it:
    the preset would silently replace what the user asked for (sweep such a field with
    ``--method rl`` and the recipe's settings written out)."""
    defaults = RLConfig()
    for key, value in preset.items():
        mine = getattr(rl, key)
        if mine != value and mine != getattr(defaults, key):
            raise InputError(f"rl.{key}={mine!r} conflicts with method {method!r}, whose preset "
                             f"sets {key}={value!r}; drop the override or run --method rl with "
                             f"the recipe's settings ({preset}) and {key}={mine!r}",
                             field=f"rl.{key}")
    return dataclasses.replace(rl, **preset)


def run_rl(ctx: MethodContext, trainer_cls: type = RLTrainer,
           trainer_kwargs: dict | None = None, wrap_ranker: Any = None,
           extra: dict | None = None) -> dict:
    """RL from the same seed's SFT generator with ``rl.*`` + the method's preset, then the same
    beam-search evaluation. A recipe with its own trainer (A2PO) passes ``trainer_cls`` and its
    ``trainer_kwargs``, optionally ``wrap_ranker(rank) -> rank`` and ``extra`` for metrics.json."""
    cfg, prep, layout = ctx.cfg, ctx.prep, ctx.run.layout
    sft_ckpt = parent_run(ctx, "sft")        # finished, same SIDs and items; recorded as parent
    vocab, trie = sid_tables(ctx)
    policy = load_model(sft_ckpt, vocab, trie.codes).to(ctx.device)
    rcfg = preset_rl_config(cfg.rl, ctx.method.name, ctx.method.preset)
    rcfg.validate()
    if dist.is_main():
        atomic_write_json(layout.rl_config, dataclasses.asdict(rcfg))
    values = None
    if cfg.data.value_cols and cfg.data.value_cols[0] in prep.data.item_features:
        values = prep.data.item_features[cfg.data.value_cols[0]]
    rows = rl_rows(ctx)
    trainer = trainer_cls(policy, vocab, trie, rows, rcfg, prep.splits.max_history,
                          seed=ctx.seed, item_emb=prep.item_emb, item_values=values,
                          autocast=ctx.autocast, **(trainer_kwargs or {}))
    if ctx.run.resumed and layout.rl_state.is_file():     # only when asked (run.resume=true)
        trainer.load(layout.rl_state)
        if trainer.step_idx > rcfg.steps:
            raise InputError(f"got {rcfg.steps}, expected at least the {trainer.step_idx} steps "
                             f"the saved state already took", field="rl.steps")
        if dist.is_main():                                # the log is rank 0's
            trainer.history = keep_logged_steps(layout.rl_log, trainer.step_idx)
        log.info("resumed RL from %s at step %d", layout.rl_state, trainer.step_idx)
    elif layout.rl_log.is_file() and dist.is_main():
        layout.rl_log.unlink()                            # a resume without state starts over
    t0 = time.perf_counter()
    trainer.train(layout.rl_log, layout.rl_state, progress=cfg.run.progress, scalars=ctx.scalars)
    train_s = time.perf_counter() - t0
    trainer.save(layout.rl_state)                         # every rank (gathers RNGs), rank 0 writes
    if dist.is_main():
        save_model(layout.generator_for(cfg.model.backbone), policy, vocab)
    # the mean over RL steps (value warm-up steps left out) of every logged curve (exploration,
    # advantage spread, value diagnostic, cost); NaN entries (undefined in a step) are skipped
    hist = [h for h in trainer.history if not h.get("value_warmup")]
    keys = dict.fromkeys(k for h in hist for k in h if k not in ("step", "lr", "value_warmup"))
    summary = {k: float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
               for k in keys
               for vals in [np.asarray([h[k] for h in hist if k in h], dtype=float)]}
    ranker = beam_ranker(ctx, policy, vocab, trie)
    return ctx.evaluate(ranker if wrap_ranker is None else wrap_ranker(ranker), train_s,
                        {"rl": {k: v for k, v in dataclasses.asdict(rcfg).items()
                                if not isinstance(v, dict)}, "rl_summary": summary,
                         **(extra or {})},
                        {"seconds_per_rl_step": summary.get("step_seconds")})


# ---------------------------------------------------------------------------------------------
# the registry entries (docs/method.md section 8: the paper's ablation rows)
# ---------------------------------------------------------------------------------------------

register(Method("popularity", run_popularity, kind="baseline",
                help="most popular training items"))
register(Method("sasrec", run_sasrec, kind="baseline",
                help="SASRec with full-softmax cross-entropy over all items"))
register(Method("sft", run_sft, kind="sft", help="the SID generator after next-item SFT"))
register(Method("rl", run_rl, kind="rl", help="RL with the config's rl section as is"))

# name: (decoder, sibling, value_loss, help)
RL_RECIPES = {
    "grpo_beam": ("beam", False, False, "beam-search groups + GRPO (MiniOneRec recipe)"),
    "grpo_beam_sibling": ("beam", True, False, "beam-search groups + GRPO + Sibling-GRPO"),
    "grpo_ved": ("ved", False, True, "VED groups + GRPO, value head trained with TD"),
    "vstar": ("ved", True, True, "full V-STAR: VED groups + GRPO + Sibling-GRPO"),
}
for _name, (_decoder, _sibling, _value_loss, _help) in RL_RECIPES.items():
    register(Method(_name, run_rl, kind="rl", help=_help,
                    preset={"decoder": _decoder, "sibling": _sibling, "value_loss": _value_loss}))

# Other RL methods on beam-search groups (docs/method.md "Other RL methods"): name: (help, preset)
_BEAM_GRPO = {"decoder": "beam", "sibling": False, "value_loss": False}
OTHER_RL_RECIPES = {
    "grpo_beam_x2": ("beam groups + GRPO with 2 updates per batch (PPO clipping): the baseline "
                     "of gspo and dapo, which reuse each batch twice",
                     {**_BEAM_GRPO, "updates_per_batch": 2}),
    "gspo": ("beam groups + GRPO advantages with GSPO's sequence-level ratio (2 updates/batch)",
             {**_BEAM_GRPO, "ratio_level": "sequence", "updates_per_batch": 2}),
    "dapo": ("beam groups + GRPO, DAPO's zero-variance group filter, clip 0.2/0.28, no KL, "
             "2 updates/batch",
             {**_BEAM_GRPO, "filter_zero_variance": True, "clip_eps": 0.2,
              "clip_eps_high": 0.28, "kl_beta": 0.0, "updates_per_batch": 2}),
    "grpo_beam_tree": ("beam groups + a TreeRL-style tree advantage per token",
                       {**_BEAM_GRPO, "advantage": "treerl"}),
    "hepo": ("beam groups + GPR's HEPO: history process rewards, GAE over SID levels with the "
             "value head, per-level weights",
             {**_BEAM_GRPO, "value_loss": True, "advantage": "hepo", "value_gate": "always",
              "value_diag_every": 0}),
    "hepo_vbeam": ("HEPO on value-guided beam groups: each extension ranked by log pi + "
                   "rl.value_beam_weight * V(parent), so the beam widens under high-value nodes",
                   {**_BEAM_GRPO, "decoder": "value_beam", "value_loss": True,
                    "advantage": "hepo", "value_gate": "always", "value_diag_every": 0}),
    "sdpo": ("S-DPO: the logged target against the beam's other candidates, softmax DPO",
             {**_BEAM_GRPO, "policy_loss": "sdpo"}),
}
for _name, (_help, _preset) in OTHER_RL_RECIPES.items():
    register(Method(_name, run_rl, kind="rl", help=_help, preset=_preset))

# A2PO (S-GRec) and DRPO: runners and registry entries in their own module
from vstar.experiments import a2po_drpo as _a2po_drpo  # noqa: E402,F401  (registers them)
