"""``vstar report RUN_DIR_OR_EXPERIMENT``: one self-contained HTML page about an experiment.

    path = build_report("runs/demo_ml100k")                 # -> runs/demo_ml100k/report.html
    path = build_report("runs/demo_ml100k/vstar/seed0", out="vstar0.html", baseline="sft")

The page needs nothing from the network: charts are PNGs inlined as data URIs (matplotlib),
search trees inline SVG, and there is no script. Its sections (each a ``<section id=...>``):

    comparison  mean +- std over seeds per (split, method), and a paired test of every method
                against a baseline (``vstar paired``: bootstrap CI and p, Wilcoxon p)
    curves      training curves per method, mean and min-max band over seeds: SFT per epoch
                (sft_history.json), RL per step (rl_log.jsonl)
    budget      beam search against VED at equal decode budgets, where a run has a budget curve
                (``vstar budget`` writes ``budget_<split>.json`` into the run folder)
    sids        the experiment's SIDs: collisions, codebook use, items per code at every level
    trees       for a few users of the split: the VED search tree beside the beam-search tree at
                the same decode budget, nodes coloured by V, sized by visit count, the target's
                path in red; the target's ranks and the returned items with their titles
    runs        the config, library versions and command of every run shown

A run folder as target shows that run (and the baseline's run of the same seed, for the paired
column); an experiment folder shows all its runs.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vstar.core.errors import InputError
from vstar.core.io import atomic_write_text, read_json, read_log_records
from vstar.core.layout import ExperimentLayout, RunLayout
from vstar.core.repro import utc_now
from vstar.eval.compare import DEFAULT_METRICS, compare_runs
from vstar.eval.paired import paired_comparison
from vstar.experiments.rundir import run_state

log = logging.getLogger(__name__)

# the RL curves drawn (those present in some rl_log.jsonl), in this order
RL_CURVES = ("reward_mean", "target_in_group", "kl", "loss_grpo", "loss_sib", "loss_value",
             "adv_std", "unique_items_per_G", "root_widenings_per_user",
             "sibling_groups_with_signal", "vdiag_pct_v", "value_return_corr", "lr",
             "step_seconds")
SFT_CURVES = ("train_loss", "valid_nll", "NDCG@10", "HR@10")
SECTIONS = ("comparison", "curves", "budget", "sids", "trees", "runs")


@dataclasses.dataclass
class ReportOptions:
    baseline: str | None = None      # paired column against this method (default: sft if shown)
    metric: str = "NDCG@10"          # the paired test's metric
    n_resamples: int = 2000          # bootstrap resamples of the paired test
    users: int = 3                   # users whose search trees are drawn
    tree_method: str | None = None   # the run whose trees are drawn (default: vstar, grpo_ved, ...)
    split: str = "test"              # the split the trees' users come from
    seed: int = 0                    # which users are drawn
    budget_files: Sequence[str] = ()  # more budget-curve JSON files (``vstar budget`` output)
    threads: int | None = None


# ------------------------------------------------------------------------------- the runs shown

def report_runs(target: str | Path) -> tuple[ExperimentLayout, list[RunLayout], bool]:
    """(experiment, run folders to show, target is one run). A run folder is
    ``<experiment>/<method>/seed<k>`` with a config.yaml; an experiment holds such folders."""
    path = Path(target)
    if not path.is_dir():
        raise InputError("expected an experiment folder or a run folder <experiment>/<method>/"
                         "seed<k>", file=str(path))
    try:
        run = RunLayout.of(path)
    except InputError:
        run = None
    if run is not None:
        return run.experiment, [run], True
    experiment = ExperimentLayout(path)
    runs = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            runs += [r for r in experiment.seed_runs(sub.name).values() if r.config.is_file()]
        except InputError:
            continue
    if not runs:
        raise InputError("no run folders (<method>/seed<k>/config.yaml) found", file=str(path))
    return experiment, runs, False


# ----------------------------------------------------------------------------------- helpers

def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _png(fig, alt: str) -> str:
    """A matplotlib figure as an inline PNG ``<img>`` (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="chart" alt="{_esc(alt)}" src="data:image/png;base64,{data}"/>'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def seed_band(curves: Sequence[dict[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """Curves of several seeds (step -> value) -> (steps, mean, min, max) over the seeds at every
    step some seed has a finite value for (NaN and missing values are left out)."""
    steps = sorted({s for c in curves for s, v in c.items() if v is not None and math.isfinite(v)})
    table = np.full((len(curves), len(steps)), np.nan)
    for i, c in enumerate(curves):
        for j, s in enumerate(steps):
            v = c.get(s)
            if v is not None and math.isfinite(v):
                table[i, j] = v
    if not steps:
        empty = np.zeros(0)
        return [], empty, empty, empty
    return steps, np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)




def _by_method(runs: Sequence[RunLayout]) -> dict[str, list[RunLayout]]:
    out: dict[str, list[RunLayout]] = {}
    for r in runs:
        out.setdefault(r.method, []).append(r)
    return out


# ------------------------------------------------------------------------------ 1. comparison

def _default_baseline(methods: Sequence[str]) -> str | None:
    if "sft" in methods and len(set(methods)) > 1:
        return "sft"
    return sorted(methods)[0] if methods else None


def comparison_section(experiment: ExperimentLayout, runs: Sequence[RunLayout],
                       opts: ReportOptions) -> str:
    with_metrics = [r for r in runs if any(r.metrics(s).is_file() for s in ("test", "valid"))]
    if not with_metrics:
        return _note("no run has metrics yet (metrics.json)")
    rows = compare_runs([r.path for r in with_metrics])
    methods = sorted({r.method for r in with_metrics})
    baseline = opts.baseline or _default_baseline(methods)
    seeds = sorted({r.seed for r in with_metrics if r.seed is not None})
    names = rows[0]["metrics"] if rows else list(DEFAULT_METRICS)
    parts = [f"<p>Mean ± std over seeds; the last column is a paired test over the split's "
             f"users of each method against <b>{_esc(baseline)}</b> on {_esc(opts.metric)} "
             f"(per-user values averaged over seeds; bootstrap CI and p with "
             f"{opts.n_resamples} resamples, Wilcoxon p; <code>vstar paired</code>).</p>"]
    for split in sorted({r["split"] for r in rows}, key=lambda s: (s != "valid", s)):
        best = {}
        for name in names:
            vals = [r["mean"][name] for r in rows if r["split"] == split
                    and r["mean"][name] is not None]
            best[name] = max(vals) if vals else None
        head = "".join(f"<th>{_esc(n)}</th>" for n in names)
        body = []
        for row in (r for r in rows if r["split"] == split):
            cells = []
            for name in names:
                mean, std = row["mean"][name], row["std"][name]
                text = "n/a" if mean is None else f"{mean:.4f} ± {std:.4f}"
                bold = mean is not None and mean == best[name]
                cells.append(f"<td>{'<b>' if bold else ''}{text}{'</b>' if bold else ''}</td>")
            cells.append(f"<td>{_paired_cell(experiment, row['method'], baseline, split, seeds, opts)}</td>")
            body.append(f"<tr><td>{_esc(row['method'])}</td><td>{row['n']}</td>"
                        f"<td>{_esc(', '.join(map(str, row['seeds'])))}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{_esc(split)} split ({_esc(rows[0]['dataset'])}, "
                     f"{_esc(rows[0]['protocol'])})</h3><table class=\"cmp\"><tr><th>method</th>"
                     f"<th>n</th><th>seeds</th>{head}<th>Δ {_esc(opts.metric)} vs "
                     f"{_esc(baseline)} [95% CI], p boot / Wilcoxon</th></tr>{''.join(body)}"
                     f"</table>")
    return "".join(parts)


def _paired_cell(experiment: ExperimentLayout, method: str, baseline: str | None, split: str,
                 seeds: Sequence[int], opts: ReportOptions) -> str:
    if baseline is None or method == baseline:
        return "(baseline)" if method == baseline else ""
    try:
        res = paired_comparison(experiment.root, method, baseline, metric=opts.metric,
                                split=split, n_resamples=opts.n_resamples, seeds=seeds)
    except InputError as err:
        return f'<span class="na" title="{_esc(err)}">n/a</span>'
    sign = "pos" if res["ci_low"] > 0 else "neg" if res["ci_high"] < 0 else ""
    return (f'<span class="{sign}">{res["diff"]:+.4f} [{res["ci_low"]:+.4f}, '
            f'{res["ci_high"]:+.4f}]</span>, p {res["p_bootstrap"]:.3g} / {res["p_wilcoxon"]:.3g}')


# ---------------------------------------------------------------------------------- 2. curves

def sft_curves(runs: Sequence[RunLayout]) -> dict[str, dict[str, list[dict[int, float]]]]:
    """method -> curve name -> one {epoch (1-based): value} per seed, from sft_history.json."""
    out: dict[str, dict[str, list[dict[int, float]]]] = {}
    for r in runs:
        if not r.sft_history.is_file():
            continue
        history, _ = read_json(r.sft_history)
        curves = out.setdefault(r.method, {})
        for name in {k for rec in history for k in rec} - {"epoch"}:
            curves.setdefault(name, []).append(
                {int(rec["epoch"]) + 1: float(rec[name]) for rec in history
                 if isinstance(rec.get(name), (int, float))})
    return out


def rl_curves(runs: Sequence[RunLayout]) -> dict[str, dict[str, list[dict[int, float]]]]:
    """method -> curve name -> one {step: value} per seed, from rl_log.jsonl."""
    out: dict[str, dict[str, list[dict[int, float]]]] = {}
    for r in runs:
        if not r.rl_log.is_file():
            continue
        records = read_log_records(r.rl_log)
        curves = out.setdefault(r.method, {})
        for name in {k for rec in records for k in rec} - {"step"}:
            curves.setdefault(name, []).append(
                {int(rec["step"]): float(rec[name]) for rec in records
                 if isinstance(rec.get(name), (int, float)) and "step" in rec})
    return out


def _curve_grid(curves: dict[str, dict[str, list[dict[int, float]]]], names: Sequence[str],
                xlabel: str, title: str) -> str:
    shown = [n for n in names if any(n in c for c in curves.values())]
    if not shown:
        return ""
    plt = _pyplot()
    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.5 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, shown):
        for i, (method, by_name) in enumerate(sorted(curves.items())):
            if name not in by_name:
                continue
            steps, mean, lo, hi = seed_band(by_name[name])
            if not steps:
                continue
            c = colours[i % len(colours)]
            n_seeds = len(by_name[name])
            ax.plot(steps, mean, color=c, lw=1.4, label=f"{method} ({n_seeds} seed"
                                                         f"{'s' if n_seeds > 1 else ''})")
            if n_seeds > 1:
                ax.fill_between(steps, lo, hi, color=c, alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=min(5, max(1, len(labels))),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, y=0.99, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.5 * nrows)))
    return _png(fig, title)


def curves_section(runs: Sequence[RunLayout]) -> str:
    parts = []
    sft = sft_curves(runs)
    if sft:
        parts.append(_curve_grid(sft, SFT_CURVES, "epoch", "SFT per epoch (sft_history.json)"))
    rl = rl_curves(runs)
    if rl:
        parts.append(_curve_grid(rl, RL_CURVES, "step", "RL per step (rl_log.jsonl; the first "
                                 "steps of VED methods are the value warm-up)"))
    if not parts:
        return _note("no training curves: no run has sft_history.json or rl_log.jsonl")
    return ("<p>Line: mean over seeds; band: min to max over seeds. Every curve is also in "
            "TensorBoard: <code>tensorboard --logdir " + _esc("<run.out_dir>") + "</code>.</p>"
            + "".join(parts))


# ---------------------------------------------------------------------------------- 3. budget

def budget_section(runs: Sequence[RunLayout], extra: Sequence[str]) -> str:
    from vstar.eval.budget import plot_budget_curve

    files = [r.budget_curve(s) for r in runs for s in ("valid", "test")
             if r.budget_curve(s).is_file()] + [Path(p) for p in extra]
    if not files:
        return _note("no budget curve: run `vstar budget RUN_DIR` on an RL run folder (it writes "
                     "budget_<split>.json into the folder), or pass --budget-curve FILE")
    parts = []
    import tempfile

    for f in files:
        payload, _ = read_json(f)
        records = payload.get("records") or []
        if not records or any("HR@10" not in r for r in records):
            parts.append(_note(f"{f}: no HR@10 records"))
            continue
        title = (f"{payload.get('dataset', '')} {payload.get('split', '')}, "
                 f"{payload.get('n_users', '?')} users ({f.parent.parent.name}/{f.parent.name})")
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_budget_curve(records, Path(tmp) / "budget.png", title=title)
            data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<div class="budget"><img class="chart" alt="budget curve {_esc(title)}" '
                     f'src="data:image/png;base64,{data}"/>')
        rows = []
        for w in sorted({r["width"] for r in records}):
            beam = next((r for r in records if r["width"] == w and r["decoder"] == "beam"), {})
            ved = next((r for r in records if r["width"] == w and r["decoder"] == "ved"), {})
            rows.append(f"<tr><td>{w}</td><td>{_fmt(beam.get('budget_per_user'))}</td>"
                        f"<td>{_fmt(beam.get('HR@10'))}</td><td>{_fmt(ved.get('HR@10'))}</td>"
                        f"<td>{_fmt(beam.get('decode_forward_tokens_per_user'), 1)}</td>"
                        f"<td>{_fmt(ved.get('decode_forward_tokens_per_user'), 1)}</td>"
                        f"<td>{_fmt(1e3 * beam['wall_seconds_per_user'] if 'wall_seconds_per_user' in beam else None, 2)}</td>"
                        f"<td>{_fmt(1e3 * ved['wall_seconds_per_user'] if 'wall_seconds_per_user' in ved else None, 2)}</td></tr>")
        parts.append("<table><tr><th>W</th><th>budget / user</th><th>beam HR@10</th>"
                     "<th>VED HR@10</th><th>beam tokens / user</th><th>VED tokens / user</th>"
                     "<th>beam ms / user</th><th>VED ms / user</th></tr>" + "".join(rows)
                     + f"</table><p class=\"src\">{_esc(f)}</p></div>")
    return "".join(parts)


# ------------------------------------------------------------------------------------ 4. SIDs

def sid_section(experiment: ExperimentLayout) -> str:
    from vstar.sid.index_io import read_index_json
    from vstar.sid.tokens import codes_from_sids

    if not experiment.sid_report.is_file():
        return _note(f"no SID report ({experiment.sid_report})")
    report, _ = read_json(experiment.sid_report)
    keys = [("method", "method"), ("vectors", "vectors"), ("collisions", "collision handling"),
            ("n_items", "items"), ("codebook_sizes", "codebook sizes"),
            ("collision_rate_before", "collision rate before"),
            ("collision_rate_after", "collision rate after"),
            ("max_items_per_sid_before", "most items on one SID before"),
            ("codebook_usage", "codebook use per level"),
            ("usage_perplexity", "usage perplexity per level")]
    rows = "".join(f"<tr><th>{_esc(label)}</th><td>{_esc(_short(report[k]))}</td></tr>"
                   for k, label in keys if k in report)
    parts = [f"<table class=\"kv\">{rows}</table>"]
    if experiment.sid_index.is_file():
        index = read_index_json(experiment.sid_index)
        sids = codes_from_sids(list(index.values()), report.get("codebook_sizes"),
                               file=str(experiment.sid_index), keys=list(index))
        parts.append(_sid_chart(np.asarray(sids.codes), list(sids.codebook_sizes), report))
    return "".join(parts)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def _sid_chart(codes: np.ndarray, sizes: list[int], report: dict) -> str:
    """One bar chart per level: items per code (codebook use), plus the collision rates."""
    plt = _pyplot()
    L = codes.shape[1]
    fig, axes = plt.subplots(1, L + 1, figsize=(3.3 * (L + 1), 2.6), squeeze=False)
    for lvl in range(L):
        counts = np.bincount(codes[:, lvl], minlength=sizes[lvl])
        used = int((counts > 0).sum())
        ax = axes[0, lvl]
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="#4c78a8")
        ax.set_title(f"level {lvl + 1}: items per code ({used}/{sizes[lvl]} used)", fontsize=8)
        ax.set_xlabel("code", fontsize=8)
        ax.tick_params(labelsize=7)
    ax = axes[0, L]
    before = float(report.get("collision_rate_before", float("nan")))
    after = float(report.get("collision_rate_after", float("nan")))
    ax.bar(["before", "after"], [before, after], color=["#e45756", "#54a24b"])
    ax.set_title("items sharing a SID (collision rate)", fontsize=8)
    ax.tick_params(labelsize=7)
    for i, v in enumerate((before, after)):
        if math.isfinite(v):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    return _png(fig, "SID codebook use and collisions")


# ----------------------------------------------------------------------------------- 5. trees

def _tree_run(runs: Sequence[RunLayout], experiment: ExperimentLayout,
              method: str | None) -> RunLayout | None:
    """The run whose search trees are drawn: ``method`` if given, else the first of vstar,
    grpo_ved, any RL run, sft (lowest seed) among the runs shown (or the experiment's)."""
    pool = list(runs)
    if method is not None:
        cands = [r for r in pool if r.method == method]
        if not cands:
            cands = list(experiment.seed_runs(method).values())
        return min(cands, key=lambda r: r.seed or 0) if cands else None
    for pick in ("vstar", "grpo_ved"):
        cands = [r for r in pool if r.method == pick and r.rl_state.is_file()]
        if cands:
            return min(cands, key=lambda r: r.seed or 0)
    cands = [r for r in pool if r.rl_state.is_file()] or \
        [r for r in pool if r.generator_checkpoint.exists()]
    return min(cands, key=lambda r: (r.method, r.seed or 0)) if cands else None


def _title(data: Any, item: int) -> str:
    ident = str(data.item_ids[item])
    if data.item_text:
        text = data.item_text[item].split(". ")[0].strip()
        return f"{ident}: {text}" if text else ident
    return ident


def trees_section(runs: Sequence[RunLayout], experiment: ExperimentLayout,
                  opts: ReportOptions) -> str:
    if opts.users < 1:
        return _note("no search trees asked for (--users 0)")
    run = _tree_run(runs, experiment, opts.tree_method)
    if run is None:
        return _note("no search trees: no run with a generator checkpoint")
    try:
        return _trees(run, opts)
    except (InputError, OSError) as err:
        log.warning("search trees not drawn: %s", err)
        return _note(f"no search trees for {run.path}: {err}")


def _trees(run: RunLayout, opts: ReportOptions) -> str:
    import torch

    from vstar.decode.beam import beam_search
    from vstar.decode.config import VEDConfig
    from vstar.decode.ved import value_guided_decode
    from vstar.eval.metrics import target_ranks
    from vstar.eval.trees import (beam_tree_nodes, colour_bar_svg, prefix_values, tree_svg,
                                  ved_tree_nodes)
    from vstar.experiments.budget import load_run

    loaded = load_run(run.path, threads=opts.threads)
    data, splits, vocab, trie, model = (loaded.data, loaded.splits, loaded.vocab, loaded.trie,
                                        loaded.model)
    model.eval()
    rows = getattr(splits, opts.split)
    if len(rows) == 0:
        return _note(f"the {opts.split} split has no rows")
    L = vocab.n_levels
    rl = loaded.rl_cfg
    W = rl.n_candidates if rl is not None else 16
    ved_cfg = dataclasses.replace(rl.ved if rl is not None else VEDConfig(), budget=None,
                                  budget_multiplier=1.0)
    if loaded.value_head is not None:
        value_fn = loaded.value_head.eval()
        value_note = ("VED decodes with the run's trained value head (as <code>vstar budget</code>"
                      " and <code>vstar serve</code> do)")
    else:
        def value_fn(h):
            return h.new_zeros(h.shape[:-1])
        value_note = "an SFT run has no value head: VED decodes with V = 0 (priority lam * H)"
    rng = np.random.default_rng(opts.seed)
    pool = np.sort(rng.choice(len(rows), size=min(len(rows), 128), replace=False))
    tokens, mask = vocab.encode_histories([rows.histories[i] for i in pool], trie.codes,
                                          max_items=splits.max_history)
    targets = torch.as_tensor(np.asarray(rows.targets)[pool], dtype=torch.long)
    target_codes = trie.codes[targets]
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="VED: an initial beam")
        trace: list = []
        beam = beam_search(model, vocab, trie, tokens, mask, W, trace=trace)
        ved = value_guided_decode(model, value_fn, vocab, trie, tokens, mask, W, ved_cfg,
                                  generator=torch.Generator().manual_seed(opts.seed))
    r_beam = target_ranks(beam.items.numpy(), targets.numpy())
    r_ved = target_ranks(ved.items.numpy(), targets.numpy())
    hits = np.flatnonzero((r_beam > 0) | (r_ved > 0))
    n_hit = min(len(hits), (opts.users + 1) // 2)
    chosen = [int(i) for i in rng.choice(hits, size=n_hit, replace=False)] if n_hit else []
    rest = [int(i) for i in rng.permutation(len(pool)) if i not in chosen]
    chosen += rest[:opts.users - len(chosen)]
    eval_ranks = None
    if run.ranks(opts.split).is_file():
        eval_ranks = np.load(run.ranks(opts.split))
    beam_prefixes = []
    for b in chosen:
        pre = [()]
        for codes, scores in trace[:-1]:
            pre += [tuple(c) for c, s in zip(codes[b].tolist(), scores[b].tolist())
                    if math.isfinite(s)]
        beam_prefixes.append(pre)
    values = prefix_values(model, value_fn, vocab, trie, tokens[chosen], mask[chosen],
                           beam_prefixes)
    parts = [f"<p>Run <code>{_esc(run.path)}</code>, {len(chosen)} users of the "
             f"{_esc(opts.split)} split. Both decoders get the same budget: "
             f"{(L - 1) * W} decode forward tokens per user (beam search of width {W}; VED with "
             f"{W} candidates, initial beam {ved_cfg.init_beam}, lam {ved_cfg.lam}, beta "
             f"{ved_cfg.beta}). {value_note}. Node colour: V; size: visit count N (nodes in its "
             f"subtree); red: the target's SID path and item; squares: the returned items "
             f"(#rank). Hover a node for its numbers. About half of the users are drawn among "
             f"those whose target one of the two lists holds ({len(hits)} of {len(pool)} "
             f"sampled users), the rest at random.</p>"]
    for b in chosen:
        b = int(b)
        row = int(pool[b])
        tgt = int(targets[b])
        ved_nodes = ved_tree_nodes(ved, b, target_codes[b].tolist(), tgt)
        beam_nodes = beam_tree_nodes(trace, beam, b, target_codes[b].tolist(), tgt,
                                     values[chosen.index(b)])
        vs = [n["V"] for n in ved_nodes + beam_nodes if math.isfinite(n["V"])]
        vmin, vmax = (min(vs), max(vs)) if vs else (0.0, 1.0)
        items = {int(i) for i in ved.items[b].tolist() + beam.items[b].tolist() if i >= 0}
        labels = {i: _title(data, i) for i in items | {tgt}}
        history = [_title(data, int(i)) for i in rows.histories[row][-5:]]
        ranks = (f"target <b>{_esc(labels[tgt])}</b>: rank in VED's list "
                 f"{_rank(r_ved[b])}, in beam search's {_rank(r_beam[b])}")
        if eval_ranks is not None and row < len(eval_ranks):
            ranks += f", in the run's evaluation ranking (beam search) {_rank(int(eval_ranks[row]))}"
        table = "".join(
            f"<tr><td>{k + 1}</td>{_item_cell(ved.items[b, k], tgt, labels)}"
            f"{_item_cell(beam.items[b, k], tgt, labels)}</tr>" for k in range(W))
        parts.append(
            f'<div class="user"><h3>user row {row} of {_esc(opts.split)}</h3>'
            f"<p>last items of the history: {_esc(' | '.join(history))}</p><p>{ranks}</p>"
            f"{colour_bar_svg(vmin, vmax)}"
            f'<div class="pair"><div>{tree_svg(ved_nodes, vmin, vmax, labels, title=f"VED: {int(ved.n_expansions[b])} expansions, {int(ved.tokens_per_user[b])} tokens")}</div>'
            f'<div>{tree_svg(beam_nodes, vmin, vmax, labels, title=f"beam search, width {W}: {int(beam.tokens_per_user[b])} tokens")}</div>'
            f'<div><table class="items"><tr><th>#</th><th>VED</th><th>beam</th></tr>{table}'
            f"</table></div></div></div>")
    return "".join(parts)


def _rank(r: int) -> str:
    return f"<b>{int(r)}</b>" if r > 0 else "not in the list"


def _item_cell(item, target: int, labels: dict[int, str]) -> str:
    item = int(item)
    if item < 0:
        return "<td>-</td>"
    cls = ' class="hit"' if item == target else ""
    return f"<td{cls}>{_esc(labels.get(item, item))}</td>"


# ------------------------------------------------------------------------------------ 6. runs

def runs_section(runs: Sequence[RunLayout]) -> str:
    parts = []
    for r in runs:
        versions = {}
        if r.versions.is_file():
            versions, _ = read_json(r.versions)
        command = versions.get("command") or "(not recorded: the run predates it)"
        config = r.config.read_text(encoding="utf-8") if r.config.is_file() else "(no config.yaml)"
        vrows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                        for k, v in versions.items())
        parts.append(
            f'<details class="run"><summary><b>{_esc(r.method)}/{_esc(r.path.name)}</b> '
            f"({_esc(run_state(r.path))}): <code>{_esc(command)}</code></summary>"
            f'<div class="pair"><div><h4>versions.json</h4><table class="kv">{vrows}</table>'
            f"</div><div><h4>config.yaml</h4><pre>{_esc(config)}</pre></div></div></details>")
    return "".join(parts)


# ------------------------------------------------------------------------------------ the page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1800px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ccc;
padding-bottom:4px;margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ddd;
padding:3px 6px;text-align:left;vertical-align:top}table.cmp td{text-align:right}
table.cmp td:first-child{text-align:left}.pos{color:#1a7f37}.neg{color:#c0392b}
.na{color:#888}.note{color:#666;font-style:italic}.src{color:#888;font-size:11px}
img.chart{max-width:100%;display:block;margin:8px 0}.pair{display:flex;gap:16px;
flex-wrap:wrap;align-items:flex-start}svg.tree text{font-size:10px;font-family:inherit}
svg.tree .tree-title{font-size:12px;font-weight:bold}svg.legend text{font-size:10px}
td.hit{background:#fde2e1;font-weight:bold}pre{font-size:11px;background:#f6f8fa;
padding:8px;max-height:420px;overflow:auto}details.run{margin:6px 0}
.user{border-top:1px dashed #ccc;margin-top:12px}
"""


def build_report(target: str | Path, out: str | Path | None = None,
                 opts: ReportOptions | None = None) -> Path:
    """Write the HTML report of an experiment or run folder; returns its path (default
    ``<experiment>/report.html``, or ``report.html`` in a run folder given as target)."""
    opts = opts or ReportOptions()
    if opts.users < 0:
        raise InputError(f"got {opts.users}, expected a number of users >= 0", field="--users")
    if opts.n_resamples < 1:
        raise InputError(f"got {opts.n_resamples}, expected >= 1", field="--n-resamples")
    if opts.split not in ("valid", "test"):
        raise InputError(f"got {opts.split!r}, expected 'valid' or 'test'", field="--split")
    experiment, runs, one_run = report_runs(target)
    shown = list(runs)
    if one_run and opts.baseline:                 # the baseline's run of the same seed
        base = experiment.run(opts.baseline, runs[0].seed or 0)
        if base.path.resolve() != runs[0].path.resolve() and base.config.is_file():
            shown.append(base)
    out = Path(out) if out is not None else (runs[0].report if one_run else experiment.report)
    sections = {
        "comparison": ("Comparison", comparison_section(experiment, shown, opts)),
        "curves": ("Training curves", curves_section(runs)),
        "budget": ("Inference budget: beam search against VED", budget_section(runs, opts.budget_files)),
        "sids": ("Semantic IDs", sid_section(experiment)),
        "trees": ("Search trees at equal budget", trees_section(runs, experiment, opts)),
        "runs": ("Runs: config, versions, command", runs_section(shown)),
    }
    nav = " · ".join(f'<a href="#{k}">{_esc(t)}</a>' for k, (t, _) in sections.items())
    body = "".join(f'<section id="{k}"><h2>{_esc(t)}</h2>{content}</section>'
                   for k, (t, content) in sections.items())
    methods = sorted({r.method for r in runs})
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<title>vstar report: {_esc(experiment.name)}</title><style>{CSS}</style></head>"
            f"<body><h1>vstar report: {_esc(experiment.name)}</h1>"
            f"<p>{len(runs)} run folder(s) of {_esc(experiment.root)}: methods "
            f"{_esc(', '.join(methods))}. Written {_esc(utc_now())}.</p><nav>{nav}</nav>"
            f"{body}</body></html>\n")
    atomic_write_text(out, page)
    return out
