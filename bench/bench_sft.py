"""SFT training throughput: supervised tokens per second and optimizer steps per second.

Synthetic data: a catalogue of 4,000 random distinct SIDs (3 levels x 256 codes) and 2,000 users
with random item sequences of 5..30 items, split leave-one-out (``vstar.data.splits``); the
training rows are cut into windows exactly as SFT does (``vstar.data.windows.build_windows``,
"chunks", max_history 20; ``vstar.train.sft.encode_windows``). Each timed repeat runs ``steps``
training steps as ``vstar.train.sft.train_sft`` does, without validation or LR schedule: a random
batch of 128 windows trimmed of right padding, ``sft_loss``, backward, gradient clipping, AdamW
step. Model: Scientific size (2 layers, 4 heads, 128 dims), with token-level and with item-level
history (+ item-ID embedding), the latter with random and with length-grouped batches
(``sft.group_by_length``), and with the item head (``sft.item_loss`` + ``sft.item_distill``),
with random batches run whole and as 4 length-sorted micro-batches (``sft.micro_batches``).
Also reports FLOPs per step and their share of the fp32 matmul peak measured in the same run.
Writes sft_throughput.json.

    .venv/bin/python bench/bench_sft.py [--quick] [--threads 1] [--device cpu] [--out-dir DIR]
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
from vstar.core.repro import set_seed  # noqa: E402
from vstar.data.splits import leave_one_out  # noqa: E402
from vstar.data.types import InteractionData  # noqa: E402
from vstar.data.windows import build_windows  # noqa: E402
from vstar.model import PAD, ModelConfig, make_vocab  # noqa: E402
from vstar.train.sft import (encode_windows, length_grouped_batches,  # noqa: E402
                             micro_batches, sft_loss, target_items)

NAME = "sft"
OUTPUT = "sft_throughput.json"
FULL = {"users": 2000, "items": 4000, "codebook_sizes": [256, 256, 256], "max_history": 20,
        "sequence_length": [5, 30], "windows": "chunks", "batch_size": 128, "steps": 20,
        "warmup_steps": 3, "repeats": 3, "lr": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0,
        "model": harness.SCIENTIFIC_MODEL}
QUICK = {"users": 64, "items": 500, "codebook_sizes": [32, 32, 32], "max_history": 20,
         "sequence_length": [5, 30], "windows": "chunks", "batch_size": 32, "steps": 3,
         "warmup_steps": 1, "repeats": 1, "lr": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0,
         "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.0}}
UNITS = {
    "supervised_tokens_per_second": "supervised (loss-bearing) SID code tokens per second, median",
    "steps_per_second": "optimizer steps (forward + backward + clip + AdamW) per second, median",
    "ms_per_step": "ms of wall time per optimizer step, median",
    "input_tokens_per_second": "non-padding input tokens read per second, median",
    "supervised_tokens_per_step": "mean supervised tokens in a batch",
    "wall_seconds": "wall seconds of one timed repeat of `steps` steps",
    "gflop_per_step": "GFLOP of forward + backward per step (torch flop counter)",
    "achieved_gflops": "gflop_per_step x steps_per_second",
    "share_of_matmul_peak": "achieved_gflops / the fp32 matmul rate of the same run",
}


def synthetic_splits(p: dict, n_items: int, rng: np.random.Generator):
    lo, hi = p["sequence_length"]
    seqs = [rng.integers(0, n_items, size=int(rng.integers(lo, hi + 1))).astype(np.int64)
            for _ in range(p["users"])]
    data = InteractionData(name="synthetic", item_ids=[str(i) for i in range(n_items)],
                           user_ids=[str(u) for u in range(p["users"])], sequences=seqs)
    return leave_one_out(data, max_history=p["max_history"])


HISTORIES = {"codes": {}, "items": {"history": "items", "item_id_embedding": True}}
# (history, batching) rows: "random" = uniformly drawn batches (the default), "by_length" =
# sft.group_by_length (train.sft.length_grouped_batches), which pads each batch only to its own
# longest window; "+head" =
# the Scientific default's item head on top: sft.item_loss 1 (a full-catalogue softmax at every
# target) with sft.item_distill 0.5 (a KL to a teacher table, random here: its cost, not its use);
# "micro4" = sft.micro_batches 4 (train.sft.micro_batches): each random batch sorted by length
# and run as 4 parts, each trimmed of its own padding, with the whole batch's gradient
CASES = [("codes", "random"), ("items", "random"), ("items", "by_length"),
         ("items", "random+head"), ("items", "micro4+head")]
MICRO_BATCHES = 4
ITEM_LOSS, ITEM_DISTILL = 1.0, 0.5


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    p, dev, _, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, device, seed)
    peak = harness.matmul_peak(dev, n=512 if quick else 2048)
    rows, params_by_history = [], {}
    for history, batching in CASES:
        model_extra = HISTORIES[history]
        set_seed(seed)
        rng = np.random.default_rng(seed)
        sizes = p["codebook_sizes"]
        codes = harness.random_catalogue(p["items"], sizes, rng)
        model_cfg = {**p["model"], **model_extra}
        vocab = make_vocab(ModelConfig(**model_cfg), sizes, len(codes))
        splits = synthetic_splits(p, len(codes), rng)
        windows, flags = build_windows(splits.train, p["max_history"], p["windows"])
        tokens, targets, levels = encode_windows(windows, flags, torch.as_tensor(codes), vocab)
        head = batching.endswith("+head")
        items = target_items(targets, levels, torch.as_tensor(codes), vocab) if head else None
        item_row = torch.full(targets.shape, -1, dtype=torch.long)
        if head:                                  # one teacher row per target, as train_sft
            item_row[items >= 0] = torch.arange(int((items >= 0).sum()))
            gen_soft = torch.Generator().manual_seed(seed)
            soft = torch.softmax(torch.randn(int((items >= 0).sum()), len(codes),
                                             generator=gen_soft), -1).half().to(dev)
            items, item_row = items.to(dev), item_row.to(dev)
        tokens, targets, levels = tokens.to(dev), targets.to(dev), levels.to(dev)
        model = harness.random_generator(vocab, p["max_history"], model_cfg, dev, peaked=False,
                                         codes=codes)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        sync = harness.synchronizer(dev)
        gen = torch.Generator().manual_seed(seed)
        N, bs = len(windows), p["batch_size"]
        stats = {"supervised": 0, "input": 0, "steps": 0, "loss": float("nan"), "flops": 0.0}

        lengths = (tokens != PAD).sum(1).cpu().numpy()
        grouped: list[np.ndarray] = []
        batch_rng = np.random.default_rng(seed)

        def batch() -> list[tuple]:
            """The batch's parts (one unless micro-batched): (tokens, targets, levels, extra
            sft_loss arguments, weight = the part's share of the supervised tokens)."""
            if batching == "by_length":
                if not grouped:                                   # a new epoch's batches
                    grouped.extend(length_grouped_batches(lengths, bs, batch_rng)[::-1])
                idx = torch.as_tensor(grouped.pop())
            else:
                idx = torch.randperm(N, generator=gen)[:bs]
            n_batch = int((targets[idx.to(dev)] >= 0).sum())
            parts = micro_batches(idx, lengths, MICRO_BATCHES if batching.startswith("micro")
                                  else 1)
            out = []
            for part in parts:
                part = part.to(dev)
                tk, tg, lv = tokens[part], targets[part], levels[part]
                keep = int((tk != PAD).sum(1).max())          # trim right padding, as train_sft
                extra = {}
                if head:
                    r = item_row[part][:, :keep]
                    extra = {"items": items[part][:, :keep], "item_loss": ITEM_LOSS,
                             "item_soft": soft[r[r >= 0]], "item_distill": ITEM_DISTILL}
                out.append((tk[:, :keep], tg[:, :keep], lv[:, :keep], extra,
                            int((tg >= 0).sum()) / n_batch))
            return out

        def backward(parts: list[tuple]) -> torch.Tensor:
            """The batch's mean loss, its gradient accumulated part by part (as train_sft)."""
            total = torch.zeros(())
            for tk, tg, lv, extra, weight in parts:
                loss = sft_loss(model, vocab, tk, tg, lv, **extra) * weight
                loss.backward()
                total = total + loss.detach().cpu()
            return total

        def steps(n: int) -> dict:
            stats.update(supervised=0, input=0, steps=0)
            for _ in range(n):
                parts = batch()
                opt.zero_grad(set_to_none=True)
                loss = backward(parts)
                torch.nn.utils.clip_grad_norm_(model.parameters(), p["grad_clip"])
                opt.step()
                stats["supervised"] += sum(int((tg >= 0).sum()) for _, tg, _, _, _ in parts)
                stats["input"] += sum(int((tk != PAD).sum()) for tk, _, _, _, _ in parts)
                stats["steps"] += 1
            stats["loss"] = float(loss)
            return dict(stats)

        # FLOPs of forward + backward, averaged over a few batches (untimed)
        flops = []
        for _ in range(3):
            parts = batch()
            flops.append(harness.count_flops(lambda: backward(parts)))
        opt.zero_grad(set_to_none=True)
        flops_per_step = float(np.mean(flops))
        # warm-up: ``warmup_steps`` untimed steps (allocations, AdamW state), then timed repeats
        times, outs = [], []
        steps(p["warmup_steps"])
        for _ in range(max(1, p["repeats"])):
            sync()
            t0 = time.perf_counter()
            outs.append(steps(p["steps"]))
            sync()
            times.append(time.perf_counter() - t0)
        sup = [o["supervised"] / t for o, t in zip(outs, times)]
        inp = [o["input"] / t for o, t in zip(outs, times)]
        sps = [p["steps"] / t for t in times]
        ms = [1e3 * t / p["steps"] for t in times]
        achieved = flops_per_step * harness.median(sps) / 1e9
        rows.append({
            "history": history,
            "batching": batching,
            "batch_size": bs,
            "supervised_tokens_per_second": harness.median(sup),
            "steps_per_second": harness.median(sps),
            "ms_per_step": harness.median(ms),
            "input_tokens_per_second": harness.median(inp),
            "supervised_tokens_per_step": float(np.mean([o["supervised"] for o in outs]))
            / p["steps"],
            "gflop_per_step": flops_per_step / 1e9,
            "achieved_gflops": achieved,
            "share_of_matmul_peak": achieved / peak["gflops"],
            "last_loss": outs[-1]["loss"],
            "repeats": {"supervised_tokens_per_second": sup, "steps_per_second": sps,
                        "ms_per_step": ms, "input_tokens_per_second": inp, "wall_seconds": times},
        })
        params_by_history[history] = {
            "model": model_cfg, "model_parameters": model.num_parameters(),
            "train_rows": len(splits.train), "n_windows": N,
            "window_length_tokens": int(tokens.shape[1]),
            "supervised_tokens_total": int((targets >= 0).sum())}
    params = {**p, "seed": seed, "n_levels": len(p["codebook_sizes"]),
              "histories": params_by_history, "validation": False, "lr_schedule": None,
              "matmul_peak": peak}
    record = harness.make_record(
        NAME, "SFT training throughput (no validation), token-level and item-level history",
        "windows from build_windows + encode_windows on synthetic leave-one-out SplitRows "
        "(random item sequences); each step: a batch of windows (random, or length-grouped as "
        "sft.group_by_length) trimmed of right padding (or, micro4, a random batch run as 4 "
        "length-sorted parts each trimmed of its own padding, sft.micro_batches), "
        "sft_loss + backward + clip_grad_norm_ + AdamW.step (as train_sft, without LR schedule "
        "or validation); median over repeats after warmup_steps untimed steps. FLOPs per step: "
        "torch.utils.flop_counter on forward + backward; peak: a fp32 matmul of n^3 on the "
        "same device and threads",
        params, dev, seed, quick, UNITS, rows, time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    harness.print_table(f"sft: windows of <= {p['max_history'] + 1} items, model "
                        f"{p['model']}, {dev}, {torch.get_num_threads()} thread(s), matmul peak "
                        f"{peak['gflops']:.1f} GFLOP/s", rows,
                        [("history", "history"), ("batching", "batching"),
                         ("batch_size", "batch"),
                         ("supervised_tokens_per_second", "sup tok/s"),
                         ("steps_per_second", "steps/s"), ("ms_per_step", "ms/step"),
                         ("achieved_gflops", "GFLOP/s"), ("share_of_matmul_peak", "of peak")])
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    harness.standalone_main(run, __doc__)
