"""RL where exploration must matter: beam + GRPO vs V-STAR at equal decoding budget, on a synthetic
catalogue whose prior hides each user's target behind a low-probability first code.

World (docs/method.md section 3, "Why the widen arm counts only expansions"; bench/README.md):
a full SID grid of 16 x 4 x 4 = 256 items and 8 user types; a user's history (4 items of first
code t) names its type t. First codes 0-7 are *broad*, 8-15 *narrow* (``make_world``):

  - the 128 broad items share 88 % of every type's prior, evenly (pair (c1, c2) 2.75 %, item
    0.69 %);
  - all the mass of a narrow code sits on one item (c, c2*_c, c3*_c), whatever the type;
  - type t puts 2.5 % on each of ``t % 3`` decoy narrow codes, 2 % on its hidden code
    h_t = 8 + t, and what is left (< 2 %) evenly on the other narrow codes.

The users RL trains on and the held-out users it is evaluated on all want y*_t, the item of h_t.
Under the SFT policy y*_t is among the most likely items (about 1.4 % against 0.69 % for a broad
item; median rank 5), yet beam search never returns it: at depth 2 its pair ranks below the 32
broad pairs, so any beam of width <= 32 prunes it, and its first code ranks 9th to 11th, outside
VED's initial beam of 8. The reward (rule + rank penalty, the default) pays only a hit, so
beam + GRPO sees no target and no signal; V-STAR sees it only if VED opens h_t (root widening)
and deepens it.

Protocol per seed: SFT a 2-layer generator (32 dims) on 300 steps x 128 fresh prior samples; then
``RLTrainer`` from that same SFT model with
  - ``beam_grpo``: ``RLConfig(decoder="beam", sibling=False, value_loss=False)``,
  - ``vstar``: ``RLConfig()`` (VED, Sibling-GRPO, value loss; VED at its defaults: init beam 8,
    budget 32 = beam-16's cost),
  - ``vstar_children_pulls``: V-STAR with ``ved.widen_pulls="children"`` (the earlier widen rule),
all with G = 16, 32 users per step, lr 1e-3 constant, value lr 1e-3. Logged per step:
target-in-group rate (share of the step's users whose group holds y*), root widenings per user,
distinct first codes per group. At the end: HR@10 of beam search (width 10, the serving decoder)
on 512 held-out users. Mean and std over seeds. Writes synthetic_rl.json (+ synthetic_rl.png when
matplotlib is installed).

    .venv/bin/python bench/bench_synthetic_rl.py [--quick] [--threads 1] [--out-dir DIR]
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from vstar.data.types import SplitRows  # noqa: E402
from vstar.decode import SidTrie, rank_rows  # noqa: E402
from vstar.decode.config import VEDConfig  # noqa: E402
from vstar.model import ModelConfig, SidGenerator, SidVocab  # noqa: E402
from vstar.train.config import RLConfig  # noqa: E402
from vstar.train.rl import RLTrainer  # noqa: E402
from vstar.train.sft import encode_windows, sft_loss  # noqa: E402

NAME = "synthetic_rl"
OUTPUT = "synthetic_rl.json"
PLOT = "synthetic_rl.png"
WORLD = {"codebook_sizes": [16, 4, 4], "n_types": 8, "history": 4, "n_broad": 8,
         "broad_mass": 0.88, "decoy_mass": 0.025, "hidden_mass": 0.02, "max_decoys": 2}
FULL = {**WORLD, "seeds": [0, 1, 2], "sft_steps": 300, "sft_batch": 128, "sft_lr": 3e-3,
        "rl_steps": 30, "users_per_step": 32, "rl_users": 512, "eval_users": 512,
        "n_candidates": 16, "lr": 1e-3, "model": {"n_layer": 2, "n_head": 2, "n_embd": 32}}
QUICK = {**FULL, "seeds": [0], "sft_steps": 150, "rl_steps": 3, "rl_users": 64,
         "eval_users": 64}
METHODS = {
    "beam_grpo": {"decoder": "beam", "sibling": False, "value_loss": False},
    "vstar": {},
    "vstar_children_pulls": {"ved": VEDConfig(widen_pulls="children")},
}
UNITS = {
    "target_in_group": "share of the step's users whose candidate group holds their target, "
                       "per RL step (mean and std over seeds)",
    "root_widenings_per_user": "first codes VED opened beyond its initial beam, per user and "
                               "step (VEDResult.root_widenings; absent for beam)",
    "unique_codes_l1": "distinct first codes among a group's candidates, per step",
    "hr10_sft": "HR@10 of beam search (width 10) on the held-out users, SFT model",
    "hr10": "HR@10 of beam search (width 10) on the held-out users after RL",
    "target_in_group_last10": "target-in-group rate, mean over the last 10 steps",
    "decode_forward_tokens_per_user": "decode forward tokens per user per step (equal budget)",
}


@dataclasses.dataclass
class World:
    codes: np.ndarray        # [N, L] the full grid, item i = row i
    prior: np.ndarray        # [T, N] next-item prior of each type (SFT data)
    target: np.ndarray       # [T] the hidden item y*_t
    hidden_rank: np.ndarray  # [T] rank of h_t among the first codes under the prior (1 = top)

    def histories(self, types: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        """``n`` items per user, drawn from the 16 items of first code t: the history names the
        type."""
        c1 = self.codes[:, 0]
        return [rng.choice(np.nonzero(c1 == t)[0], size=n) for t in types]


def make_world(p: dict, rng: np.random.Generator) -> World:
    """First codes 0..7 are *broad* (16 items each, mass spread evenly); 8..15 are *narrow*: all
    the prior mass of narrow code c sits on one item (c, c2*_c, c3*_c), whatever the type. Type t
    puts ``broad_mass`` on the broad items, ``decoy_mass`` on each of ``t % (max_decoys + 1)``
    decoy narrow codes, ``hidden_mass`` on its hidden code h_t = 8 + t and the rest evenly on the
    remaining narrow codes, so h_t ranks 9th to 11th among the first codes."""
    sizes = p["codebook_sizes"]
    C1, C2, C3 = sizes
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, 3)
    T, n_broad = p["n_types"], p["n_broad"]
    if T != C1 - n_broad:
        raise SystemExit(f"the world needs n_types = C1 - n_broad, got {T} and {C1 - n_broad}")
    star = np.array([int(np.nonzero((grid[:, 0] == c) & (grid[:, 1] == rng.integers(C2))
                                    & (grid[:, 2] == rng.integers(C3)))[0][0])
                     for c in range(n_broad, C1)])                 # one item per narrow code
    prior = np.zeros((T, len(grid)))
    hidden_rank = np.zeros(T, dtype=np.int64)
    broad_items = grid[:, 0] < n_broad
    for t in range(T):
        prior[t, broad_items] = p["broad_mass"] / broad_items.sum()
        others = rng.permutation([j for j in range(T) if j != t])
        n_dec = t % (p["max_decoys"] + 1)
        decoys, rest = others[:n_dec], others[n_dec:]
        prior[t, star[decoys]] = p["decoy_mass"]
        prior[t, star[t]] = p["hidden_mass"]
        mass_rest = 1.0 - p["broad_mass"] - n_dec * p["decoy_mass"] - p["hidden_mass"]
        prior[t, star[rest]] = mass_rest / len(rest)
        assert mass_rest / len(rest) < p["hidden_mass"] < p["decoy_mass"]
        hidden_rank[t] = n_broad + n_dec + 1
    assert np.allclose(prior.sum(1), 1.0)
    return World(grid, prior, star[np.arange(T)], hidden_rank)


def train_sft_on_prior(world: World, p: dict, vocab: SidVocab, rng: np.random.Generator
                       ) -> SidGenerator:
    """A small generator fitted to the prior by ``sft_loss`` on fresh samples every step."""
    m = p["model"]
    model = SidGenerator(ModelConfig(history="codes", n_layer=m["n_layer"], n_head=m["n_head"],
                                     n_embd=m["n_embd"], dropout=0.0),
                         vocab_size=vocab.size, block_size=1 + (p["history"] + 1) * 3)
    opt = torch.optim.AdamW(model.parameters(), lr=p["sft_lr"], weight_decay=0.0)
    item_codes = torch.as_tensor(world.codes)
    T, N = world.prior.shape
    model.train()
    for _ in range(p["sft_steps"]):
        types = rng.integers(T, size=p["sft_batch"])
        hist = world.histories(types, rng, p["history"])
        nxt = [rng.choice(N, p=world.prior[t]) for t in types]
        windows = [np.append(h, y) for h, y in zip(hist, nxt)]
        flags = [np.r_[np.zeros(len(h), bool), True] for h in hist]
        tokens, targets, levels = encode_windows(windows, flags, item_codes, vocab)
        loss = sft_loss(model, vocab, tokens, targets, levels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def target_rows(world: World, n: int, rng: np.random.Generator, p: dict) -> SplitRows:
    types = rng.integers(world.prior.shape[0], size=n)
    return SplitRows(np.arange(n), world.histories(types, rng, p["history"]),
                     world.target[types])


def hit_rate(model, vocab, trie, rows: SplitRows, k: int = 10) -> float:
    ranked, _ = rank_rows(model, vocab, trie, rows, width=k, batch_size=256)
    return float(np.mean([rows.targets[i] in ranked[i] for i in range(len(rows))]))


def prior_check(model, vocab, trie, world: World, rows: SplitRows) -> dict:
    """How the SFT policy sees the hidden items: their log-prob rank among all items, and whether
    beam search of width 16 returns them."""
    from vstar.decode.scoring import score_candidates

    tokens, mask = vocab.encode_histories(rows.histories, trie.codes)
    with torch.no_grad():
        lp = score_candidates(model, vocab, trie, tokens, mask,
                              trie.codes[None].expand(len(rows), -1, -1)).log_probs.sum(-1)
    rank = (lp > lp.gather(1, torch.as_tensor(rows.targets)[:, None])).sum(1) + 1
    ranked, _ = rank_rows(model, vocab, trie, rows, width=16, batch_size=256)
    return {"target_logp_rank_median": float(rank.float().median()),
            "target_prob_mean": float(lp.gather(1, torch.as_tensor(rows.targets)[:, None]).exp().mean()),
            "beam16_target_rate": float(np.mean([rows.targets[i] in ranked[i]
                                                 for i in range(len(rows))]))}


def run_seed(p: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    world = make_world(p, rng)
    sizes = p["codebook_sizes"]
    vocab = SidVocab(sizes)
    trie = SidTrie(world.codes, sizes)
    sft = train_sft_on_prior(world, p, vocab, rng)
    train_rows = target_rows(world, p["rl_users"], rng, p)
    eval_rows = target_rows(world, p["eval_users"], rng, p)
    out = {"seed": seed, "hidden_rank": world.hidden_rank.tolist(),
           "sft": {**prior_check(sft, vocab, trie, world, eval_rows),
                   "hr10": hit_rate(sft, vocab, trie, eval_rows)}, "methods": {}}
    for name, overrides in METHODS.items():
        cfg = RLConfig(**overrides, n_candidates=p["n_candidates"], steps=p["rl_steps"],
                       users_per_step=p["users_per_step"], lr=p["lr"], warmup_steps=1,
                       schedule="constant", log_every=10 ** 9, checkpoint_every=0)
        torch.manual_seed(seed)
        trainer = RLTrainer(copy.deepcopy(sft), vocab, trie, train_rows, cfg,
                            max_history=p["history"], seed=seed)
        hist = trainer.train(progress=False)
        curve = lambda k: [float(h.get(k, float("nan"))) for h in hist]  # noqa: E731
        out["methods"][name] = {
            "target_in_group": curve("target_in_group"),
            "root_widenings_per_user": curve("root_widenings_per_user"),
            "unique_codes_l1": curve("unique_codes_l1"),
            "decode_forward_tokens_per_user": curve("decode_forward_tokens_per_user"),
            "hr10": hit_rate(trainer.policy, vocab, trie, eval_rows),
        }
    return out


def _mean_std(xs) -> tuple[list[float], list[float]]:
    a = np.asarray(xs, dtype=float)
    std = a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])
    return a.mean(0).tolist(), std.tolist()


def summarise(seeds: list[dict]) -> list[dict]:
    rows = []
    for name in METHODS:
        per = [s["methods"][name] for s in seeds]
        row = {"method": name, "n_seeds": len(per)}
        for k in ("target_in_group", "root_widenings_per_user", "unique_codes_l1"):
            row[k], row[k + "_std"] = _mean_std([m[k] for m in per])
        last = [float(np.mean(m["target_in_group"][-10:])) for m in per]
        row["target_in_group_last10"] = float(np.mean(last))
        row["target_in_group_last10_std"] = float(np.std(last, ddof=1)) if len(last) > 1 else 0.0
        hr = [m["hr10"] for m in per]
        row["hr10"] = float(np.mean(hr))
        row["hr10_std"] = float(np.std(hr, ddof=1)) if len(hr) > 1 else 0.0
        row["hr10_sft"] = float(np.mean([s["sft"]["hr10"] for s in seeds]))
        row["decode_forward_tokens_per_user"] = float(np.mean(
            [np.mean(m["decode_forward_tokens_per_user"]) for m in per]))
        row["root_widenings_mean"] = float(np.nanmean(row["root_widenings_per_user"])) \
            if name != "beam_grpo" else None
        row["unique_codes_l1_mean"] = float(np.mean(row["unique_codes_l1"]))
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        m, s = np.asarray(r["target_in_group"]), np.asarray(r["target_in_group_std"])
        x = np.arange(1, len(m) + 1)
        ax.plot(x, m, label=f"{r['method']} (HR@10 {r['hr10']:.3f})")
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel("target-in-group rate")
    ax.set_title("synthetic hidden-first-code world, equal budget (32 tok/user)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    if device != "cpu":
        raise SystemExit("bench_synthetic_rl runs on cpu only (the RL trainer is not moved)")
    p, dev, _, t_start = harness.begin(quick, FULL, QUICK, None, threads, device, seed)
    p["seeds"] = [seed + s for s in p["seeds"]]
    seeds = [run_seed(p, s) for s in p["seeds"]]
    rows = summarise(seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = plot(rows, out_dir / PLOT)
    params = {**p, "methods": {k: {kk: (dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                                        else v) for kk, v in o.items()}
                               for k, o in METHODS.items()},
              "plot": PLOT if plotted else "skipped: matplotlib is not installed"}
    record = harness.make_record(
        NAME, "RL on a synthetic world whose prior hides each target behind a low-probability "
              "first code: beam + GRPO vs V-STAR at equal decoding budget",
        "vstar.train.rl.RLTrainer from one SFT model per seed; target-in-group per step from the "
        "trainer's log; HR@10 of beam search (width 10) on held-out users",
        params, dev, seed, quick, UNITS, rows, time.perf_counter() - t_start)
    record["per_seed"] = seeds
    path = harness.write_record(out_dir, OUTPUT, record)
    harness.print_table(f"synthetic RL, {len(seeds)} seed(s), {p['rl_steps']} steps, "
                        f"{torch.get_num_threads()} thread(s)", rows,
                        [("method", "method"), ("target_in_group_last10", "target in group"),
                         ("target_in_group_last10_std", "std"), ("hr10_sft", "HR@10 SFT"),
                         ("hr10", "HR@10"), ("hr10_std", "std"),
                         ("root_widenings_mean", "root widen/user"),
                         ("unique_codes_l1_mean", "first codes/group"),
                         ("decode_forward_tokens_per_user", "tok/user")])
    print(f"wrote {path}" + (f" and {out_dir / PLOT}" if plotted else " (no plot: matplotlib "
                                                                      "missing)"))
    return record


if __name__ == "__main__":
    harness.standalone_main(run, __doc__)
