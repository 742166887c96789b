"""Run the vstar benchmarks (what `make bench` runs) and write one JSON file each.

    decode  constrained beam search speed               -> decode_speed.json
    ved     beam search vs VED at equal budget          -> ved_cost.json
    sft     SFT training throughput                     -> sft_throughput.json
    synthetic_rl  beam + GRPO vs V-STAR where the target hides behind a low-probability first
            code (target-in-group per step, HR@10)      -> synthetic_rl.json (+ .png)
    trie    SidTrie build seconds, peak memory and lookups, 1 M and 10 M items, dense vs sparse
                                                        -> trie_scale.json
    serve   `vstar serve` under load: p50/p95/p99 latency, throughput, server resident memory,
            decode ms/user vs the FLOP floor (beam-10/50, VED; concurrency 1/8/32)
                                                        -> serve_load.json

    hf_decode  beam search through the HF backbone vs the native decoder vs
            transformers.generate with a prefix-lookup LogitsProcessor -> hf_decode.json
    report  `vstar report` of the demo experiment (toy experiment with --quick): build time,
            size, headless-Chromium check, and a screenshot -> report.json (+ report_screenshot.png)

    .venv/bin/python bench/run_all.py [--quick] [--only decode|ved|sft|synthetic_rl|trie|serve|hf_decode|report ...] [--threads 1]
        [--device cpu|cuda] [--out-dir bench/results] [--repeats N] [--seed 0]

--quick: tiny sizes, 1 repeat (a smoke test of the harness, well under a minute); without
--out-dir its results go to bench/results/quick/ so that they never replace the real ones.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_decode  # noqa: E402
import bench_serve  # noqa: E402
import bench_hf_decode  # noqa: E402
import bench_report  # noqa: E402
import bench_sft  # noqa: E402
import bench_synthetic_rl  # noqa: E402
import bench_trie  # noqa: E402
import bench_ved  # noqa: E402
import harness  # noqa: E402

BENCHMARKS = {m.NAME: m for m in (bench_decode, bench_ved, bench_sft, bench_synthetic_rl,
                                     bench_trie, bench_serve, bench_hf_decode, bench_report)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    harness.add_common_args(ap)
    ap.add_argument("--only", action="append", choices=list(BENCHMARKS), default=None,
                    help="run only this benchmark (repeatable); default: all")
    args = ap.parse_args(argv)
    names = list(dict.fromkeys(args.only)) if args.only else list(BENCHMARKS)
    out_dir = harness.resolve_out_dir(args.out_dir, args.quick)
    t0 = time.perf_counter()
    written = []
    for name in names:
        mod = BENCHMARKS[name]
        t = time.perf_counter()
        mod.run(quick=args.quick, threads=args.threads, device=args.device, out_dir=out_dir,
                seed=args.seed, repeats=args.repeats)
        written.append(out_dir / mod.OUTPUT)
        print(f"[{name}: {time.perf_counter() - t:.1f}s]")
    print(f"\n{len(written)} benchmark(s) in {time.perf_counter() - t0:.1f}s"
          f"{' (quick)' if args.quick else ''}: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
