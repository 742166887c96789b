"""Beam search speed and memory with one copy of each history per user or one per beam, against
the FLOP lower bound of the same work.

Two cache paths: ``shared`` (``SharedKVCache``: each user's history keys/values once, per-beam
caches of the generated codes; the default of ``SidGenerator``) and ``per_row`` (the history
copied to every beam with ``KVCache.index_select``, the decoder before issue 10 and the path of
backbones without a shared cache; ``model.share_history = False``).

Speed: a random generator of Scientific size (2 layers, 4 heads, 128 dims), 4,000 random distinct
SIDs (3 x 256 codes), 256 users with 20-item histories, token-level and item-level history, beam
widths 10 / 20 / 50; item-level history also fused with the item head (``shared+item_head``,
``eval.item_head`` = 1: every item scored and its prefix masses summed, per user). Each (history, path) runs in a fresh process, so that its peak resident set
is its own: it builds the model, warms up on 32 users at the widest beam, then times
``beam_search`` over all users in batches of 256 (prefill included; median over repeats). The
FLOP lower bound is the forward matmul FLOPs of the same work (``beam_flops``: the prefill of
every prompt and the (L-1) x W decode tokens) at this machine's fp32 matmul rate (a 2048^3
matmul, measured in the same run before and after the children; the median is used).

Evaluation memory: the ML-100K demo's evaluation (``configs/demo_ml100k.yaml``: beam 50 over the
943 test users in batches of 256 through ``rank_rows``), one fresh process per path:
``synthetic``: a generator of the demo's size and config (item-level history with item-ID
embeddings, 2 x 128, 3 x 32 codes, 1,682 random SIDs) on random 20-item histories (every
ML-100K user has more than 20 ratings, so every test history is 20 items); ``run``: the demo's
trained run folder (``runs/demo_ml100k/vstar/seed0`` from ``make demo``, or
$VSTAR_BENCH_DEMO_RUN), its real SIDs and test split, when it exists (skipped with --quick).
The two paths must return identical rankings. Writes decode_speed.json.

    .venv/bin/python bench/bench_decode.py [--quick] [--threads 1] [--device cpu] [--out-dir DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from vstar.data.types import SplitRows  # noqa: E402
from vstar.decode import SidTrie, beam_search, rank_rows  # noqa: E402
from vstar.model import ModelConfig, make_vocab  # noqa: E402
from vstar.model.generator import item_head_logits  # noqa: E402

NAME = "decode"
OUTPUT = "decode_speed.json"
HISTORIES = {"codes": {}, "items": {"history": "items", "item_id_embedding": True}}
PATHS = {"shared": True, "per_row": False}       # -> SidGenerator.share_history
FUSED = "shared+item_head"     # item-level history only: the shared path fused with the item
#                                head at weight 1 (eval.item_head; its prefix masses per user)
DEMO_MODEL = harness.DEMO_MODEL
FULL = {"users": 256, "items": 4000, "codebook_sizes": [256, 256, 256], "history": 20,
        "widths": [10, 20, 50], "batch_size": 256, "warmup_users": 32, "repeats": 3,
        "model": harness.SCIENTIFIC_MODEL,
        "eval": {**harness.DEMO_SYNTHETIC, "users": 943, "width": 50, "batch_size": 256,
                 "demo_run": True}}
QUICK = {"users": 32, "items": 500, "codebook_sizes": [32, 32, 32], "history": 20,
         "widths": [5, 10], "batch_size": 256, "warmup_users": 8, "repeats": 1,
         "model": harness.SCIENTIFIC_MODEL,
         "eval": {"users": 64, "items": 300, "codebook_sizes": [8, 8, 8], "history": 20,
                  "width": 10, "batch_size": 32, "model": DEMO_MODEL, "demo_run": False}}
UNITS = {
    "wall_ms_per_user": "ms of wall time per user (prefill + decode), median over repeats",
    "users_per_second": "users decoded per second, median over repeats",
    "decode_forward_tokens_per_user": "tokens fed to the backbone after the prefill, per user "
                                      "(DecodeResult.forward_tokens / users)",
    "max_tokens_per_user": "max of DecodeResult.tokens_per_user over users",
    "n_invalid": "generated SIDs that are not catalogue items (must be 0)",
    "gflop_per_user": "forward matmul GFLOP of the same work per user (beam_flops): prefill of "
                      "the real prompt tokens + (L-1) x W decode tokens",
    "floor_ms_per_user": "gflop_per_user at the measured fp32 matmul rate (matmul_gflops)",
    "ratio_to_floor": "wall_ms_per_user / floor_ms_per_user",
    "speedup_vs_per_row": "per_row wall_ms_per_user / shared wall_ms_per_user (shared rows)",
    "identical_to_per_row": "shared rows: the same items in the same order as the per_row path "
                            "(speed: and scores within 1e-5 + 1e-6 |score|; eval: the rankings)",
    "max_score_diff": "max |score shared - score per_row| over users and slots",
    "peak_rss_mb": "peak resident set (ru_maxrss) of the process, MiB: Python, torch, the model "
                   "and every decode it ran (speed: all widths; eval: the whole evaluation, "
                   "data loading included for source=run)",
    "rss_before_mb": "resident set after setup and warm-up, before the timed decodes, MiB",
    "decode_peak_extra_mb": "peak_rss_mb - rss_before_mb",
    "overhead_vs_shared": "shared+item_head rows: wall_ms_per_user / the shared path's (the "
                          "cost of scoring every item and its prefix masses per user)",
    "matmul_gflops": "fp32 2048^3 matmul rate of this machine in this run, median of the runs "
                     "before and after the children",
}


# ------------------------------------------------------------------ children (fresh processes)

def _scientific_setup(p: dict, history: str, seed: int, dev: torch.device):
    """The speed setting: (model, vocab, trie, tokens, mask), identical in every process."""
    rng = np.random.default_rng(seed)
    sizes = p["codebook_sizes"]
    codes = harness.random_catalogue(p["items"], sizes, rng)
    trie = SidTrie(codes, sizes).to(dev)
    histories = [rng.integers(0, len(codes), size=p["history"]) for _ in range(p["users"])]
    model_cfg = {**p["model"], **HISTORIES[history]}
    vocab = make_vocab(ModelConfig(**model_cfg), sizes, len(codes))
    torch.manual_seed(seed)
    model = harness.random_generator(vocab, p["history"], model_cfg, dev, codes=codes).eval()
    tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes),
                                          max_items=p["history"])
    return model, vocab, trie, tokens.to(dev), mask.to(dev)


def speed_child(a: dict) -> dict:
    """Time beam search at every width on one (history, path); peak memory of the process."""
    p, dev = a["p"], harness.setup_torch(a["threads"], a["device"])
    model, vocab, trie, tokens, mask = _scientific_setup(p, a["history"], a["seed"], dev)
    model.share_history = PATHS[a["path"].split("+")[0]]
    head = {"item_head": lambda h: item_head_logits(model, vocab, h),
            "item_weight": 1.0} if a["path"] == FUSED else {}
    sync = harness.synchronizer(dev)
    B, bs = p["users"], p["batch_size"]
    warm = p["warmup_users"]
    beam_search(model, vocab, trie, tokens[:warm], mask[:warm], max(p["widths"]), **head)
    rss0 = harness.rss_mb()

    def decode_all(width: int) -> list:
        return [beam_search(model, vocab, trie, tokens[s:s + bs], mask[s:s + bs], width, **head)
                for s in range(0, B, bs)]

    rows = []
    for W in p["widths"]:
        times, parts = harness.time_repeats(lambda: decode_all(W), p["repeats"], sync, warmup=0)
        ms = [1e3 * t / B for t in times]
        rows.append({
            "width": W, "wall_ms_per_user": harness.median(ms),
            "users_per_second": B / harness.median(times),
            "decode_forward_tokens_per_user": sum(r.forward_tokens for r in parts) / B,
            "max_tokens_per_user": max(int(r.tokens_per_user.max()) for r in parts),
            "n_invalid": sum(r.n_invalid for r in parts),
            "gflop_per_user": harness.beam_flops(model, mask.sum(1).cpu().numpy(), W,
                                                 vocab.n_levels) / B / 1e9,
            "items": torch.cat([r.items for r in parts]).tolist(),
            "scores": torch.cat([r.scores for r in parts]).tolist(),
            "repeats": {"wall_ms_per_user": ms, "wall_seconds": times}})
    peak = harness.peak_rss_mb()
    return {"rows": rows, "peak_rss_mb": peak, "rss_before_mb": rss0,
            "model_parameters": model.num_parameters()}


def _eval_inputs(e: dict, seed: int, dev: torch.device, run_dir: str | None):
    """(model, vocab, trie, rows, width, batch_size, max_history) of the evaluation to measure:
    the demo run folder's test split, or a demo-size model on synthetic histories."""
    if run_dir:
        from vstar.experiments.budget import load_run

        run = load_run(run_dir, threads=torch.get_num_threads())
        return (run.model, run.vocab, run.trie, run.splits.test, int(run.cfg.eval.beam_width),
                int(run.cfg.eval.batch_size), run.splits.max_history)
    model, vocab, trie, codes, histories = harness.demo_size_synthetic(e, seed, dev, e["users"])
    targets = np.random.default_rng(seed + 1).integers(0, len(codes), e["users"])
    rows = SplitRows(np.arange(e["users"]), histories, targets)
    return model, vocab, trie, rows, e["width"], e["batch_size"], e["history"]


def eval_child(a: dict) -> dict:
    """One evaluation (``rank_rows``) on one path: wall time, peak memory, the ranking."""
    dev = harness.setup_torch(a["threads"], a["device"])
    model, vocab, trie, rows, width, bs, max_hist = _eval_inputs(a["p"]["eval"], a["seed"],
                                                                 dev, a.get("run_dir"))
    model.share_history = PATHS[a["path"]]
    rss0 = harness.rss_mb()
    t0 = time.perf_counter()
    ranked, cost = rank_rows(model, vocab, trie, rows, width, batch_size=bs,
                             max_history=max_hist)
    wall = time.perf_counter() - t0
    peak = harness.peak_rss_mb()
    lengths = harness.prompt_lengths(vocab, rows.histories, max_hist)
    return {"users": len(rows), "width": width, "batch_size": bs,
            "wall_ms_per_user": 1e3 * wall / len(rows),
            "decode_forward_tokens_per_user": cost["decode_forward_tokens_per_user"],
            "n_invalid": cost["n_invalid"], "peak_rss_mb": peak, "rss_before_mb": rss0,
            "gflop_per_user": harness.beam_flops(model, lengths, width, vocab.n_levels)
            / len(rows) / 1e9,
            "model_parameters": model.num_parameters(), "ranked": ranked.tolist()}


def _child(a: dict) -> dict:
    return speed_child(a) if a["kind"] == "speed" else eval_child(a)


# ------------------------------------------------------------------ the benchmark

def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    p, dev, _, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, device, seed)
    common = {"p": p, "threads": threads, "device": device, "seed": seed}
    peaks = [harness.matmul_peak(dev)]
    speed = {(h, path): harness.run_child(__file__, {**common, "kind": "speed", "history": h,
                                                     "path": path})
             for h in HISTORIES for path in PATHS}
    speed[("items", FUSED)] = harness.run_child(__file__, {**common, "kind": "speed",
                                                           "history": "items", "path": FUSED})
    evals = {("synthetic", path): harness.run_child(__file__, {**common, "kind": "eval",
                                                               "path": path})
             for path in PATHS}
    demo = harness.demo_run_dir()
    if p["eval"]["demo_run"] and harness.has_run(demo):
        for path in PATHS:          # the run's data paths are relative to where it was made
            evals[("run", path)] = harness.run_child(
                __file__, {**common, "kind": "eval", "path": path, "run_dir": str(demo)},
                cwd=harness.demo_run_cwd(demo))
    peaks.append(harness.matmul_peak(dev))
    gflops = harness.median([x["gflops"] for x in peaks])
    rows = _speed_rows(speed, gflops) + _eval_rows(evals, gflops, demo)

    params = {**p, "seed": seed, "n_levels": len(p["codebook_sizes"]), "histories": HISTORIES,
              "paths": list(PATHS), "matmul": peaks, "matmul_gflops": gflops,
              "model_parameters": speed[("codes", "shared")]["model_parameters"]}
    record = harness.make_record(
        NAME, "constrained beam search speed and memory with one copy of each history per user "
        "(shared) or per beam (per_row), against the FLOP lower bound; peak memory of the "
        "ML-100K demo's evaluation",
        "one fresh process per (history, path) and per evaluation: beam_search on histories "
        "encoded once, users in batches of batch_size, prefill included, median over repeats "
        "after a warm-up on warmup_users users; ru_maxrss per process; FLOP floor = "
        "beam_flops / median fp32 2048^3 matmul rate of this run",
        params, dev, seed, quick, UNITS, rows, time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    _print(rows, p, dev, gflops)
    print(f"wrote {path}")
    return record


def _speed_rows(speed: dict, gflops: float) -> list[dict]:
    rows = []
    for (history, path), child in speed.items():
        base = {r["width"]: r for r in speed[(history, "per_row")]["rows"]}
        for r in child["rows"]:
            row = {"kind": "speed", "history": history, "path": path,
                   **{k: v for k, v in r.items() if k not in ("items", "scores")},
                   "peak_rss_mb": child["peak_rss_mb"], "rss_before_mb": child["rss_before_mb"],
                   "decode_peak_extra_mb": child["peak_rss_mb"] - child["rss_before_mb"]}
            rows.append(_with_floor(row, gflops))
            if path == FUSED:             # other rankings by design: its cost against shared
                shared = {x["width"]: x for x in speed[(history, "shared")]["rows"]}
                rows[-1]["overhead_vs_shared"] = (r["wall_ms_per_user"]
                                                  / shared[r["width"]]["wall_ms_per_user"])
            elif path != "per_row":
                rows[-1].update(_compare(r, base[r["width"]]))
    return rows


def _eval_rows(evals: dict, gflops: float, demo: Path) -> list[dict]:
    rows = []
    for (source, path), child in evals.items():
        row = {"kind": "eval", "source": source, "path": path,
               "run_dir": str(demo) if source == "run" else None,
               **{k: v for k, v in child.items() if k != "ranked"},
               "decode_peak_extra_mb": child["peak_rss_mb"] - child["rss_before_mb"]}
        rows.append(_with_floor(row, gflops))
        if path != "per_row":
            same = child["ranked"] == evals[(source, "per_row")]["ranked"]
            rows[-1]["identical_to_per_row"] = bool(same)
            rows[-1]["speedup_vs_per_row"] = (evals[(source, "per_row")]["wall_ms_per_user"]
                                              / child["wall_ms_per_user"])
    return rows


def _with_floor(row: dict, gflops: float) -> dict:
    floor = 1e3 * row["gflop_per_user"] / gflops
    return {**row, "floor_ms_per_user": floor, "ratio_to_floor": row["wall_ms_per_user"] / floor}


def _compare(shared: dict, per_row: dict) -> dict:
    """Same items and scores (to float32 rounding: 1e-5 + 1e-6 |score|) as the per_row path,
    and the speed-up over it."""
    a, b = torch.tensor(shared["scores"]), torch.tensor(per_row["scores"])
    finite = torch.isfinite(b)
    diff = float((a[finite] - b[finite]).abs().max()) if bool(finite.any()) else 0.0
    same = (shared["items"] == per_row["items"] and torch.equal(finite, torch.isfinite(a))
            and torch.allclose(a[finite], b[finite], rtol=1e-6, atol=1e-5))
    return {"identical_to_per_row": bool(same), "max_score_diff": diff,
            "speedup_vs_per_row": per_row["wall_ms_per_user"] / shared["wall_ms_per_user"]}


def _print(rows: list[dict], p: dict, dev: torch.device, gflops: float) -> None:
    speed = [r for r in rows if r["kind"] == "speed"]
    harness.print_table(
        f"decode: beam search, {p['users']} users, {p['items']} items, codebooks "
        f"{p['codebook_sizes']}, {dev}, {torch.get_num_threads()} thread(s), fp32 matmul "
        f"{gflops:.1f} GFLOP/s", speed,
        [("history", "history"), ("path", "path"), ("width", "W"),
         ("wall_ms_per_user", "ms/user"), ("floor_ms_per_user", "floor ms"),
         ("ratio_to_floor", "x floor"), ("speedup_vs_per_row", "speed-up"),
         ("overhead_vs_shared", "vs shared"), ("identical_to_per_row", "identical"), ("peak_rss_mb", "peak MiB"),
         ("n_invalid", "invalid")])
    harness.print_table(
        "decode: ML-100K demo evaluation (rank_rows), peak resident memory per process",
        [r for r in rows if r["kind"] == "eval"],
        [("source", "source"), ("path", "path"), ("users", "users"), ("width", "W"),
         ("wall_ms_per_user", "ms/user"), ("ratio_to_floor", "x floor"),
         ("peak_rss_mb", "peak MiB"), ("decode_peak_extra_mb", "+decode MiB"),
         ("identical_to_per_row", "identical")])


if __name__ == "__main__":
    if not harness.child_main(sys.argv, _child):
        harness.standalone_main(run, __doc__)
