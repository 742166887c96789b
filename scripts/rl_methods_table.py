"""The issue-13 comparison table: every RL recipe of an experiment against GRPO, from the same SFT
generators (docs/results/other_rl_studies.md).

    .venv/bin/python scripts/rl_methods_table.py runs/sci_kd [--split test]
    # other rows, seeds and baseline (the V-STAR switches of issue 8, against V-STAR):
    .venv/bin/python scripts/rl_methods_table.py runs/sci_kd --seeds 0 1 2 3 4 --base vstar \
        --methods sft grpo_beam vstar vstar_old_widen vstar_sib_same vstar_pi_bestfirst

Mean ± std over seeds of HR@{1,3,5,10} and NDCG@{3,5,10}, seconds per RL step, and the paired
test (per-user NDCG@10 averaged over seeds; bootstrap CI and p, Wilcoxon p) of each method against
its baseline: ``grpo_beam_x2`` for the recipes that reuse each batch twice (gspo, dapo),
``grpo_beam`` for the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vstar.eval.paired import paired_comparison

METHODS = ["sft", "grpo_beam", "grpo_beam_x2", "gspo", "dapo", "grpo_beam_tree", "hepo",
           "hepo_vbeam", "sdpo", "a2po", "a2po_reward_sum", "a2po_adv_sum", "grpo_beam_sibling", "grpo_ved", "vstar"]
TWICE = {"gspo", "dapo"}
METRICS = ["HR@1", "HR@3", "HR@5", "HR@10", "NDCG@3", "NDCG@5", "NDCG@10"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="the seeds every row reads (default: 0 1 2, the table's)")
    p.add_argument("--methods", nargs="+", default=METHODS, help="the rows (default: all)")
    p.add_argument("--base", default=None,
                   help="the one baseline of every paired test (default: grpo_beam, or "
                        "grpo_beam_x2 for gspo and dapo)")
    args = p.parse_args()
    rows = []
    for m in args.methods:
        runs = [args.experiment / m / f"seed{k}" for k in args.seeds]
        recs = []
        for r in runs:
            f = r / "metrics.json" if args.split == "test" else r / args.split / "metrics.json"
            if f.is_file():
                recs.append(json.loads(f.read_text()))
        if not recs:
            continue
        cells = [f"{np.mean([x['metrics'][k] for x in recs]):.4f} ± "
                 f"{np.std([x['metrics'][k] for x in recs], ddof=1) if len(recs) > 1 else 0:.4f}"
                 for k in METRICS]
        sps = [x.get("cost", {}).get("seconds_per_rl_step") for x in recs]
        sps = [s for s in sps if s is not None]
        paired = ""
        base = args.base or ("grpo_beam_x2" if m in TWICE else "grpo_beam")
        if m not in ("sft", base) and (args.base or m != "grpo_beam"):
            res = paired_comparison(args.experiment, m, base, metric="NDCG@10", split=args.split,
                                    seeds=[k for k in args.seeds
                                           if (args.experiment / m / f"seed{k}").is_dir()])
            paired = (f"{res['diff']:+.4f} [{res['ci_low']:+.4f}, {res['ci_high']:+.4f}], "
                      f"p = {res['p_bootstrap']:.2g} / {res['p_wilcoxon']:.2g} vs `{base}`")
        speed = f"{np.mean(sps):.2f}" if sps else ""
        rows.append(f"| `{m}` | {len(recs)} | " + " | ".join(cells) + f" | {speed} | {paired} |")
    print("| method | seeds | " + " | ".join(METRICS) + " | s/step | NDCG@10 paired |")
    print("|---|--:|" + "--:|" * len(METRICS) + "--:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
