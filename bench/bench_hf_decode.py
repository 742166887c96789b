"""Constrained beam search through the Hugging Face backbone: vstar's beam search over ``HFSidLM``
against the native decoder and against ``transformers.generate`` with a per-beam prefix-lookup
``LogitsProcessor`` (the MiniOneRec recipe), on the same prompts.

Setting: 4,000 random distinct SIDs (3 x 256 codes), 64 users with 20-item token-level
histories, beam width 50. Models of the same size (2 layers, 4 heads, 128 dims, feed-forward
512): the native ``SidGenerator`` (shared history cache) and a random Qwen2 built from a config
(``HFSidLM``; its SwiGLU feed-forward has 3 matrices, so it has ~1.3x the native parameters).

    native       beam_search(SidGenerator)            one copy of each history per user
    hf_wrapper   beam_search(HFSidLM)                 one copy of each history per user
                                                      (the shared-history attention function)
    hf_per_beam_copies  the same with share_history=False: the history copied into every beam
    hf_generate  lm.generate(num_beams=W, num_return_sequences=W, renormalize_logits=True,
                 logits_processor=[PrefixLookup])     a Python dict lookup per beam and step

``PrefixLookup`` maps the SID tokens generated so far to the allowed next tokens (built from the
catalogue once) and masks the others; with ``renormalize_logits`` the beams are ranked by the
trie-constrained log-probabilities, as vstar ranks them, so both return the same items up to
ties (``same_items_as_wrapper``: share of users with the same top-W set). Times: users in
batches (``batch_size``, ``generate_batch`` for generate), prefill included, median over
repeats after one warm-up call. Writes hf_decode.json.

    .venv/bin/python bench/bench_hf_decode.py [--quick] [--threads 1] [--device cpu] [--out-dir DIR]
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
from vstar.decode import SidTrie, beam_search  # noqa: E402
from vstar.model import ModelConfig, SidVocab  # noqa: E402
from vstar.model.hf import new_hf_model  # noqa: E402
from vstar.model.vocab import PAD  # noqa: E402

NAME = "hf_decode"
OUTPUT = "hf_decode.json"
FULL = {"users": 64, "items": 4000, "codebook_sizes": [256, 256, 256], "history": 20,
        "width": 50, "batch_size": 64, "generate_batch": 8, "repeats": 3,
        "model": harness.SCIENTIFIC_MODEL, "hf_model_type": "qwen2"}
QUICK = {"users": 8, "items": 300, "codebook_sizes": [16, 16, 16], "history": 5,
         "width": 5, "batch_size": 8, "generate_batch": 4, "repeats": 1,
         "model": harness.SCIENTIFIC_MODEL, "hf_model_type": "qwen2"}
UNITS = {
    "wall_ms_per_user": "ms of wall time per user (prefill + decode), median over repeats",
    "users_per_second": "users decoded per second, median over repeats",
    "model_parameters": "parameters of the backbone",
    "vs_native": "wall_ms_per_user / the native decoder's",
    "generate_vs_this": "hf_generate's wall_ms_per_user / this row's",
    "n_invalid": "returned SIDs that are not catalogue items (must be 0)",
    "same_items_as_wrapper": "share of users whose top-W item set equals hf_wrapper's",
    "top10_overlap_with_wrapper": "mean |top-10 of this row & top-10 of hf_wrapper| / 10",
}


def prefix_table(codes: np.ndarray, vocab: SidVocab) -> dict[tuple, list[int]]:
    """Generated token prefix (tuple of token ids) -> the allowed next token ids."""
    tokens = vocab.code_tokens(torch.as_tensor(codes)).tolist()
    table: dict[tuple, set] = {}
    for row in tokens:
        for d in range(len(row)):
            table.setdefault(tuple(row[:d]), set()).add(row[d])
    return {k: sorted(v) for k, v in table.items()}


def prefix_lookup_processor(table: dict[tuple, list[int]], prompt_len: int):
    """The MiniOneRec-style constraint: per beam row, look its generated prefix up and mask
    every token it does not allow."""
    from transformers import LogitsProcessor

    class PrefixLookup(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            mask = torch.full_like(scores, float("-inf"))
            for i, row in enumerate(input_ids[:, prompt_len:].tolist()):
                mask[i, table.get(tuple(row), [])] = 0.0
            return scores + mask

    return PrefixLookup()


def generate_items(lm, table, trie: SidTrie, vocab: SidVocab, tokens: torch.Tensor,
                   mask: torch.Tensor, width: int) -> torch.Tensor:
    """Top-``width`` items [B, W] of ``transformers.generate`` constrained by ``table``."""
    from transformers import LogitsProcessorList

    L = vocab.n_levels
    out = lm.generate(input_ids=tokens, attention_mask=mask.long(), num_beams=width,
                      num_return_sequences=width, max_new_tokens=L, min_new_tokens=L,
                      do_sample=False, renormalize_logits=True, pad_token_id=PAD,
                      eos_token_id=None, length_penalty=0.0, early_stopping=True,
                      logits_processor=LogitsProcessorList(
                          [prefix_lookup_processor(table, tokens.shape[1])]))
    gen = out[:, tokens.shape[1]:]                                            # [B*W, L]
    codes = torch.stack([gen[:, l] - vocab.offsets[l] for l in range(L)], 1)
    bad = (codes < 0) | (codes >= torch.as_tensor(vocab.codebook_sizes))
    items = trie.item_of(codes.clamp(min=0))
    return torch.where(bad.any(1), -1, items).reshape(tokens.shape[0], width)


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    import transformers

    p, dev, rng, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, device, seed)
    sizes = p["codebook_sizes"]
    codes = harness.random_catalogue(p["items"], sizes, rng)
    trie = SidTrie(codes, sizes).to(dev)
    vocab = SidVocab(sizes)
    histories = [rng.integers(0, len(codes), size=p["history"]) for _ in range(p["users"])]
    tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes),
                                          max_items=p["history"])
    tokens, mask = tokens.to(dev), mask.to(dev)
    torch.manual_seed(seed)
    native = harness.random_generator(vocab, p["history"], p["model"], dev).eval()
    m = p["model"]
    hf_cfg = ModelConfig(**{**m, "backbone": "hf", "hf_config": {"model_type": p["hf_model_type"]}})
    hf = new_hf_model(hf_cfg, vocab, p["history"]).to(dev).eval()
    with torch.no_grad():                   # peaked like harness.random_generator's native one
        hf.lm.get_input_embeddings().weight.normal_(0, 0.5)
    table = prefix_table(codes, vocab)
    sync = harness.synchronizer(dev)
    B, W = p["users"], p["width"]

    def beams(model, bs):
        return torch.cat([beam_search(model, vocab, trie, tokens[s:s + bs], mask[s:s + bs],
                                      W).items for s in range(0, B, bs)])

    def generated(bs):
        return torch.cat([generate_items(hf.lm, table, trie, vocab, tokens[s:s + bs],
                                         mask[s:s + bs], W) for s in range(0, B, bs)])

    def per_beam(bs):               # the wrapper without its shared-history cache
        hf.share_history = False
        try:
            return beams(hf, bs)
        finally:
            hf.share_history = True

    assert hf.share_history, "the benchmark's HF family has a shared-history cache"
    runs = {"native": (lambda: beams(native, p["batch_size"]), native),
            "hf_wrapper": (lambda: beams(hf, p["batch_size"]), hf),
            "hf_per_beam_copies": (lambda: per_beam(p["batch_size"]), hf),
            "hf_generate": (lambda: generated(p["generate_batch"]), hf)}
    rows, items = [], {}
    with torch.no_grad():
        for name, (fn, model) in runs.items():
            times, items[name] = harness.time_repeats(fn, p["repeats"], sync, warmup=1)
            ms = [1e3 * t / B for t in times]
            rows.append({"decoder": name, "wall_ms_per_user": harness.median(ms),
                         "users_per_second": B / harness.median(times),
                         "model_parameters": sum(q.numel() for q in model.parameters()),
                         "n_invalid": int((items[name] < 0).sum()),
                         "repeats": {"wall_ms_per_user": ms, "wall_seconds": times}})
    base = {r["decoder"]: r["wall_ms_per_user"] for r in rows}
    ref = items["hf_wrapper"].cpu()
    for r in rows:
        got = items[r["decoder"]].cpu()
        r["vs_native"] = r["wall_ms_per_user"] / base["native"]
        r["generate_vs_this"] = base["hf_generate"] / r["wall_ms_per_user"]
        if r["decoder"] == "native":                 # another model: its items differ
            continue
        r["same_items_as_wrapper"] = float(np.mean(
            [set(a.tolist()) == set(b.tolist()) for a, b in zip(got, ref)]))
        k = min(10, W)
        r["top10_overlap_with_wrapper"] = float(np.mean(
            [len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(got, ref)]))
    params = {**p, "seed": seed, "n_levels": len(sizes), "transformers": transformers.__version__}
    record = harness.make_record(
        NAME, "constrained beam search through the HF backbone (HFSidLM) vs the native decoder "
        "vs transformers.generate with a per-beam prefix-lookup LogitsProcessor",
        "one process; histories encoded once; users in batches, prefill included; median over "
        "repeats after one warm-up call", params, dev, seed, quick, UNITS, rows,
        time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    harness.print_table(
        f"hf_decode: beam {W}, {B} users, {p['items']} items, codebooks {sizes}, {dev}, "
        f"{torch.get_num_threads()} thread(s)", rows,
        [("decoder", "decoder"), ("wall_ms_per_user", "ms/user"), ("vs_native", "x native"),
         ("generate_vs_this", "generate / this"), ("same_items_as_wrapper", "same items"),
         ("top10_overlap_with_wrapper", "top-10 overlap"), ("n_invalid", "invalid")])
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    harness.standalone_main(run, __doc__)
