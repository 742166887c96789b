"""The experiments stage: configs, the method registry, the pipeline, run folders and the CLI.

    config.py     PipelineConfig (one typed section per stage), load_config (YAML + key=value)
    registry.py   Method, register, get_method: one entry per method a table can hold
    methods.py    the built-in methods (baselines, SFT, the RL recipes) and their runners
    a2po_drpo.py  A2PO (business + semantic reward) and the offline DRPO modes
    pipeline.py   prepare (data, splits, SIDs) -> run_method -> evaluate, for every seed
    rundir.py     RunDir: a run folder with its config, provenance and log
    collab.py     collaborative SID vectors: item embeddings of a SASRec fitted on the train split
    budget.py     the inference budget curve of an RL run folder
    rl_summary.py the mean of every logged RL curve, per method and seed
    cli.py        ``vstar``: sub-commands generated from the registry
"""

from vstar.experiments import methods as _methods  # noqa: F401  (registers the built-in methods)
