"""The inference budget curve of a trained RL run folder (``vstar budget RUN_DIR``).

    model, value_head, rl_cfg = load_rl_run("runs/scientific/vstar/seed0", vocab)
    json_path, png_path, payload = run_budget_curve("runs/scientific/vstar/seed0", widths=(10, 20))

The run's generator is its ``generator`` checkpoint; the value head and the RL config it was
trained with come from its ``rl_state`` checkpoint (``vstar.core.checkpoint``). Data, splits and
SIDs are rebuilt from the run's config.yaml and the experiment's artifacts; the curve itself is
``vstar.eval.budget.budget_curve``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vstar.core import checkpoint
from vstar.core.device import resolve_device
from vstar.core.errors import InputError
from vstar.core.io import atomic_write_json
from vstar.core.layout import RunLayout
from vstar.data.types import InteractionData, Splits
from vstar.decode.config import VEDConfig
from vstar.decode.trie import SidTrie
from vstar.eval.budget import budget_curve, plot_budget_curve
from vstar.model.config import ValueHeadConfig
from vstar.model.backbone import SidModel, load_model, make_model_vocab
from vstar.model.value import ValueHead
from vstar.model.vocab import SidVocab
from vstar.train.config import RLConfig

log = logging.getLogger(__name__)


def _rl_config(saved: dict, path: Path) -> RLConfig:
    """The RL config stored in an rl_state checkpoint, as a typed RLConfig."""
    fields = {f.name for f in dataclasses.fields(RLConfig)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise InputError(f"unknown RL config fields {unknown}", file=str(path), field="config")
    try:
        cfg = RLConfig(**saved)
        cfg.ved = VEDConfig(**saved.get("ved", {}))
        cfg.value_head = ValueHeadConfig(**saved.get("value_head", {}))
    except TypeError as err:
        raise InputError(f"bad RL config ({err})", file=str(path), field="config") from None
    return cfg


def load_rl_run(run_dir: str | os.PathLike, vocab: SidVocab, item_codes=None
                ) -> tuple[SidModel, ValueHead, RLConfig]:
    """(generator, value head, RL config) of an RL run folder, the modules in eval mode."""
    layout = RunLayout(Path(run_dir))
    if not layout.rl_state.is_file():
        raise InputError("no RL state: expected the folder of an RL run "
                         "(<experiment>/<rl method>/seed<k>)", file=str(layout.rl_state))
    state = checkpoint.load_rl_state(layout.rl_state)
    rl_cfg = _rl_config(state.config, layout.rl_state)
    model = load_model(layout.generator_checkpoint, vocab, item_codes)
    head = ValueHead(model.hidden_size, rl_cfg.value_head)
    try:
        head.load_state_dict(state.value_head)
    except RuntimeError as err:
        raise InputError(f"value-head weights do not fit its config: {err}",
                         file=str(layout.rl_state)) from None
    return model, head.eval(), rl_cfg


@dataclasses.dataclass
class LoadedRun:
    """Everything a trained run folder decodes with (``load_run``)."""

    layout: RunLayout
    cfg: Any                       # the composed config of the run (config.yaml)
    data: InteractionData
    splits: Splits
    vocab: SidVocab
    trie: SidTrie
    model: SidModel
    value_head: ValueHead | None   # None for an SFT-only folder
    rl_cfg: RLConfig | None        # the RL config the value head was trained with


def load_run(run_dir: str | os.PathLike, threads: int | None = None,
             device: str = "cpu") -> LoadedRun:
    """The generator, SIDs, vocab and trie of a run folder ``<experiment>/<method>/seed<k>``,
    plus its value head and RL config when it is an RL run (an SFT folder has neither).

    Data and SIDs are rebuilt from the run's config.yaml and the experiment's artifacts.
    ``device`` (``auto`` | ``cpu`` | ``cuda``, ``vstar.core.device``): where the generator, the
    value head and the trie are put (whatever device the run was trained on).
    """
    from vstar.experiments.config import load_config
    from vstar.experiments.pipeline import prepare_data
    from vstar.sid import load_index_json

    layout = RunLayout.of(run_dir)
    if not layout.config.is_file():
        raise InputError("no config.yaml: expected a run folder <experiment>/<method>/seed<k>",
                         file=str(layout.config))
    cfg = load_config(layout.config)
    torch.set_num_threads(threads or cfg.run.num_threads)
    experiment = layout.experiment
    if not experiment.sid_report.is_file():
        raise InputError("the experiment's SID report is missing", file=str(experiment.sid_report))
    report = json.loads(experiment.sid_report.read_text())
    if "codebook_sizes" not in report:
        raise InputError("expected the key 'codebook_sizes'", file=str(experiment.sid_report),
                         field="codebook_sizes")
    data, splits, _ = prepare_data(cfg)
    sids = load_index_json(experiment.sid_index, data.item_ids, report["codebook_sizes"])
    vocab = make_model_vocab(cfg.model, sids.codebook_sizes, sids.n_items, data.item_text)
    trie = SidTrie(sids.codes, sids.codebook_sizes)
    if layout.rl_state.is_file():
        model, value_head, rl_cfg = load_rl_run(layout.path, vocab, trie.codes)
    else:
        ckpt = layout.generator_checkpoint
        if not ckpt.exists():
            raise InputError("no generator checkpoint in the run folder", file=str(ckpt))
        model, value_head, rl_cfg = load_model(ckpt, vocab, trie.codes), None, None
    dev = resolve_device(device, field="device")
    model, trie = model.to(dev), trie.to(dev)
    value_head = None if value_head is None else value_head.to(dev)
    return LoadedRun(layout, cfg, data, splits, vocab, trie, model, value_head, rl_cfg)


def run_budget_curve(run_dir: str | os.PathLike, split: str = "test",
                     widths: Sequence[int] = (10, 20, 50), max_users: int | None = None,
                     out_dir: str | os.PathLike = "bench/results", batch_size: int | None = None,
                     threads: int | None = None) -> tuple[Path, Path, dict]:
    """Budget curve of an RL run folder ``<experiment>/<method>/seed<k>`` -> (json, png, payload).

    Evaluates the first ``max_users`` rows of ``split`` (all if None) at ``cfg.eval.ks`` (and
    K=10), with the VED config the run was trained with. Writes
    ``<out_dir>/budget_curve_<experiment>_<method>_seed<k>_<split>.json`` and ``.png``, and the
    JSON also into the run folder (``RunLayout.budget_curve``), where ``vstar report`` finds it.
    """
    from vstar.experiments.config import load_config
    from vstar.experiments.pipeline import prepare_data
    from vstar.sid import load_index_json

    if split not in ("valid", "test"):
        raise InputError(f"split must be 'valid' or 'test', got {split!r}", field="split")
    run = load_run(run_dir, threads=threads)
    if run.value_head is None:
        raise InputError("no RL state: expected the folder of an RL run "
                         "(<experiment>/<rl method>/seed<k>)", file=str(run.layout.rl_state))
    layout, experiment, cfg = run.layout, run.layout.experiment, run.cfg
    data, splits, vocab, trie = run.data, run.splits, run.vocab, run.trie
    model, value_head, rl_cfg = run.model, run.value_head, run.rl_cfg
    rows = getattr(splits, split)
    if max_users is not None:
        if max_users < 1:
            raise InputError(f"max_users must be >= 1, got {max_users}", field="max_users")
        rows = rows.subset(np.arange(min(max_users, len(rows))))
    ks = sorted(set(cfg.eval.ks) | {10})
    if cfg.eval.item_head > 0:    # the curve compares the policy's decoders on pi alone
        log.warning("this run ranks with the item head (eval.item_head=%g); the budget curve "
                    "decodes the code policy alone, beam search against VED, so its numbers "
                    "are not the run's metrics.json", cfg.eval.item_head)
    t0 = time.perf_counter()
    records = budget_curve(model, value_head, vocab, trie, rows, widths=widths, ks=ks,
                           ved_cfg=rl_cfg.ved, batch_size=batch_size or cfg.eval.batch_size,
                           max_history=splits.max_history)
    stem = f"budget_curve_{experiment.name}_{layout.method}_{layout.path.resolve().name}_{split}"
    payload = {"run_dir": str(run_dir), "dataset": data.name, "protocol": splits.protocol,
               "split": split, "n_users": len(rows), "n_items": data.n_items,
               "sid_levels": vocab.n_levels, "widths": [int(w) for w in widths], "ks": ks,
               "ved": dataclasses.asdict(rl_cfg.ved), "torch_threads": torch.get_num_threads(),
               "run_item_head": cfg.eval.item_head, "item_head_fused": False,
               "seconds": time.perf_counter() - t0, "records": records}
    out_dir = Path(out_dir)
    json_path = out_dir / f"{stem}.json"
    atomic_write_json(json_path, payload)
    atomic_write_json(layout.budget_curve(split), payload)     # the run's own copy (vstar report)
    png_path = plot_budget_curve(records, out_dir / f"{stem}.png",
                                 title=f"{experiment.name} {layout.method} "
                                       f"{layout.path.resolve().name} ({split}, {len(rows)} users)")
    return json_path, png_path, payload
