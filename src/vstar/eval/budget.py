"""Inference budget curve: accuracy vs decode cost for beam search and VED at equal budgets.

For each width W, beam search of width W feeds (L-1)*W decode forward tokens per user (METHOD
Eq. 10; the history prefill is free); VED with n_candidates = W gets exactly that budget
(``VEDConfig.budget=None``, ``budget_multiplier=1``) and may spend less. Both rank the split's rows
through ``vstar.decode.rank.rank_rows``, so the numbers are the pipeline's evaluation numbers.

    model, value_head = load_rl_run("runs/scientific/vstar/seed0", vocab)
    records = budget_curve(model, value_head, vocab, trie, splits.test, widths=(10, 20, 50))
    plot_budget_curve(records, "bench/results/budget_curve.png")

``run_budget_curve`` does the whole thing for an RL run folder (``vstar budget RUN_DIR`` and
``bench/budget_curve.py``): it rebuilds the run's data, splits and SIDs and writes JSON + PNG.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vstar.data.types import SplitRows
from vstar.decode.beam import beam_search
from vstar.decode.rank import rank_rows
from vstar.decode.trie import SidTrie
from vstar.errors import InputError
from vstar.eval.metrics import hit_rate, ndcg, target_ranks
from vstar.io import atomic_path, atomic_write_json
from vstar.model.generator import GeneratorConfig, SidGenerator
from vstar.model.interface import SidLM
from vstar.model.vocab import SidVocab
from vstar.rl.ved import VEDConfig, make_ved_decoder
from vstar.rl.value import ValueHead, ValueHeadConfig

log = logging.getLogger(__name__)

DECODERS = ("beam", "ved")
_SHRINK_WARNING = "VED: an initial beam"   # ved.py warns when init_beam would eat the budget


def _tracked(decode, stats: dict):
    """Wrap a rank_rows decoder to record the most tokens any one user spent (and VED's search)."""

    def decoder(model, vocab, trie, tokens, mask):
        res = decode(model, vocab, trie, tokens, mask)
        B = tokens.shape[0]
        per_user = getattr(res, "forward_tokens_per_user", None)
        if isinstance(per_user, torch.Tensor):                  # VED: exact per-user spend [B]
            stats["max_tokens"] = max(stats["max_tokens"], int(per_user.max()))
            stats["expansions"] += int(res.n_expansions.sum())
            stats["incomplete"] += int((res.n_complete < res.items.shape[1]).sum())
            stats["init_beam"] = int(res.init_beam)
        else:                                                    # beam: the same for every user
            stats["max_tokens"] = max(stats["max_tokens"], res.forward_tokens / max(1, B))
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
# loading a trained RL run
# ---------------------------------------------------------------------------------------------

def _value_head_config(run_dir: Path, meta: dict) -> ValueHeadConfig:
    """rl_config.json's "value_head", else the trainer's saved config, else the defaults."""
    source, cfg = None, None
    if (run_dir / "rl_config.json").is_file():
        source = run_dir / "rl_config.json"
        try:
            cfg = json.loads(source.read_text()).get("value_head")
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err.msg})", file=str(source), line=err.lineno) \
                from None
    elif "config" in meta:
        source = run_dir / "rl_state.safetensors"
        cfg = json.loads(meta["config"]).get("value_head")
    if cfg is None:
        return ValueHeadConfig()
    try:
        return ValueHeadConfig(**cfg)
    except TypeError as err:
        raise InputError(f"bad value head config ({err})", file=str(source),
                         field="value_head") from None


def _generator_config(run_dir: Path, policy: dict[str, torch.Tensor]) -> GeneratorConfig:
    """From generator.safetensors' metadata; else config.yaml's model section + weight shapes."""
    gen_file = run_dir / "generator.safetensors"
    if gen_file.is_file():
        from safetensors import safe_open

        with safe_open(str(gen_file), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "generator_config" in meta:
            return GeneratorConfig(**json.loads(meta["generator_config"]))
    from omegaconf import OmegaConf

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise InputError("need generator.safetensors or config.yaml beside rl_state.safetensors "
                         "to know the generator's size", file=str(run_dir))
    model = OmegaConf.to_container(OmegaConf.load(cfg_file)).get("model", {})
    return GeneratorConfig(vocab_size=int(policy["wte.weight"].shape[0]),
                           block_size=int(policy["wpe.weight"].shape[0]),
                           n_layer=int(model.get("n_layer", 2)), n_head=int(model.get("n_head", 4)),
                           n_embd=int(policy["wte.weight"].shape[1]),
                           dropout=float(model.get("dropout", 0.0)))


def load_rl_run(run_dir: str | os.PathLike, vocab: SidVocab) -> tuple[SidGenerator, ValueHead]:
    """(generator, value head) of an RL run folder, from its ``rl_state.safetensors``.

    The file is the trainer's save (``RLTrainer.save``): keys ``policy.*`` and ``value.*``. The
    generator's size comes from generator.safetensors' metadata (or config.yaml), the value
    head's from rl_config.json's "value_head" (or the defaults). Both are returned in eval mode.
    """
    from safetensors import SafetensorError, safe_open

    run_dir = Path(run_dir)
    path = run_dir / "rl_state.safetensors"
    if not path.is_file():
        raise InputError("no rl_state.safetensors: expected the folder of an RL run "
                         "(<experiment>/<rl method>/seed<k>)", file=str(path))
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()
                       if k.startswith(("policy.", "value."))}
    except SafetensorError as err:
        raise InputError(f"not a readable safetensors file ({err})", file=str(path)) from None
    policy = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
    value = {k[len("value."):]: v for k, v in tensors.items() if k.startswith("value.")}
    if "wte.weight" not in policy or not value:
        raise InputError("expected the RL trainer's keys 'policy.*' (generator) and 'value.*' "
                         "(value head)", file=str(path))
    if policy["wte.weight"].shape[0] != vocab.size:
        raise InputError(f"the generator has a vocabulary of {policy['wte.weight'].shape[0]} "
                         f"tokens, the SIDs {vocab.codebook_sizes} give {vocab.size}: wrong SIDs "
                         f"for this run?", file=str(path), field="policy.wte.weight")
    model = SidGenerator(_generator_config(run_dir, policy))
    head = ValueHead(model.hidden_size, _value_head_config(run_dir, meta))
    for module, state, prefix in ((model, policy, "policy"), (head, value, "value")):
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise InputError(f"{prefix}.* weights do not fit the configured module: {err}",
                             file=str(path)) from None
    return model.eval(), head.eval()


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


# ---------------------------------------------------------------------------------------------
# the whole thing for a run folder (vstar budget / bench/budget_curve.py)
# ---------------------------------------------------------------------------------------------

def run_budget_curve(run_dir: str | os.PathLike, split: str = "test",
                     widths: Sequence[int] = (10, 20, 50), max_users: int | None = None,
                     out_dir: str | os.PathLike = "bench/results", batch_size: int | None = None,
                     threads: int | None = None) -> tuple[Path, Path, dict]:
    """Budget curve of an RL run folder ``<experiment>/<method>/seed<k>`` -> (json, png, payload).

    Rebuilds data and splits from the run's config.yaml and reads the experiment's SIDs from
    ``<experiment>/artifacts/sid.index.json`` (codebook sizes from sid_report.json). Evaluates the
    first ``max_users`` rows of ``split`` (all if None) at ``cfg.eval.ks``, with the run's VED
    config (rl_config.json's "ved", else the config's rl.ved). Writes
    ``<out_dir>/budget_curve_<experiment>_<method>_seed<k>_<split>.json`` and ``.png``.
    """
    from vstar.config import load_config
    from vstar.pipeline import prepare_data
    from vstar.sid import load_index_json

    run_dir = Path(run_dir)
    if split not in ("valid", "test"):
        raise InputError(f"split must be 'valid' or 'test', got {split!r}", field="split")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise InputError("no config.yaml: expected a run folder <experiment>/<method>/seed<k>",
                         file=str(cfg_file))
    cfg = load_config(cfg_file)
    torch.set_num_threads(threads or cfg.run.num_threads)
    artifacts = run_dir.resolve().parents[1] / "artifacts"
    report_file, index_file = artifacts / "sid_report.json", artifacts / "sid.index.json"
    if not report_file.is_file():
        raise InputError("the experiment's SID report is missing", file=str(report_file))
    report = json.loads(report_file.read_text())
    if "codebook_sizes" not in report:
        raise InputError("expected the key 'codebook_sizes'", file=str(report_file),
                         field="codebook_sizes")

    data, splits, _ = prepare_data(cfg)
    sids = load_index_json(index_file, data.item_ids, report["codebook_sizes"])
    vocab = SidVocab(sids.codebook_sizes)
    trie = SidTrie(sids.codes, sids.codebook_sizes)
    model, value_head = load_rl_run(run_dir, vocab)
    rows = getattr(splits, split)
    if max_users is not None:
        if max_users < 1:
            raise InputError(f"max_users must be >= 1, got {max_users}", field="max_users")
        rows = rows.subset(np.arange(min(max_users, len(rows))))
    ved_cfg = cfg.rl.ved
    if (run_dir / "rl_config.json").is_file():
        ved = json.loads((run_dir / "rl_config.json").read_text()).get("ved")
        if ved is not None:
            try:
                ved_cfg = VEDConfig(**ved)
            except TypeError as err:
                raise InputError(f"bad VED config ({err})", file=str(run_dir / "rl_config.json"),
                                 field="ved") from None
    ks = sorted(set(cfg.eval.ks) | {10})
    t0 = time.perf_counter()
    records = budget_curve(model, value_head, vocab, trie, rows, widths=widths, ks=ks,
                           ved_cfg=ved_cfg, batch_size=batch_size or cfg.eval.batch_size,
                           max_history=splits.max_history)
    here = run_dir.resolve()
    experiment, method, seed_name = here.parents[1].name, here.parent.name, here.name
    stem = f"budget_curve_{experiment}_{method}_{seed_name}_{split}"
    payload = {"run_dir": str(run_dir), "dataset": data.name, "protocol": splits.protocol,
               "split": split, "n_users": len(rows), "n_items": data.n_items,
               "sid_levels": vocab.n_levels, "widths": [int(w) for w in widths], "ks": ks,
               "ved": dataclasses.asdict(ved_cfg), "torch_threads": torch.get_num_threads(),
               "seconds": time.perf_counter() - t0, "records": records}
    out_dir = Path(out_dir)
    json_path = out_dir / f"{stem}.json"
    atomic_write_json(json_path, payload)
    png_path = plot_budget_curve(records, out_dir / f"{stem}.png",
                                 title=f"{experiment} {method} {seed_name} ({split}, "
                                       f"{len(rows)} users)")
    return json_path, png_path, payload
