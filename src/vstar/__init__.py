"""vstar: generative recommendation with semantic IDs and reinforcement learning (V-STAR).

The package is the pipeline, one sub-package per stage; each imports only the stages before it
(ARCHITECTURE.md):

    core/         errors, atomic I/O, checkpoints, run-folder layout, seeding and provenance
    data/         raw logs -> items, sequences, splits
    sid/          item text / vectors -> collision-free semantic IDs
    model/        the generator over SID tokens, its vocabulary, the value head
    decode/       the SID trie; constrained beam search, sampling, VED
    train/        SFT and V-STAR's RL (rewards, advantages, losses, trainer)
    baselines/    popularity, SASRec
    eval/         metrics, statistics, metrics.json, comparison tables, budget curves
    experiments/  configs, the method registry, the pipeline, run folders, the CLI
"""

__version__ = "0.1.0"
