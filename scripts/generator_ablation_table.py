"""The generator ablation table of the README (issue 7): each option of the SID generator switched
against the default, mean ± std over seeds on valid and test, and the paired test over users of
each variant against the default (per-user NDCG@10, or ``--metric``, averaged over the seeds both have; bootstrap
95 % CI and p, Wilcoxon p; ``vstar.eval.paired``).

    .venv/bin/python scripts/generator_ablation_table.py runs/gen_default runs/gen_* \
        [--seeds 0 1 2] [--markdown docs/results/generator_ablation.md]
    # every row against the SASRec baseline runs of an experiment instead:
    .venv/bin/python scripts/generator_ablation_table.py runs/gen_default:sasrec runs/gen_*

The first experiment is the baseline of the paired tests; each is read from ``<exp>/sft``, or
from ``<exp>/<method>`` when given as ``PATH:METHOD``. Row labels come from ``VARIANTS``
(experiment name without a ``gen_`` or ``g<N>_`` prefix, e.g. ``g15_`` for the rows of the 15-epoch
schedule); an unknown name is shown as it is.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from vstar.core.io import atomic_write_text
from vstar.core.layout import RunLayout
from vstar.eval.paired import paired_comparison
from vstar.eval.records import read_metrics
from vstar.eval.stats import mean_std

VARIANTS = {
    "default": "the default (`configs/scientific.yaml`)",
    "token_history": "history as 3 code tokens per item (`model.history=codes`, SASRec SIDs; "
                     "no item head, which needs item-level history)",
    "no_item_id": "item-level history without the item-ID embedding "
                  "(`model.item_id_embedding=false`)",
    "text_sids": "SIDs from MiniLM text embeddings (`sid.vectors=text`, the default since "
                 "it won here)",
    "sasrec_sids": "SIDs from a 128-wide SASRec's item embeddings (`sid.vectors=sasrec`)",
    "sci9_ikd256": "SIDs from a 128-wide SASRec's item embeddings (`sid.vectors=sasrec`, the "
                   "previous default; `sci9_ikd256`)",
    "no_item_head": "no item head (`sft.item_loss=0 sft.item_distill=0 eval.item_head=0`)",
    "no_item_distill": "item head on labels alone (`sft.item_distill=0`)",
    "no_distill": "no code-level distillation (`sft.distill=0`)",
    "subset_valid": "early stopping on a 2,000-row validation subset (`sft.val_max_users=2000`)",
    "label_smoothing": "label smoothing 0.1 (`sft.label_smoothing=0.1`)",
    "layers_4": "4 layers (`model.n_layer=4`)",
    "const_lr": "constant learning rate after the warm-up, no cosine (`sft.schedule=constant`)",
    "sci11": "the default: text SIDs, 15-epoch schedule (`sci11`)",
}
METRICS = ["HR@1", "HR@10", "NDCG@10", "long_tail@10"]


def parse(spec: str) -> tuple[Path, str]:
    """PATH[:METHOD] -> (absolute experiment folder, method folder name)."""
    path, _, method = spec.partition(":")
    return Path(path).resolve(), method or "sft"


def variant_of(exp: Path) -> str:
    """The experiment's name without its ablation prefix (``gen_`` or ``g<N>_``)."""
    return re.sub(r"^(gen|g\d+)_", "", exp.name)


def label_of(exp: Path, method: str) -> str:
    return (f"`{exp.name}/{method}`" if method != "sft"
            else "default" if variant_of(exp) == "default" else f"`{exp.name}`")


def pval(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def metrics_of(run: Path, split: str) -> dict | None:
    """The metrics of a run folder's ``split`` (``RunLayout.metrics``), or None if it has none."""
    path = RunLayout(run).metrics(split)
    return read_metrics(path)["metrics"] if path.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiments", nargs="+",
                   help="PATH[:METHOD] (METHOD default sft), the baseline of the tests first")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--splits", nargs="+", default=["valid", "test"])
    p.add_argument("--metric", default="NDCG@10", help="the paired test's metric")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = p.parse_args()
    experiments = list(dict.fromkeys(parse(e) for e in args.experiments))       # once each
    default = experiments[0]
    lines = ["| split | variant | seeds | " + " | ".join(METRICS)
             + f" | {args.metric} − {label_of(*parse(args.experiments[0]))} [95 % CI]"
             + " | p (bootstrap / Wilcoxon) |",
             "|---|---|--:|" + "--:|" * len(METRICS) + "--:|--:|"]
    for split in args.splits:
        for exp, method in experiments:
            runs = [exp / method / f"seed{k}" for k in args.seeds]
            found = [(k, m) for k, r in zip(args.seeds, runs)
                     if (m := metrics_of(r, split)) is not None]
            if not found:
                continue
            cells = []
            for name in METRICS:
                mean, std = mean_std([m[name] for _, m in found])
                cells.append(f"{mean:.4f} ± {std:.4f}")
            paired = ["", ""]
            both = [k for k, _ in found
                    if metrics_of(default[0] / default[1] / f"seed{k}", split)]
            if (exp, method) != default and both:
                with tempfile.TemporaryDirectory() as tmp:   # one experiment, two "methods"
                    (Path(tmp) / "variant").symlink_to(exp / method)
                    (Path(tmp) / "default").symlink_to(default[0] / default[1])
                    res = paired_comparison(tmp, "variant", "default", metric=args.metric,
                                            split=split, seeds=both)
                paired = [f"{res['diff']:+.4f} [{res['ci_low']:+.4f}, {res['ci_high']:+.4f}]",
                          f"{pval(res['p_bootstrap'])} / {pval(res['p_wilcoxon'])}"]
                if len(both) < len(found):
                    paired[0] += f" (seeds {' '.join(map(str, both))})"
            label = (f"{method} (`{exp.name}/{method}`)" if method != "sft" else
                     VARIANTS.get(variant_of(exp), f"`{exp.name}`"))
            lines.append(f"| {split} | {label} | {len(found)} | " + " | ".join(cells)
                         + f" | {paired[0]} | {paired[1]} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.markdown, table + "\n")


if __name__ == "__main__":
    main()
