"""SidTrie at catalogue scale: build seconds, peak resident memory and lookup throughput.

Random distinct SIDs (uniform over the code grid) for 1 M items x 3 x 256 codes (dense and
sparse layouts), 1 M x 3 x 1024 and 10 M x 3 x 8192 (sparse: their dense tables would take 5 GiB
and ~600 GiB). Each setting runs in a fresh Python process so that its peak resident set
(``ru_maxrss``) is its own: the process draws the catalogue (int64 [N, 3]), records its resident
memory, builds ``SidTrie(codes, sizes, layout=...)`` once (timed), then times lookups on batches
of 12,800 random nodes (beam-50 x 256 users): ``allowed`` (the [B, K] mask) and ``step`` per
depth, and ``item_of`` on 100 k SIDs (half in the catalogue). Writes trie_scale.json.

    .venv/bin/python bench/bench_trie.py [--quick] [--threads 1] [--out-dir DIR]
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

NAME = "trie"
OUTPUT = "trie_scale.json"
FULL = {"settings": [{"items": 1_000_000, "codebook_sizes": [256] * 3, "layout": "dense"},
                     {"items": 1_000_000, "codebook_sizes": [256] * 3, "layout": "sparse"},
                     {"items": 1_000_000, "codebook_sizes": [1024] * 3, "layout": "sparse"},
                     {"items": 10_000_000, "codebook_sizes": [8192] * 3, "layout": "sparse"}],
        "batch": 12_800, "item_queries": 100_000, "repeats": 3}
QUICK = {"settings": [{"items": 20_000, "codebook_sizes": [64] * 3, "layout": "dense"},
                      {"items": 20_000, "codebook_sizes": [64] * 3, "layout": "sparse"},
                      {"items": 20_000, "codebook_sizes": [1024] * 3, "layout": "auto"}],
         "batch": 1_280, "item_queries": 10_000, "repeats": 1}
UNITS = {
    "build_seconds": "wall seconds of SidTrie(codes, sizes, layout) (once, catalogue drawn before)",
    "peak_rss_mb": "peak resident set of the whole process (ru_maxrss), MiB: Python + torch + the "
                   "catalogue + the build",
    "rss_before_build_mb": "resident set after drawing the catalogue, before the build, MiB",
    "build_peak_extra_mb": "peak_rss_mb - rss_before_build_mb: what the build itself added at peak",
    "trie_mb": "bytes of the edge tables (SidTrie.nbytes), MiB",
    "prefix_ids_mb": "bytes of prefix_ids (one int64 per item and depth), MiB",
    "n_nodes": "nodes per depth",
    "allowed_ms": "ms of one allowed(depth, nodes) on `batch` nodes, per depth, median",
    "step_ms": "ms of one step(depth, nodes, codes) on `batch` pairs (half valid), per depth, "
               "median",
    "item_of_ms": "ms of item_of on `item_queries` SIDs (half in the catalogue), median",
    "lookups_per_second": "allowed rows per second at the last depth (batch / allowed_ms)",
}


def draw_codes(n: int, sizes: list[int], seed: int) -> np.ndarray:
    """n distinct uniform random SIDs [n, L] (int64), via mixed-radix integer keys."""
    rng = np.random.default_rng(seed)
    space = int(np.prod(sizes, dtype=np.float64))
    keys = np.unique(rng.integers(0, space, size=int(n * 1.3) + 16, dtype=np.int64))
    if len(keys) < n:
        raise SystemExit(f"drew only {len(keys)} distinct SIDs for {n} items")
    keys = keys[rng.permutation(len(keys))[:n]]
    codes = np.empty((n, len(sizes)), dtype=np.int64)
    for l in range(len(sizes) - 1, -1, -1):
        codes[:, l] = keys % sizes[l]
        keys //= sizes[l]
    return codes


def one_setting(setting: dict, batch: int, item_queries: int, repeats: int, threads: int,
                seed: int) -> dict:
    """Runs in its own process (see ``_child``): build once, then time the lookups."""
    from vstar.decode.trie import SidTrie

    torch.set_num_threads(threads)
    sizes, n = setting["codebook_sizes"], setting["items"]
    codes = draw_codes(n, sizes, seed)
    rss0 = harness.rss_mb()
    t0 = time.perf_counter()
    trie = SidTrie(codes, sizes, layout=setting["layout"])
    build = time.perf_counter() - t0
    peak = harness.peak_rss_mb()
    rng = np.random.default_rng(seed + 1)
    sync = harness.synchronizer(torch.device("cpu"))
    allowed_ms, step_ms = [], []
    for d in range(len(sizes)):
        nodes = torch.as_tensor(rng.integers(0, trie.n_nodes(d), size=batch))
        # half the codes are real children of their node, half random (mostly invalid)
        row = torch.as_tensor(rng.integers(0, n, size=batch))
        nodes[: batch // 2] = trie.prefix_ids[d][row[: batch // 2]]
        cds = torch.as_tensor(rng.integers(0, sizes[d], size=batch))
        cds[: batch // 2] = trie.codes[row[: batch // 2], d]
        times, _ = harness.time_repeats(lambda: trie.allowed(d, nodes), repeats, sync)
        allowed_ms.append(1e3 * harness.median(times))
        times, _ = harness.time_repeats(lambda: trie.step(d, nodes, cds), repeats, sync)
        step_ms.append(1e3 * harness.median(times))
    q = torch.as_tensor(np.concatenate([codes[rng.integers(0, n, size=item_queries // 2)],
                                        draw_codes(item_queries - item_queries // 2, sizes,
                                                   seed + 2)]))
    times, _ = harness.time_repeats(lambda: trie.item_of(q), repeats, sync)
    return {
        "items": n, "codebook_sizes": sizes, "layout_asked": setting["layout"],
        "layout": trie.layout,
        "build_seconds": build, "peak_rss_mb": peak, "rss_before_build_mb": rss0,
        "build_peak_extra_mb": peak - rss0,
        "trie_mb": trie.nbytes() / 2 ** 20,
        "prefix_ids_mb": sum(p.numel() * 8 for p in trie.prefix_ids) / 2 ** 20,
        "n_nodes": [trie.n_nodes(d) for d in range(len(sizes))],
        "allowed_ms": allowed_ms, "step_ms": step_ms,
        "item_of_ms": 1e3 * harness.median(times),
        "lookups_per_second": batch / (allowed_ms[-1] / 1e3),
    }


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    p, dev, _, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, "cpu", seed)
    rows = []
    for setting in p["settings"]:
        rows.append(harness.run_child(__file__, {
            "setting": setting, "batch": p["batch"], "item_queries": p["item_queries"],
            "repeats": p["repeats"], "threads": threads, "seed": seed}))
        print(f"  {setting}: build {rows[-1]['build_seconds']:.2f}s, "
              f"peak {rows[-1]['peak_rss_mb']:.0f} MiB", flush=True)
    record = harness.make_record(
        NAME, "SidTrie build time, peak memory and lookup speed at catalogue scale, dense vs "
        "sparse layout",
        "one fresh process per setting: random distinct SIDs, SidTrie built once (timed, "
        "ru_maxrss peak), then allowed/step per depth on batch nodes and item_of, median over "
        "repeats after one warm-up", {**p, "seed": seed}, dev, seed, quick, UNITS, rows,
        time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    shown = [{**r, "allowed": " ".join(f"{x:.3g}" for x in r["allowed_ms"]),
              "step": " ".join(f"{x:.3g}" for x in r["step_ms"]),
              "codebooks": "x".join(map(str, r["codebook_sizes"]))} for r in rows]
    harness.print_table(f"trie: build and lookups, {torch.get_num_threads()} thread(s)", shown,
                        [("items", "items"), ("codebooks", "codebooks"), ("layout", "layout"),
                         ("build_seconds", "build s"), ("peak_rss_mb", "peak MiB"),
                         ("build_peak_extra_mb", "+build MiB"), ("trie_mb", "trie MiB"),
                         ("allowed", "allowed ms/depth"), ("step", "step ms/depth"),
                         ("item_of_ms", "item_of ms")])
    print(f"wrote {path}")
    return record


def _child(a: dict) -> dict:
    return one_setting(a["setting"], a["batch"], a["item_queries"], a["repeats"], a["threads"],
                       a["seed"])


if __name__ == "__main__":
    if not harness.child_main(sys.argv, _child):
        harness.standalone_main(run, __doc__)
