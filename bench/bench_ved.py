"""Decode cost of beam search vs VED at equal budget (METHOD section 3; PROTOCOL "Cost").

A random 2-layer generator, a catalogue of 4,000 random distinct SIDs (3 levels x 256 codes),
256 users with histories of 20 items. For each width W: beam search of width W and VED with
n_candidates = W and the default budget (L-1) * W forward tokens per user. Reports decode wall
time per user (median over repeats, prefill included for both), decode forward tokens per user
and VED's expansions. Writes bench/results/ved_cost.json.

    .venv/bin/python bench/bench_ved.py [--widths 16 50] [--repeats 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from vstar.decode import SidTrie, beam_search
from vstar.core.io import atomic_write_json
from vstar.model import GeneratorConfig, SidGenerator, SidVocab
from vstar.decode.ved import VEDConfig, value_guided_decode
from vstar.model.value import ValueHead, ValueHeadConfig


def _catalogue(n_items: int, sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    codes = np.stack([rng.integers(0, k, size=3 * n_items) for k in sizes], 1)
    codes = np.unique(codes, axis=0)
    return codes[rng.permutation(len(codes))[:n_items]]


def _time(fn, repeats: int, sync) -> tuple[float, object]:
    out = fn()                                              # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 50])
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ved_cost.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device(args.device)
    sizes = [256, 256, 256]
    L = len(sizes)
    codes = _catalogue(args.items, sizes, rng)
    vocab = SidVocab(sizes)
    trie = SidTrie(codes, sizes).to(dev)
    gcfg = GeneratorConfig(vocab_size=vocab.size, block_size=1 + L * (args.history + 1),
                           n_layer=2, n_head=4, n_embd=128, dropout=0.0)
    model = SidGenerator(gcfg).to(dev).eval()
    with torch.no_grad():
        model.wte.weight.normal_(0, 0.5)                    # a peaked, non-uniform policy
    head = ValueHead(model.hidden_size, ValueHeadConfig(init_std=0.5)).to(dev).eval()
    histories = [rng.integers(0, len(codes), size=args.history) for _ in range(args.users)]
    tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes))
    tokens, mask = tokens.to(dev), mask.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    B = args.users

    rows = []
    for W in args.widths:
        cfg = VEDConfig()
        t_beam, beam = _time(lambda: beam_search(model, vocab, trie, tokens, mask, W),
                             args.repeats, sync)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_ved, ved = _time(lambda: value_guided_decode(model, head, vocab, trie, tokens,
                                                           mask, W, cfg), args.repeats, sync)
        overlap = np.mean([len(set(beam.items[b].tolist()) & set(ved.items[b].tolist())) / W
                           for b in range(B)])
        row = {
            "width": W,
            "budget_tokens_per_user": (L - 1) * W,
            "beam_wall_ms_per_user": 1e3 * t_beam / B,
            "ved_wall_ms_per_user": 1e3 * t_ved / B,
            "ved_over_beam_wall": t_ved / t_beam,
            "beam_forward_tokens_per_user": beam.forward_tokens / B,
            "ved_forward_tokens_per_user": ved.forward_tokens / B,
            "ved_max_forward_tokens_per_user": int(ved.forward_tokens_per_user.max()),
            "ved_init_beam": ved.init_beam,
            "ved_expansions_per_user": float(ved.n_expansions.float().mean()),
            "ved_complete_items_per_user": float(ved.n_complete.float().mean()),
            "ved_min_complete_items": int(ved.n_complete.min()),
            "ved_padded_slot_rate": float((ved.items < 0).float().mean()),
            "ved_distinct_first_codes_per_user": float(np.mean(
                [len(set(ved.codes[b, :, 0].tolist())) for b in range(B)])),
            "beam_distinct_first_codes_per_user": float(np.mean(
                [len(set(beam.codes[b, :, 0].tolist())) for b in range(B)])),
            "item_overlap_beam_ved": float(overlap),
            "n_invalid": {"beam": beam.n_invalid, "ved": ved.n_invalid},
        }
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()))

    result = {
        "what": "decode cost, beam search vs VED at equal forward-token budget "
                "(prefill included in wall time)",
        "setup": {"users": B, "items": len(codes), "codebook_sizes": sizes,
                  "history_items": args.history, "model": {"n_layer": 2, "n_head": 4, "n_embd": 128},
                  "value_head": "random ValueHead",
                  "ved_config": VEDConfig().__dict__, "repeats": args.repeats,
                  "threads": args.threads, "device": str(dev), "torch": torch.__version__,
                  "machine": platform.machine(), "seed": args.seed},
        "results": rows,
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
