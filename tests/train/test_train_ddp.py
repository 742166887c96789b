"""Data parallelism (vstar.core.dist): an SFT step and RL steps on 2 gloo processes equal the
single-process steps on the same global batch (loss, logged losses, updated weights), for the
native decoder and the HF backbone; evaluation shards users and gathers the same ranking.

The two processes are spawned by the test (torch.multiprocessing), bounded in time.
"""

import dataclasses
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from vstar.data.types import SplitRows, Splits
from vstar.decode import SidTrie, rank_rows
from vstar.decode.ved import VEDConfig
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.train.config import RLConfig, SFTConfig
from vstar.train.rl import RLTrainer
from vstar.train.sft import train_sft

WORLD = 2
TIMEOUT_S = 150
SIZES = (4, 4, 3)
RL_CASES = {
    # value gradient into the backbone (autograd.grad path), head-only refits, value diagnostic
    "beam": RLConfig(decoder="beam", n_candidates=6, users_per_step=7, steps=1, lr=1e-3,
                     warmup_steps=0, value_warmup_steps=0, value_grad_to_backbone=True,
                     value_updates_per_step=2, value_diag_every=1, value_gate="always",
                     checkpoint_every=0),
    # VED groups after a value-only warm-up step (the plain backward path)
    "ved": RLConfig(decoder="ved", n_candidates=6, users_per_step=7, steps=1, lr=1e-3,
                    warmup_steps=0, value_warmup_steps=1, value_targets="candidates",
                    value_diag_every=1, value_gate="always", ved=VEDConfig(init_beam=2),
                    checkpoint_every=0),
}


def _data():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1)
    codes = grid.reshape(-1, len(SIZES))[rng.choice(int(np.prod(SIZES)), 30, replace=False)]
    trie = SidTrie(codes, list(SIZES))
    hist = [rng.integers(0, 30, size=rng.integers(1, 5)) for _ in range(15)]
    rows = SplitRows(np.arange(15), hist, np.asarray([(h[-1] * 7 + 3) % 30 for h in hist]))
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return trie, rows, emb


def _model(backbone: str):
    vocab = SidVocab(list(SIZES))
    torch.manual_seed(0)
    if backbone == "hf":
        from vstar.testing import tiny_hf_model

        return vocab, tiny_hf_model(vocab, "qwen2", n_layer=1, n_embd=16, max_history=10)
    return vocab, SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16,
                                           dropout=0.0), vocab.size, 64)


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _scenarios(tmp=None) -> dict:
    """Every scenario's loss / records, updated weights and rankings, in this process group."""
    trie, rows, emb = _data()
    out = {}
    for backbone in ("vstar", "hf"):
        vocab, model = _model(backbone)
        splits = Splits("leave_one_out", rows, rows, rows, max_history=4)
        seen = []

        def validate(m, val_rows):
            ranked, cost = rank_rows(m, vocab, trie, val_rows, 5, batch_size=4, max_history=4)
            seen.append(ranked)
            return {"NDCG@10": float((ranked == val_rows.targets[:, None]).any(1).mean())}

        cfg = SFTConfig(lr=1e-2, batch_size=64, max_epochs=1, warmup_steps=1, windows="rows",
                        val_max_users=0)
        model, history = train_sft(model, vocab, trie, splits, cfg, validate=validate,
                                   progress=False)
        out[f"sft_{backbone}"] = {"loss": history[0]["train_loss"], "state": _state(model),
                                  "ranked": seen[-1]}
        for name, rcfg in RL_CASES.items():
            if backbone == "hf" and name == "ved":
                continue
            _, policy = _model(backbone)
            trainer = RLTrainer(policy, vocab, trie, rows, dataclasses.replace(rcfg), 4,
                                item_emb=emb)
            records = trainer.train(progress=False)
            out[f"rl_{name}_{backbone}"] = {"records": records, "state": _state(policy),
                                            "value": _state(trainer.value_head)}
    if tmp is not None:
        out["resume_gap"] = _resume_gap(tmp, trie, rows, emb)
    return out


def _resume_gap(tmp, trie, rows, emb) -> float:
    """Largest weight difference between 3 sampled-group RL steps and 2 steps, save, load into
    a fresh trainer, 1 step (each rank's sampling RNG is saved and restored)."""
    cfg = RLConfig(decoder="sample", n_candidates=4, users_per_step=6, steps=3, lr=1e-2,
                   warmup_steps=0, value_warmup_steps=0, value_diag_every=0,
                   value_gate="always", checkpoint_every=0)
    trainers = []
    for steps in (3, 2, 3):
        vocab, policy = _model("vstar")
        trainers.append(RLTrainer(policy, vocab, trie, rows, cfg, 4, seed=1, item_emb=emb))
        if len(trainers) < 3:
            trainers[-1].total_steps = steps               # the cut run stops after step 2
            trainers[-1].train(progress=False)
    full, cut, resumed = trainers
    cut.save(f"{tmp}/rl_state.safetensors")          # every rank calls it, rank 0 writes
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    resumed.load(f"{tmp}/rl_state.safetensors")
    resumed.train(progress=False)
    a, b = _state(full.policy), _state(resumed.policy)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.save(_scenarios(out_dir), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _close(a: dict, b: dict, atol: float = 2e-5) -> list[str]:
    return [k for k in a if not torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-4)]


def test_one_sft_step_and_rl_steps_on_two_processes_equal_the_single_process_steps(tmp_path):
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"the {WORLD} processes did not finish in {TIMEOUT_S} s")
    single = _scenarios()                       # no process group: the single-process run
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [got.pop("resume_gap") for got in ranks] == [0.0] * WORLD   # resume under DDP
    for name, ref in single.items():
        for r, got in enumerate(ranks):
            run = got[name]
            assert not _close(ref["state"], run["state"]), (name, r, _close(ref["state"],
                                                                               run["state"]))
            if name.startswith("sft"):
                assert run["loss"] == pytest.approx(ref["loss"], rel=1e-5), name
                assert np.array_equal(run["ranked"], ref["ranked"]), name   # gathered ranking
                continue
            assert not _close(ref["value"], run["value"]), name
            assert len(run["records"]) == len(ref["records"])
            for rec_ref, rec in zip(ref["records"], run["records"]):
                for key in [k for k in rec_ref if k.startswith(("loss_", "vdiag_pct"))]:
                    assert rec[key] == pytest.approx(rec_ref[key], rel=1e-4, abs=1e-6), (name, key)
                assert rec["grad_norm_policy"] == pytest.approx(rec_ref["grad_norm_policy"],
                                                                rel=1e-4, abs=1e-7), name
