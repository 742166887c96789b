"""Seconds per RL step of the issue-13a methods against grpo_beam on the tiny test experiment
(tests/experiments/conftest.py). Run: PYTHONPATH=src:tests/experiments python notes/issue13a_timing.py"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from conftest import write_experiment
from vstar.experiments.cli import main

METHODS = ["grpo_beam", "gspo", "dapo", "grpo_beam_tree", "hepo", "sdpo"]
SETTINGS = {"fixture (8 users, G=4)": [],
            "32 users, G=8": ["rl.users_per_step=32", "rl.n_candidates=8"]}
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
out = {}
with tempfile.TemporaryDirectory() as tmp:
    exp = write_experiment(Path(tmp))
    cfg = str(exp / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft]", "run.num_threads=1"]) == 0
    for name, extra in SETTINGS.items():
        for m in METHODS:
            assert main(["rl", cfg, "--method", m, "run.num_threads=1", f"rl.steps={steps}",
                         "rl.checkpoint_every=0", "run.overwrite=true", *extra]) == 0
            log = exp / "runs" / "toy" / m / "seed0" / "rl_log.jsonl"
            recs = [json.loads(x) for x in log.read_text().splitlines()]
            s = [r["step_seconds"] for r in recs if not r["value_warmup"]][2:]  # skip 2 warm
            out.setdefault(name, {})[m] = (float(np.median(s)), float(np.mean(s)))
for name, rows in out.items():
    base = rows["grpo_beam"][0]
    print(f"\n{name}: median / mean s per step over {steps - 2} steps")
    for m, (med, mean) in rows.items():
        print(f"  {m:15s} {med * 1e3:7.1f} ms  {mean * 1e3:7.1f} ms  x{med / base:.2f}")
