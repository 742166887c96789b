"""GPU throughput: beam-50 decode ms per user and SFT tokens per second, fp32 and bf16 autocast.

    .venv/bin/python bench/bench_gpu.py [--quick] [--out-dir DIR] [--repeats N]

On a CUDA machine it measures, for a random generator of the Scientific model's size (2 layers,
width 128, 3 x 256 codes, 4,344 items, token-level histories of 20 items) and of a larger one
(8 layers, width 512), each in fp32 and under ``run.autocast=bf16``
(``vstar.core.device.autocast``):

- beam search of width 50 over batches of ``decode_batch`` users: median ms per user;
- SFT steps (``vstar.train.sft.sft_loss`` + AdamW, batches of ``sft_batch`` windows, the
  forward and loss under autocast, the backward outside it): supervised and input tokens per
  second;

and writes ``gpu.json`` (``bench/results/gpu.json`` by default) in the record format of the
other benchmarks. **Without a CUDA device it measures nothing and writes nothing** (it says
so and exits 0): CPU numbers are in ``decode_speed.json`` and ``sft_throughput.json``, and
nothing here is ever passed off as a GPU number. Not part of ``make bench`` (which runs on the
CPU machine); run it by hand on a GPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from vstar.core.device import autocast  # noqa: E402
from vstar.core.repro import set_seed  # noqa: E402
from vstar.data.types import InteractionData  # noqa: E402
from vstar.data.splits import leave_one_out  # noqa: E402
from vstar.data.windows import build_windows  # noqa: E402
from vstar.decode.beam import beam_search  # noqa: E402
from vstar.decode.trie import SidTrie  # noqa: E402
from vstar.model import SidVocab  # noqa: E402
from vstar.model.vocab import PAD  # noqa: E402
from vstar.train.sft import encode_windows, sft_loss  # noqa: E402

NAME = "gpu"
OUTPUT = "gpu.json"
MODELS = {
    "scientific": dict(harness.SCIENTIFIC_MODEL),
    "8x512": {**harness.SCIENTIFIC_MODEL, "n_layer": 8, "n_head": 8, "n_embd": 512},
}
FULL = {"items": 4344, "codebook_sizes": [256, 256, 256], "history": 20, "width": 50,
        "decode_users": 2048, "decode_batch": 256, "sft_users": 4000, "sft_batch": 64,
        "sft_steps": 50, "warmup_steps": 5, "repeats": 3, "lr": 1e-3,
        "models": list(MODELS), "precisions": ["fp32", "bf16"]}
QUICK = {**FULL, "items": 500, "codebook_sizes": [16, 16, 16], "decode_users": 64,
         "decode_batch": 32, "sft_users": 200, "sft_batch": 16, "sft_steps": 3,
         "warmup_steps": 1, "repeats": 1, "models": ["scientific"]}
MODE = {"fp32": "none", "bf16": "bf16"}


def _decode(model, vocab, trie, histories, p, mode, sync) -> dict:
    batches = []
    for s in range(0, len(histories), p["decode_batch"]):
        tk, mk = vocab.encode_histories(histories[s:s + p["decode_batch"]], trie.codes.cpu())
        batches.append((tk.to(trie.device), mk.to(trie.device)))

    def run_all():
        with torch.no_grad(), autocast(trie.device, mode):
            for tk, mk in batches:
                beam_search(model, vocab, trie, tk, mk, p["width"])

    times, _ = harness.time_repeats(run_all, p["repeats"], sync)
    ms = [1e3 * t / len(histories) for t in times]
    return {"beam50_ms_per_user": harness.median(ms), "repeats_beam50_ms_per_user": ms}


def _sft(model, vocab, codes, p, mode, sync, rng) -> dict:
    n_items = len(codes)
    seqs = [rng.integers(0, n_items, size=int(rng.integers(5, p["history"] + 3)))
            for _ in range(p["sft_users"])]
    data = InteractionData(name="synthetic", item_ids=[str(i) for i in range(n_items)],
                           user_ids=[str(u) for u in range(len(seqs))], sequences=seqs)
    splits = leave_one_out(data, max_history=p["history"])
    windows, flags = build_windows(splits.train, p["history"], "chunks")
    tokens, targets, levels = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
    dev = next(model.parameters()).device
    tokens, targets, levels = tokens.to(dev), targets.to(dev), levels.to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"])
    gen = torch.Generator().manual_seed(0)
    counts = {"supervised": 0, "input": 0, "loss": float("nan")}

    def steps(n: int) -> None:
        counts.update(supervised=0, input=0)
        for _ in range(n):
            idx = torch.randperm(len(tokens), generator=gen)[:p["sft_batch"]].to(dev)
            tk, tg, lv = tokens[idx], targets[idx], levels[idx]
            keep = int((tk != PAD).sum(1).max())
            with autocast(dev, mode):
                loss = sft_loss(model, vocab, tk[:, :keep], tg[:, :keep], lv[:, :keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            counts["supervised"] += int((tg >= 0).sum())
            counts["input"] += int((tk != PAD).sum())
        counts["loss"] = float(loss.detach())

    steps(p["warmup_steps"])
    sup, inp = [], []
    for _ in range(max(1, p["repeats"])):
        sync()
        t0 = time.perf_counter()
        steps(p["sft_steps"])
        sync()
        t = time.perf_counter() - t0
        sup.append(counts["supervised"] / t)
        inp.append(counts["input"] / t)
    model.eval()
    return {"sft_supervised_tokens_per_s": harness.median(sup),
            "sft_input_tokens_per_s": harness.median(inp),
            "repeats_sft_supervised_tokens_per_s": sup, "sft_final_loss": counts["loss"]}


def run(quick: bool = False, threads: int = 1, device: str = "cuda",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict | None:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False): nothing measured, "
              "nothing written. CPU throughput: bench/bench_decode.py, bench/bench_sft.py.")
        return None
    p, dev, rng, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, "cuda", seed)
    sync = harness.synchronizer(dev)
    codes = harness.random_catalogue(p["items"], p["codebook_sizes"], rng)
    vocab = SidVocab(p["codebook_sizes"])
    trie = SidTrie(codes, p["codebook_sizes"]).to(dev)
    histories = [rng.integers(0, len(codes), size=p["history"]) for _ in range(p["decode_users"])]
    rows = []
    for name in p["models"]:
        for precision in p["precisions"]:
            set_seed(seed)
            model = harness.random_generator(vocab, p["history"], MODELS[name], dev).eval()
            row = {"model": name, "precision": precision,
                   "parameters": sum(q.numel() for q in model.parameters())}
            row.update(_decode(model, vocab, trie, histories, p, MODE[precision], sync))
            row.update(_sft(model, vocab, codes, p, MODE[precision], sync,
                            np.random.default_rng(seed)))
            rows.append(row)
            print(f"{name} {precision}: beam-50 {row['beam50_ms_per_user']:.3f} ms/user, "
                  f"SFT {row['sft_supervised_tokens_per_s']:.0f} supervised tokens/s")
    units = {"beam50_ms_per_user": "ms", "sft_supervised_tokens_per_s": "tokens/s",
             "sft_input_tokens_per_s": "tokens/s"}
    record = harness.make_record(NAME, "beam-50 decode and SFT throughput on a GPU, fp32 vs "
                                 "bf16 autocast", "random generators, synthetic histories", p,
                                 dev, seed, quick, units, rows, time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    harness.print_table("GPU throughput", rows,
                        [("model", "model"), ("precision", "precision"),
                         ("beam50_ms_per_user", "beam-50 ms/user"),
                         ("sft_supervised_tokens_per_s", "SFT sup. tok/s"),
                         ("sft_input_tokens_per_s", "SFT input tok/s")])
    print(f"\nwritten: {path}")
    return record


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (smoke test)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    run(quick=a.quick, out_dir=harness.resolve_out_dir(a.out_dir, a.quick), seed=a.seed,
        repeats=a.repeats)
