"""Shared pieces of the benchmarks in bench/: setup, timing, the JSON record, the printed table.

Every benchmark module (bench_decode.py, bench_ved.py, bench_sft.py) exposes

    NAME, OUTPUT, QUICK, FULL, run(quick=False, threads=1, device="cpu", out_dir=..., seed=0,
                                   repeats=None) -> dict

and writes one JSON record (``make_record``) to ``out_dir / OUTPUT`` with ``atomic_write_json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vstar.core.io import atomic_write_json, to_jsonable
from vstar.core.repro import collect_versions, set_seed
from vstar.model import ModelConfig, SidGenerator, SidVocab, new_generator

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"
QUICK_OUT = DEFAULT_OUT / "quick"          # --quick without --out-dir: never clobber real results
SCIENTIFIC_MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 128, "dropout": 0.0, "history": "codes",
                    "item_id_embedding": False}
# the ML-100K demo (configs/demo_ml100k.yaml): its model, and a same-size synthetic stand-in
DEMO_MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 128, "dropout": 0.0, "history": "items",
              "item_id_embedding": True}
DEMO_SYNTHETIC = {"items": 1682, "codebook_sizes": [32, 32, 32], "history": 20,
                  "model": DEMO_MODEL}


def begin(quick: bool, full: dict, quick_params: dict, repeats: int | None, threads: int,
          device: str, seed: int) -> tuple[dict, torch.device, np.random.Generator, float]:
    """The shared start of a benchmark: (params, device, seeded numpy RNG, start time)."""
    t_start = time.perf_counter()
    p = dict(quick_params if quick else full)
    if repeats is not None:
        p["repeats"] = int(repeats)
    dev = setup_torch(threads, device)
    set_seed(seed)
    return p, dev, np.random.default_rng(seed), t_start


def setup_torch(threads: int, device: str) -> torch.device:
    """Fix torch's intra-op threads and check the device; returns it."""
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build / machine")
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {device!r}")
    return dev


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform
    return platform.processor() or platform.machine()


def synchronizer(dev: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def time_repeats(fn: Callable[[], Any], repeats: int, sync: Callable[[], None],
                 warmup: int = 1) -> tuple[list[float], Any]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; last output."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def random_catalogue(n_items: int, sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    """``n_items`` distinct random SIDs [n_items, L] (codes of level l in 0..sizes[l]-1)."""
    if n_items > int(np.prod(sizes, dtype=np.float64)):
        raise SystemExit(f"{n_items} distinct SIDs do not fit in codebooks {sizes}")
    codes = np.stack([rng.integers(0, k, size=3 * n_items) for k in sizes], 1)
    codes = np.unique(codes, axis=0)
    if len(codes) < n_items:
        raise SystemExit(f"drew only {len(codes)} distinct SIDs for {n_items} items")
    return codes[rng.permutation(len(codes))[:n_items]]


def random_generator(vocab: SidVocab, history: int, model: dict, dev: torch.device,
                     peaked: bool = True, codes: np.ndarray | None = None) -> SidGenerator:
    """A random SidGenerator sized for histories of ``history`` items (``model`` may set
    ``history="items"``: then ``vocab`` has item tokens and ``codes`` [N, L] are the items'
    SIDs). ``peaked``: embeddings of std 0.5 (tied to the output layer), so the policy is
    non-uniform like a trained one."""
    cfg = ModelConfig(**model)
    gen = new_generator(cfg, vocab, torch.as_tensor(codes if codes is not None else
                                                    np.zeros((0, vocab.n_levels), np.int64)),
                        history).to(dev)
    if peaked:
        with torch.no_grad():
            gen.wte.weight.normal_(0, 0.5)
    return gen


def demo_run_dir() -> Path:
    """The ML-100K demo's RL run folder the benchmarks measure when it exists:
    $VSTAR_BENCH_DEMO_RUN, else ``runs/demo_ml100k/vstar/seed0`` of this checkout (``make demo``).
    Its data paths are relative to ``demo_run_cwd``."""
    return Path(os.environ.get("VSTAR_BENCH_DEMO_RUN") or
                BENCH_DIR.parent / "runs" / "demo_ml100k" / "vstar" / "seed0").resolve()


def demo_run_cwd(run_dir: Path) -> Path:
    """Where a run folder ``<root>/<out_dir>/<experiment>/<method>/seed<k>`` was made (its
    config's data paths are relative to it)."""
    return Path(run_dir).resolve().parents[3]


def has_run(run_dir: Path) -> bool:
    return (Path(run_dir) / "config.yaml").is_file()


def demo_size_synthetic(e: dict, seed: int, dev: torch.device, n_users: int = 0):
    """A random generator of the demo's size and config on a random catalogue (``e``: items,
    codebook_sizes, history, model; e.g. ``DEMO_SYNTHETIC``) -> (model, vocab, trie, codes,
    histories): ``n_users`` random histories of ``e["history"]`` item indices."""
    from vstar.decode import SidTrie
    from vstar.model import make_vocab

    rng = np.random.default_rng(seed)
    sizes = e["codebook_sizes"]
    codes = random_catalogue(e["items"], sizes, rng)
    vocab = make_vocab(ModelConfig(**e["model"]), sizes, len(codes))
    torch.manual_seed(seed)
    model = random_generator(vocab, e["history"], e["model"], dev, codes=codes).eval()
    histories = [rng.integers(0, len(codes), size=e["history"]) for _ in range(n_users)]
    return model, vocab, SidTrie(codes, sizes).to(dev), codes, histories


# ------------------------------------------------------------------ FLOP lower bound

def forward_flops(model: SidGenerator, n_tokens: int, keys_attended: float) -> float:
    """Matmul FLOPs of forwarding ``n_tokens`` tokens through ``model`` that attend to
    ``keys_attended`` keys in all (summed over the tokens, each one's own key included): per
    token and layer 24 d^2 (q, k, v and output projections, the 4d MLP), per attended key and
    layer 4 d (score and weighted value), per token 2 d V for the output layer. Bias adds,
    norms, activations, softmax and embedding lookups are not counted."""
    d, n_layer, V = model.cfg.n_embd, model.cfg.n_layer, model.vocab_size
    return float(n_tokens * (24 * n_layer * d * d + 2 * d * V) + 4 * n_layer * d * keys_attended)


def beam_flops(model: SidGenerator, prompt_lengths: np.ndarray, width: int,
               n_levels: int) -> float:
    """Forward matmul FLOPs of beam search of ``width`` over prompts of these real lengths: the
    prefill (token i of a prompt attends to i keys) and (L-1) x width decode tokens (the code
    of level l of a beam attends to the prompt and l codes). Padding is not counted."""
    n = np.asarray(prompt_lengths).astype(np.float64)
    levels = np.arange(1, n_levels, dtype=np.float64)
    tokens = n.sum() + len(n) * width * (n_levels - 1)
    keys = (n * (n + 1) / 2).sum() + width * (n[:, None] + levels[None]).sum()
    return forward_flops(model, int(tokens), float(keys))


def prompt_lengths(vocab: SidVocab, histories, max_history: int) -> np.ndarray:
    """Real prompt tokens per history (BOS + the last ``max_history`` items, one token each
    for item-level history, L codes each otherwise), as ``encode_histories`` builds them."""
    per_item = 1 if vocab.item_history else vocab.n_levels
    return np.array([1 + min(len(h), max_history) * per_item for h in histories])


def matmul_peak(dev: torch.device, n: int = 2048, repeats: int = 3) -> dict:
    """fp32 matmul rate of an n x n x n product on ``dev`` (the machine's practical peak)."""
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    times, _ = time_repeats(lambda: a @ b, repeats, synchronizer(dev))
    flops = 2.0 * n ** 3
    return {"n": n, "gflops": flops / median(times) / 1e9,
            "repeats_gflops": [flops / t / 1e9 for t in times]}


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs torch counts for one call of ``fn`` (matmuls, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def rss_mb() -> float:
    """Resident set of this process now, MiB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (``ru_maxrss``), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_env() -> dict:
    """This process's environment for a child that may run in another folder: PYTHONPATH made
    absolute, so that it imports the same code."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(str(Path(x).resolve())
                                            for x in env["PYTHONPATH"].split(os.pathsep) if x)
    return env


def run_child(script: str | Path, args: dict, cwd: str | Path | None = None) -> dict:
    """Run ``script --child JSON(args)`` in a fresh Python process (its own peak resident set);
    returns the JSON object the child printed last (``child_main``)."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=child_env())
    if done.returncode != 0:
        raise SystemExit(f"{Path(script).name} child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(argv: list[str], handler: Callable[[dict], dict]) -> bool:
    """If ``argv`` is ``[script, "--child", JSON]``: print ``handler(args)`` as JSON and return
    True (the child side of ``run_child``); otherwise False."""
    if len(argv) == 3 and argv[1] == "--child":
        print(json.dumps(handler(json.loads(argv[2]))))
        return True
    return False


def make_record(name: str, what: str, method: str, params: dict, dev: torch.device, seed: int,
                quick: bool, units: dict, results: list[dict], wall_seconds: float) -> dict:
    """The JSON every benchmark writes. Each entry of ``results`` holds the medians over repeats
    under the metric names of ``units`` and every repeat under ``repeats``."""
    return {
        "benchmark": name,
        "what": what,
        "method": method,
        "quick": bool(quick),
        "params": params,
        "versions": collect_versions(seed),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "device_name": device_name(dev),
        "units": units,
        "results": results,
        "benchmark_wall_seconds": wall_seconds,
    }


def write_record(out_dir: str | Path, filename: str, record: dict) -> Path:
    """Write ``record`` as strict JSON: NaN / Inf (e.g. a figure a method does not have) -> null."""
    path = Path(out_dir) / filename
    atomic_write_json(path, to_jsonable(record, filename))
    return path


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Print ``rows`` as a fixed-width table; ``columns`` = [(key, header)]."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, (_, h) in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def standalone_main(run: Callable[..., dict], doc: str) -> None:
    """``python bench/bench_X.py [--quick] [--threads N] [--device D] [--out-dir DIR]``."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    add_common_args(ap)
    args = ap.parse_args()
    run(quick=args.quick, threads=args.threads, device=args.device,
        out_dir=resolve_out_dir(args.out_dir, args.quick), seed=args.seed, repeats=args.repeats)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes and 1 repeat (a smoke test, well under a minute)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out-dir", default=None,
                    help=f"folder of the JSON results (default {DEFAULT_OUT}; "
                         f"with --quick: {QUICK_OUT})")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats per setting (default 3; 1 with --quick)")
    ap.add_argument("--seed", type=int, default=0)


def resolve_out_dir(out_dir: str | None, quick: bool) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    return QUICK_OUT if quick else DEFAULT_OUT
