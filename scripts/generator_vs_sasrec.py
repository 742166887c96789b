"""Where the SID generator and SASRec differ on one seed: HR@10 by target popularity and the
log-likelihood of the test target, per SID level (docs/results/generator_studies.md).

    .venv/bin/python scripts/generator_vs_sasrec.py configs/scientific.yaml \
        --generator runs/sci_gen_lr1/sft/seed0 --sasrec runs/sci_gen/sasrec/seed0 [--rows 2000] \
        [override ...]

Both run folders must come from the same data config (the same splits); the generator folder's
experiment must hold the SIDs it was trained on (``<experiment>/artifacts``). SASRec's item
softmax is summed over the items under each SID prefix, so that both models' log-likelihoods
split the same way: log p(item) = sum over levels of log p(code | prefix).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from vstar.baselines.sasrec import encode_histories, load_sasrec
from vstar.decode.trie import SidTrie, constrained_log_probs
from vstar.experiments.config import load_config
from vstar.experiments.pipeline import prepare
from vstar.model.generator import load_generator, make_vocab
from vstar.train.sft import encode_windows, target_nodes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--generator", type=Path, required=True, help="SFT run folder (seed<k>)")
    p.add_argument("--sasrec", type=Path, required=True, help="SASRec run folder (seed<k>)")
    p.add_argument("--rows", type=int, default=2000, help="first N test rows for the NLL")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()
    torch.set_num_threads(1)
    experiment = args.generator.parent.parent
    cfg = load_config(args.config, [f"run.name={experiment.name}",
                                    f"run.out_dir={experiment.parent}"] + args.overrides)
    prep = prepare(cfg)
    sids, splits = prep.sids, prep.splits
    vocab = make_vocab(cfg.model, sids.codebook_sizes, sids.n_items)
    trie = SidTrie(sids.codes, sids.codebook_sizes)
    gen = load_generator(args.generator / "generator.safetensors", vocab, trie.codes)
    scfg = dataclasses.replace(cfg.sasrec, max_len=splits.max_history)
    sas = load_sasrec(args.sasrec / "sasrec.safetensors", scfg, sids.n_items).eval()

    test = splits.test
    pop = prep.popularity[test.targets]
    edges = np.quantile(pop, [0.25, 0.5, 0.75])
    group = np.digitize(pop, edges)
    hit = {name: (lambda r: (r >= 1) & (r <= 10))(np.load(folder / "ranks_test.npy"))
           for name, folder in (("generator", args.generator), ("sasrec", args.sasrec))}
    print(f"HR@10 by quartile of the target's training count (edges {edges.tolist()}):")
    for g in range(4):
        m = group == g
        print(f"  quartile {g + 1}: n={int(m.sum())}  generator {hit['generator'][m].mean():.4f}"
              f"  sasrec {hit['sasrec'][m].mean():.4f}")

    rows = test.subset(np.arange(min(args.rows, len(test))))
    L, n = vocab.n_levels, len(rows)
    codes = torch.as_tensor(trie.codes)
    gen_ll, sas_ll = np.zeros((n, L)), np.zeros((n, L))
    windows = [np.r_[h[-splits.max_history:], t] for h, t in zip(rows.histories, rows.targets)]
    flags = [np.r_[np.zeros(len(w) - 1, bool), True] for w in windows]
    tokens = encode_histories(rows.histories, scfg.max_len, sids.n_items)
    with torch.no_grad():
        for s in range(0, n, 256):
            tk, tg, lv = encode_windows(windows[s:s + 256], flags[s:s + 256], codes, vocab)
            nd = target_nodes(tg, lv, vocab, trie)
            sel = tg >= 0
            logits = gen(tk, pad_mask=tk != 0, teacher_forced=True).logits[sel]
            ll = [constrained_log_probs(logits[j, vocab.level_slice(int(l))],
                                        trie.allowed(int(l), nd[sel][j]))
                  [int(t) - vocab.level_slice(int(l)).start]
                  for j, (t, l) in enumerate(zip(tg[sel], lv[sel]))]
            gen_ll[s:s + 256] = torch.stack(ll).reshape(-1, L).numpy()
            probs = torch.softmax(sas(tokens[s:s + 256]), -1).double()          # [b, N]
            for r in range(probs.shape[0]):
                target_codes = codes[rows.targets[s + r]]
                under = torch.ones(sids.n_items, dtype=torch.bool)
                for l in range(L):
                    child = under & (codes[:, l] == target_codes[l])
                    sas_ll[s + r, l] = float(probs[r][child].sum().log()
                                             - probs[r][under].sum().log())
                    under = child
    print(f"test log-likelihood of the target, first {n} rows (nats; per level, total):")
    for name, ll in (("generator", gen_ll), ("sasrec", sas_ll)):
        print(f"  {name:9s} {np.round(ll.mean(0), 3).tolist()}  {ll.sum(1).mean():.3f}")


if __name__ == "__main__":
    main()
