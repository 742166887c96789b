"""vstar: generative recommendation with semantic IDs and reinforcement learning (V-STAR).

The pipeline flows one way, one sub-package per stage:

    data/    raw logs -> items, sequences, splits
    sid/     item text / vectors -> collision-free semantic IDs
    model/   decoder-only generator over SID tokens (SFT)
    decode/  SID trie, constrained beam search and sampling (VED lives in rl/)
    rl/      rewards, value head, VED, GRPO and Sibling-GRPO
    eval/    metrics, run folders, comparison tables
    baselines/ popularity, SASRec
"""

__version__ = "0.1.0"
