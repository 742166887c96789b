"""Decode cost of beam search vs VED at equal budget (docs/method.md section 3; protocol "Cost").

A random 2-layer generator, a catalogue of 4,000 random distinct SIDs (3 levels x 256 codes),
256 users with histories of 20 items, a random value head. For each width W: beam search of
width W and VED with n_candidates = W and the default budget (L-1) * W forward tokens per user.
Reports decode wall time per user (median over repeats after one warm-up call, prefill included
for both), decode forward tokens per user and VED's expansions. Writes ved_cost.json.

    .venv/bin/python bench/bench_ved.py [--quick] [--threads 1] [--device cpu] [--out-dir DIR]
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from vstar.decode import SidTrie, VEDConfig, beam_search, value_guided_decode  # noqa: E402
from vstar.model import SidVocab, ValueHead, ValueHeadConfig  # noqa: E402

NAME = "ved"
OUTPUT = "ved_cost.json"
FULL = {"users": 256, "items": 4000, "codebook_sizes": [256, 256, 256], "history": 20,
        "widths": [16, 50], "repeats": 3, "model": harness.SCIENTIFIC_MODEL}
QUICK = {"users": 32, "items": 500, "codebook_sizes": [32, 32, 32], "history": 20,
         "widths": [5, 10], "repeats": 1, "model": harness.SCIENTIFIC_MODEL}
UNITS = {
    "budget_tokens_per_user": "VED forward-token budget per user, (L-1) * W",
    "beam_wall_ms_per_user": "ms of wall time per user, beam search (prefill included), median",
    "ved_wall_ms_per_user": "ms of wall time per user, VED (prefill included), median",
    "ved_over_beam_wall": "ratio of the two medians",
    "beam_forward_tokens_per_user": "decode forward tokens per user (after the prefill)",
    "ved_forward_tokens_per_user": "decode forward tokens per user (after the prefill)",
    "ved_max_forward_tokens_per_user": "max over users of VEDResult.tokens_per_user",
    "ved_expansions_per_user": "tree nodes added after the initial beam, mean over users",
    "ved_complete_items_per_user": "complete items in the tree, mean over users",
    "ved_padded_slot_rate": "fraction of the W returned slots left empty",
    "item_overlap_beam_ved": "mean |beam top-W & VED top-W| / W",
}


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    p, dev, rng, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, device, seed)
    sizes = p["codebook_sizes"]
    L = len(sizes)
    codes = harness.random_catalogue(p["items"], sizes, rng)
    vocab = SidVocab(sizes)
    trie = SidTrie(codes, sizes).to(dev)
    model = harness.random_generator(vocab, p["history"], p["model"], dev).eval()
    head = ValueHead(model.hidden_size, ValueHeadConfig(init_std=0.5)).to(dev).eval()
    histories = [rng.integers(0, len(codes), size=p["history"]) for _ in range(p["users"])]
    tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes),
                                          max_items=p["history"])
    tokens, mask = tokens.to(dev), mask.to(dev)
    sync = harness.synchronizer(dev)
    B = p["users"]
    cfg = VEDConfig()

    rows = []
    for W in p["widths"]:
        t_beam, beam = harness.time_repeats(
            lambda: beam_search(model, vocab, trie, tokens, mask, W), p["repeats"], sync)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # the initial beam may be shrunk for small W
            t_ved, ved = harness.time_repeats(
                lambda: value_guided_decode(model, head, vocab, trie, tokens, mask, W, cfg),
                p["repeats"], sync)
        beam_ms = [1e3 * t / B for t in t_beam]
        ved_ms = [1e3 * t / B for t in t_ved]
        overlap = np.mean([len(set(beam.items[b].tolist()) & set(ved.items[b].tolist())) / W
                           for b in range(B)])
        rows.append({
            "width": W,
            "budget_tokens_per_user": (L - 1) * W,
            "beam_wall_ms_per_user": harness.median(beam_ms),
            "ved_wall_ms_per_user": harness.median(ved_ms),
            "ved_over_beam_wall": harness.median(ved_ms) / harness.median(beam_ms),
            "beam_forward_tokens_per_user": beam.forward_tokens / B,
            "ved_forward_tokens_per_user": ved.forward_tokens / B,
            "ved_max_forward_tokens_per_user": int(ved.tokens_per_user.max()),
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
            "repeats": {"beam_wall_ms_per_user": beam_ms, "ved_wall_ms_per_user": ved_ms},
        })

    params = {**p, "seed": seed, "n_levels": L, "model_parameters": model.num_parameters(),
              "value_head": "random ValueHead(ValueHeadConfig(init_std=0.5))",
              "ved_config": dataclasses.asdict(cfg), "warmup_calls": 1}
    record = harness.make_record(
        NAME, "decode cost, beam search vs VED at equal forward-token budget "
              "(prefill included in wall time)",
        "vstar.decode.beam_search and vstar.decode.value_guided_decode on the same histories "
        "(encoded once, not timed), all users in one batch; median over repeats after one "
        "warm-up call", params, dev, seed, quick, UNITS, rows, time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    harness.print_table(f"ved: beam search vs VED at equal budget, {B} users, {len(codes)} items, "
                        f"codebooks {sizes}, {dev}, {torch.get_num_threads()} thread(s)", rows,
                        [("width", "W"), ("budget_tokens_per_user", "budget"),
                         ("beam_wall_ms_per_user", "beam ms/user"),
                         ("ved_wall_ms_per_user", "VED ms/user"),
                         ("ved_over_beam_wall", "VED/beam"),
                         ("ved_forward_tokens_per_user", "VED fwd tok/user"),
                         ("ved_expansions_per_user", "VED expansions"),
                         ("item_overlap_beam_ved", "overlap")])
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    harness.standalone_main(run, __doc__)
