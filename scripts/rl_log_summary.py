"""Mean of the per-step RL curves (exploration and advantage spread) for each method and seed.

    python scripts/rl_log_summary.py runs/scientific grpo_beam grpo_beam_sibling grpo_ved vstar
"""

import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("target_in_group", "unique_items_per_G", "unique_codes_l1", "unique_codes_l2",
        "unique_codes_l3", "sibling_groups_with_signal", "reward_std", "adv_std", "sib_adv_std",
        "kl", "loss_value", "decode_forward_tokens_per_user", "step_seconds")


def main(exp: str, methods: list[str]) -> None:
    print("| method | " + " | ".join(KEYS) + " |")
    print("|---|" + "--:|" * len(KEYS))
    for method in methods:
        per_seed = []
        for log in sorted(Path(exp, method).glob("seed*/rl_log.jsonl")):
            steps = [json.loads(line) for line in log.read_text().splitlines()]
            per_seed.append([np.mean([s[k] for s in steps if k in s]) if any(k in s for s in steps)
                             else np.nan for k in KEYS])
        arr = np.asarray(per_seed)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(arr.mean(0), arr.std(0, ddof=1)
                                                        if len(arr) > 1 else 0 * arr.mean(0))]
        print(f"| {method} (n={len(arr)}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
