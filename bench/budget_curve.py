"""Inference budget curve of a trained RL run: HR@K / NDCG@K vs decode forward tokens per user.

For each width W: beam search of width W ((L-1)*W decode forward tokens per user) and VED with
n_candidates = W at that same budget, on the run's own data split and SIDs (rebuilt from its
config.yaml and the experiment's artifacts/). Writes
bench/results/budget_curve_<experiment>_<method>_seed<k>_<split>.json and .png.

    .venv/bin/python bench/budget_curve.py runs/scientific/vstar/seed0 [--split valid|test]
        [--widths 10 20 50] [--max-users N] [--batch-size B] [--threads T] [--out-dir DIR]

The same as ``vstar budget RUN_DIR ...`` (one implementation: vstar.eval.budget.run_budget_curve),
except that the default output folder is the results/ folder beside this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vstar.experiments.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out-dir" not in argv and not any(a.startswith("--out-dir=") for a in argv):
        argv += ["--out-dir", str(Path(__file__).resolve().parent / "results")]
    sys.exit(main(["budget", *argv]))
