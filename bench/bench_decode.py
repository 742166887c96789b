"""Constrained beam search speed: wall time, decode forward tokens and users per second.

A random generator of Scientific size (2 layers, 4 heads, 128 dims), a catalogue of 4,000 random
distinct SIDs (3 levels x 256 codes), 256 users with histories of 20 items; beam widths 10, 20,
50. The histories are encoded once (``SidVocab.encode_histories``, not timed); each timed call is
``vstar.decode.beam_search`` over all users in batches of ``batch_size`` (prefill included), after
one untimed warm-up call. Writes decode_speed.json.

    .venv/bin/python bench/bench_decode.py [--quick] [--threads 1] [--device cpu] [--out-dir DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402
from vstar.decode import SidTrie, beam_search  # noqa: E402
from vstar.model import ModelConfig, make_vocab  # noqa: E402

HISTORIES = {"codes": {}, "items": {"history": "items", "item_id_embedding": True}}
NAME = "decode"
OUTPUT = "decode_speed.json"
FULL = {"users": 256, "items": 4000, "codebook_sizes": [256, 256, 256], "history": 20,
        "widths": [10, 20, 50], "batch_size": 256, "repeats": 3,
        "model": harness.SCIENTIFIC_MODEL}
QUICK = {"users": 32, "items": 500, "codebook_sizes": [32, 32, 32], "history": 20,
         "widths": [5, 10], "batch_size": 256, "repeats": 1,
         "model": harness.SCIENTIFIC_MODEL}
UNITS = {
    "wall_ms_per_user": "ms of wall time per user (prefill + decode), median over repeats",
    "users_per_second": "users decoded per second, median over repeats",
    "decode_forward_tokens_per_user": "tokens fed to the backbone after the prefill, per user "
                                      "(DecodeResult.forward_tokens / users)",
    "max_tokens_per_user": "max of DecodeResult.tokens_per_user over users",
    "n_invalid": "generated SIDs that are not catalogue items (must be 0)",
    "wall_seconds": "wall seconds of one timed call over all users (per repeat)",
}


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    p, dev, rng, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, device, seed)
    sizes = p["codebook_sizes"]
    codes = harness.random_catalogue(p["items"], sizes, rng)
    trie = SidTrie(codes, sizes).to(dev)
    histories = [rng.integers(0, len(codes), size=p["history"]) for _ in range(p["users"])]
    sync = harness.synchronizer(dev)
    B = p["users"]
    rows = []
    for history, extra in HISTORIES.items():
        model_cfg = {**p["model"], **extra}
        vocab = make_vocab(ModelConfig(**model_cfg), sizes, len(codes))
        torch.manual_seed(seed)
        model = harness.random_generator(vocab, p["history"], model_cfg, dev, codes=codes).eval()
        tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes),
                                              max_items=p["history"])
        rows += _time_widths(p, model, vocab, trie, tokens.to(dev), mask.to(dev), sync, history)

    params = {**p, "seed": seed, "n_levels": len(sizes), "model_parameters":
              model.num_parameters(), "warmup_calls": 1, "histories": HISTORIES}
    record = harness.make_record(
        NAME, "constrained beam search speed on a random Scientific-size generator, token-level "
        "and item-level history",
        "vstar.decode.beam_search on histories encoded once (encoding not timed), users in "
        "batches of batch_size, prefill included; median over repeats after one warm-up call",
        params, dev, seed, quick, UNITS, rows, time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    harness.print_table(f"decode: beam search, {B} users, {len(codes)} items, codebooks {sizes}, "
                        f"{dev}, {torch.get_num_threads()} thread(s)", rows,
                        [("history", "history"), ("width", "W"),
                         ("wall_ms_per_user", "ms/user"), ("users_per_second", "users/s"),
                         ("decode_forward_tokens_per_user", "fwd tok/user"),
                         ("n_invalid", "invalid")])
    print(f"wrote {path}")
    return record


def _time_widths(p, model, vocab, trie, tokens, mask, sync, history) -> list[dict]:
    B, bs = p["users"], p["batch_size"]

    def decode_all(width: int) -> dict:
        fwd, invalid, per_user_max = 0, 0, 0
        for s in range(0, B, bs):
            res = beam_search(model, vocab, trie, tokens[s:s + bs], mask[s:s + bs], width)
            fwd += res.forward_tokens
            invalid += res.n_invalid
            per_user_max = max(per_user_max, int(res.tokens_per_user.max()))
        return {"forward_tokens": fwd, "n_invalid": invalid, "max_per_user": per_user_max}

    rows = []
    for W in p["widths"]:
        times, out = harness.time_repeats(lambda: decode_all(W), p["repeats"], sync)
        ms = [1e3 * t / B for t in times]
        ups = [B / t for t in times]
        rows.append({
            "history": history,
            "width": W,
            "wall_ms_per_user": harness.median(ms),
            "users_per_second": harness.median(ups),
            "decode_forward_tokens_per_user": out["forward_tokens"] / B,
            "max_tokens_per_user": out["max_per_user"],
            "n_invalid": out["n_invalid"],
            "repeats": {"wall_ms_per_user": ms, "users_per_second": ups, "wall_seconds": times},
        })
    return rows


if __name__ == "__main__":
    harness.standalone_main(run, __doc__)
