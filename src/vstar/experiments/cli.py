"""``vstar``: one sub-command per pipeline stage, plus ``run`` for the whole pipeline.

    vstar run configs/demo_ml100k.yaml run.seeds=[0,1,2]   # everything, then the results table
    vstar data configs/scientific.yaml                      # load + split, print statistics
    vstar sid configs/scientific.yaml sid.method=rqvae      # semantic IDs and their report
    vstar sft configs/scientific.yaml                       # train + evaluate the SFT generator
    vstar baseline configs/scientific.yaml --method sasrec  # the registry's baselines
    vstar rl configs/scientific.yaml --method grpo_beam vstar  # RL recipes from the SFT checkpoints
    vstar compare runs/scientific                           # mean +- std table over run folders
    vstar paired runs/scientific vstar sft --metric NDCG@10 # paired test of two methods, per user
    vstar budget runs/scientific/vstar/seed0 --widths 10 20 # beam vs VED at equal decode budgets
    vstar serve runs/scientific/vstar/seed0 --port 8000     # HTTP: POST /recommend, GET /metadata
    vstar rl-summary runs/scientific grpo_beam vstar        # mean of every logged RL curve
    vstar report runs/scientific                            # one HTML page: tables, curves, trees

Data-parallel training on several processes or GPUs (``vstar.core.dist``)::

    torchrun --nproc_per_node=2 -m vstar run configs/demo_ml100k.yaml run.num_threads=1

The CLI owns no logic: it parses arguments and calls ``vstar.experiments``. The methods offered by
``sft``, ``baseline`` and ``rl`` come from the method registry (``vstar.experiments.registry``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from vstar.core.errors import InputError


def _setup_logging(verbose: bool, main: bool = True) -> None:
    """Console logging; under torchrun only rank 0 logs below WARNING."""
    level = (logging.DEBUG if verbose else logging.INFO) if main else logging.WARNING
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.max_epochs=5")


def _load(args):
    from vstar.experiments.config import load_config

    return load_config(args.config, args.overrides)


def _print_results(paths, metrics=None) -> str:
    """Print the mean +- std table (rich on a terminal, markdown otherwise); return the markdown."""
    from vstar.eval.compare import compare_runs, print_table, render_table

    rows = compare_runs(paths, metrics)
    table = render_table(rows)
    if sys.stdout.isatty():
        print_table(rows)
    else:
        print(table)
    return table


def cmd_run(args) -> None:
    from vstar.core.io import atomic_write_text
    from vstar.core.layout import ExperimentLayout
    from vstar.experiments.pipeline import run_pipeline

    from vstar.core import dist

    cfg = _load(args)
    run_pipeline(cfg)
    if not dist.is_main():
        return
    experiment = ExperimentLayout.of_config(cfg)
    table = _print_results([experiment.root])
    atomic_write_text(experiment.results, table + "\n")
    print(f"\nresults table: {experiment.results}")


def cmd_data(args) -> None:
    from vstar.experiments.pipeline import prepare_data

    cfg = _load(args)
    data, splits, seconds = prepare_data(cfg)
    print(f"{data.name}: {data.n_users} users, {data.n_items} items, {data.n_interactions} "
          f"interactions, item text: {'yes' if data.item_text else 'no'}")
    print(f"{splits.protocol} (max_history {splits.max_history}): train {len(splits.train)}, "
          f"valid {len(splits.valid)}, test {len(splits.test)} rows ({seconds:.1f}s)")
    if args.export_minionerec:
        from vstar.core.layout import ExperimentLayout
        from vstar.experiments.pipeline import prepare_sids
        from vstar.sid.minionerec import write_minionerec

        experiment = ExperimentLayout.of_config(cfg)
        experiment.artifacts.mkdir(parents=True, exist_ok=True)
        sids, *_ = prepare_sids(cfg, data, splits, experiment)
        write_minionerec(args.export_minionerec, data, splits, sids)
        print(f"MiniOneRec files written to {args.export_minionerec}")


def cmd_sid(args) -> None:
    import json

    from vstar.core.layout import ExperimentLayout
    from vstar.experiments.pipeline import prepare_data, prepare_sids

    cfg = _load(args)
    data, splits, _ = prepare_data(cfg)
    experiment = ExperimentLayout.of_config(cfg)
    experiment.artifacts.mkdir(parents=True, exist_ok=True)
    _, report, _, _ = prepare_sids(cfg, data, splits, experiment)
    print(json.dumps(report, indent=2))


def _run_methods(args, methods) -> None:
    from vstar.core import dist
    from vstar.experiments.pipeline import check_runs_free, prepare, run_method, runtime

    cfg = _load(args)
    label = getattr(args, "label", None)
    runtime(cfg, list(methods))                    # a wrong run.device fails before any work
    check_runs_free(cfg, [label] if label else list(methods))
    prep = prepare(cfg)
    paths = [run_method(cfg, prep, m, seed, label) for seed in cfg.run.seeds for m in methods]
    if dist.is_main():
        _print_results(paths)


def cmd_methods(args) -> None:
    from vstar.experiments.registry import get_method, method_names

    for name in args.method:
        if name not in method_names(args.method_kind):
            get_method(name)                       # unknown: InputError listing every method
            raise InputError(f"{name!r} is a {get_method(name).kind} method, not a "
                             f"{args.method_kind} one; expected one of "
                             f"{method_names(args.method_kind)}", field="--method")
    label = getattr(args, "label", None)
    if label is not None:
        if len(args.method) != 1:
            raise InputError(f"--as names one run folder, got {len(args.method)} methods",
                             field="--as")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", label):
            raise InputError(f"got {label!r}, expected a folder name of letters, digits and "
                             "_ . + -", field="--as")
        if label in method_names() and label != args.method[0]:
            raise InputError(f"{label!r} is the name of another method; pick a name of its "
                             "own for this variant", field="--as")
    _run_methods(args, args.method)


def cmd_compare(args) -> None:
    table = _print_results(args.runs, args.metrics)
    if args.markdown:
        from vstar.core.io import atomic_write_text

        atomic_write_text(args.markdown, table + "\n")


def _target_count_groups(args) -> dict | None:
    """``vstar paired --by-target-count``: the split's rows grouped by their target's count
    as a training target, on the data of method_a's first seed folder's config."""
    if not args.by_target_count:
        return None
    from vstar.core.layout import ExperimentLayout
    from vstar.eval.paired import target_count_groups
    from vstar.experiments.config import load_config
    from vstar.experiments.pipeline import prepare_data

    runs = ExperimentLayout(args.experiment).seed_runs(args.method_a)
    configs = [run.config for run in runs.values() if run.config.is_file()]
    if not configs:
        raise InputError(f"no config.yaml in any seed folder of {args.method_a!r}",
                         file=str(args.experiment / args.method_a))
    data, splits, _ = prepare_data(load_config(configs[0]))
    return target_count_groups(splits.train.targets, getattr(splits, args.split).targets,
                               data.n_items, args.by_target_count)


def cmd_paired(args) -> None:
    from vstar.eval.paired import paired_comparison, render_paired
    from vstar.core.io import atomic_write_json

    result = paired_comparison(args.experiment, args.method_a, args.method_b, metric=args.metric,
                               split=args.split, n_resamples=args.n_resamples,
                               seeds=args.seeds, groups=_target_count_groups(args))
    print(render_paired(result))
    if args.json:
        atomic_write_json(args.json, result)


def cmd_budget(args) -> None:
    from vstar.experiments.budget import run_budget_curve

    json_path, png_path, _ = run_budget_curve(args.run_dir, split=args.split, widths=args.widths,
                                              max_users=args.max_users, out_dir=args.out_dir,
                                              batch_size=args.batch_size, threads=args.threads)
    print(f"budget curve: {json_path}, {png_path}")


def cmd_serve(args) -> None:
    from vstar.serve.app import serve

    serve(args.run_dir, host=args.host, port=args.port, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, max_history=args.max_history, max_k=args.max_k,
          threads=args.threads, device=args.device)


def cmd_rl_summary(args) -> None:
    from vstar.experiments.rl_summary import render_rl_summary, rl_summary

    print(render_rl_summary(rl_summary(args.experiment, args.methods)))


def cmd_report(args) -> None:
    import logging

    from vstar.experiments.report import ReportOptions, build_report

    if not args.verbose:                 # rebuilding data for the trees logs at INFO: keep quiet
        logging.getLogger("vstar").setLevel(logging.WARNING)
    opts = ReportOptions(baseline=args.baseline, metric=args.metric,
                         n_resamples=args.n_resamples, users=args.users,
                         tree_method=args.tree_method, split=args.split, seed=args.seed,
                         budget_files=args.budget_curve or (), threads=args.threads)
    path = build_report(args.target, args.output, opts)
    print(f"report: {path}")


def _method_command(sub, kind: str, help: str) -> None:
    """``vstar <kind>``: run methods of one kind from the registry (all if only one exists)."""
    from vstar.experiments.registry import get_method, method_names

    names = method_names(kind)
    p = sub.add_parser(kind, help=help, description=help + ". Methods: " + "; ".join(
        f"{n}: {get_method(n).help}" for n in names))
    _config_args(p)
    if len(names) == 1:
        p.set_defaults(method=list(names))
    else:
        p.add_argument("--method", nargs="+", required=True, metavar="METHOD",
                       help=f"one or more of {', '.join(names)}; run in this order per seed")
    p.add_argument("--as", dest="label", default=None, metavar="NAME",
                   help="name the run folder and the results NAME instead of the method (one "
                        "method: a variant with other settings, e.g. a sweep point)")
    p.set_defaults(method_kind=kind)
    p.set_defaults(fn=cmd_methods)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vstar", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the whole pipeline from a config file")
    _config_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("data", help="load and split a dataset, print statistics")
    _config_args(p)
    p.add_argument("--export-minionerec", type=Path, default=None,
                   help="also write MiniOneRec train/valid/test CSV, index.json and info.txt here")
    p.set_defaults(fn=cmd_data)
    p = sub.add_parser("sid", help="build semantic IDs and print their report")
    _config_args(p)
    p.set_defaults(fn=cmd_sid)
    _method_command(sub, "sft", "train and evaluate the SFT generator")
    _method_command(sub, "baseline", "train and evaluate baselines")
    _method_command(sub, "rl", "RL fine-tuning from the SFT generator of each seed, evaluated")
    p = sub.add_parser("compare", help="mean +- std table over run folders")
    p.add_argument("runs", nargs="+", type=Path, help="run folders or folders containing them")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="columns: metric names (HR@10), invalid_rate, or dotted paths into a "
                        "run's metrics record (cost.seconds_per_rl_step, "
                        "extra.rl_summary.unique_items_per_G)")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("paired", help="paired bootstrap + Wilcoxon of two methods over users")
    p.add_argument("experiment", type=Path, help="experiment folder <out_dir>/<name>")
    p.add_argument("method_a")
    p.add_argument("method_b")
    p.add_argument("--metric", default="NDCG@10", help="NDCG@K or HR@K")
    p.add_argument("--split", default="test")
    p.add_argument("--n-resamples", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="only these seeds (default: every seed either method has)")
    p.add_argument("--by-target-count", type=int, nargs="+", default=None, metavar="EDGE",
                   help="also test within groups of rows by how often the target is a "
                        "training target: edges 5 20 give 0-4, 5-19 and >= 20 times")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(fn=cmd_paired)
    p = sub.add_parser("budget", help="beam search vs VED at equal decode budgets (RL run)")
    p.add_argument("run_dir", type=Path, help="RL run folder <experiment>/<method>/seed<k>")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--widths", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--max-users", type=int, default=None, help="first N rows of the split")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's eval one")
    p.add_argument("--threads", type=int, default=None, help="default: the config's run one")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    p.set_defaults(fn=cmd_budget)
    p = sub.add_parser("serve", help="HTTP service: top-k items of a run folder (POST /recommend)")
    p.add_argument("run_dir", type=Path, help="run folder <experiment>/<method>/seed<k> (SFT or RL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="most requests per decode call")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="longest a request waits for others to batch with")
    p.add_argument("--max-history", type=int, default=1000, help="longest history accepted")
    p.add_argument("--max-k", type=int, default=1000, help="largest k accepted")
    p.add_argument("--threads", type=int, default=None, help="default: the config's run one")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the run decodes (auto: CUDA if available)")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("rl-summary", help="mean over steps of every logged RL curve, per method")
    p.add_argument("experiment", type=Path, help="experiment folder <out_dir>/<name>")
    p.add_argument("methods", nargs="+", help="RL methods (folders of the experiment)")
    p.set_defaults(fn=cmd_rl_summary)
    p = sub.add_parser("report", help="one self-contained HTML page: comparison table, training "
                       "curves, budget curve, SID statistics, search trees, configs")
    p.add_argument("target", type=Path, help="experiment folder <out_dir>/<name>, or one run "
                   "folder <experiment>/<method>/seed<k>")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="default: <experiment>/report.html (report.html in a run folder)")
    p.add_argument("--baseline", default=None,
                   help="method of the paired-test column (default: sft when shown)")
    p.add_argument("--metric", default="NDCG@10", help="metric of the paired test")
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--users", type=int, default=3, help="users whose search trees are drawn")
    p.add_argument("--tree-method", default=None,
                   help="method whose run draws the trees (default: vstar, grpo_ved, any RL, sft)")
    p.add_argument("--split", choices=["valid", "test"], default="test",
                   help="split the trees' users come from")
    p.add_argument("--seed", type=int, default=0, help="which users are drawn")
    p.add_argument("--budget-curve", nargs="+", default=None, metavar="JSON",
                   help="more budget-curve files (vstar budget output) to show")
    p.add_argument("--threads", type=int, default=None, help="default: the config's run one")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`vstar rl cfg.yaml --method vstar rl.lr=1e-4`)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    # `--method a b key=value`: nargs="+" also swallows the overrides that follow it
    if isinstance(getattr(args, "method", None), list):
        extra = [m for m in args.method if "=" in m] + extra
        args.method = [m for m in args.method if "=" not in m]
        if not args.method:
            parser.error("--method needs at least one method name")
    if extra:
        args.overrides = list(args.overrides) + extra
    from vstar.core import dist

    joined = dist.init_from_env()                     # under torchrun: join its process group
    _setup_logging(args.verbose, dist.is_main())
    try:
        args.fn(args)
    except InputError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): the run folder is marked interrupted and keeps its last "
              "checkpoint; continue it with run.resume=true", file=sys.stderr)
        return 130
    except OSError as err:                 # read-only out_dir, a file where a folder should be...
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        if joined:
            dist.shutdown()
    return 0


def _one_line(text: str) -> str:
    """Errors print on one line (a multi-line library message is joined)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
