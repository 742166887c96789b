"""``vstar report``: how long the page takes, how large it is, and a screenshot to look at.

What is reported: the ML-100K demo experiment (``runs/demo_ml100k`` from ``make demo``, the
experiment of $VSTAR_BENCH_DEMO_RUN) when it exists; otherwise (and always with --quick) the toy
experiment of the tests (``vstar.testing.write_toy_experiment``: 2 seeds of popularity, sft,
grpo_beam and vstar, or with --quick one seed of sft and vstar; trained here in a temporary
folder, 10-20 s). ``params.source`` says which.
The report is written to ``report.html`` of a temporary folder (the experiment's own report is not
replaced), timed, and loaded in headless Chromium (/usr/bin/chromium, Debian package
``chromium``): sections, decoded chart sizes and search-tree sizes are recorded, and the top of
the page is saved as ``report_screenshot.png`` beside the JSON. Without Chromium the JSON says
so and no screenshot is written.

    .venv/bin/python bench/bench_report.py [--quick] [--out-dir DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402

NAME = "report"
OUTPUT = "report.json"
SCREENSHOT = "report_screenshot.png"
FULL = {"users": 3, "width": 1400, "max_height": 9000, "toy_seeds": [0, 1],
        "toy_methods": ["popularity", "sft", "grpo_beam", "vstar"]}
QUICK = {"users": 2, "width": 1400, "max_height": 4000, "toy_seeds": [0],
         "toy_methods": ["sft", "vstar"]}
UNITS = {"report_seconds": "wall seconds of `vstar report EXPERIMENT` (a fresh process)",
         "html_bytes": "size of the self-contained page",
         "images": "charts (inline PNG) Chromium decoded with a non-zero size / all",
         "trees": "search-tree SVGs Chromium laid out with a non-zero size / all",
         "page_height_px": "height of the page at the screenshot's width"}


def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    from vstar.testing import CHROMIUM, browser_check, browser_screenshot, write_toy_experiment

    p, dev, _, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, device, seed)
    out_dir = Path(out_dir)
    demo = harness.demo_run_dir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not quick and harness.has_run(demo):
            experiment, cwd, source = demo.parents[1], harness.demo_run_cwd(demo), str(demo.parents[1])
        else:
            toy = write_toy_experiment(tmp / "toy", seeds=p["toy_seeds"],
                                       methods=p["toy_methods"])
            subprocess.run([sys.executable, "-m", "vstar", "run", str(toy / "cfg.yaml"),
                            "run.num_threads=1"], check=True, env=harness.child_env(),
                           capture_output=True)
            experiment, cwd, source = toy / "runs" / "toy", toy, "toy experiment (trained here)"
        page = tmp / "report.html"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vstar", "report", str(experiment), "-o", str(page),
                        "--users", str(p["users"]), "--threads", str(threads)], check=True,
                       cwd=cwd, env=harness.child_env(), capture_output=True)
        seconds = time.perf_counter() - t0
        result = {"report_seconds": seconds, "html_bytes": page.stat().st_size}
        if os.access(CHROMIUM, os.X_OK):
            seen = browser_check(page, tmp)
            result.update(
                images=f"{sum(i['w'] > 0 and i['h'] > 0 for i in seen['imgs'])}/{len(seen['imgs'])}",
                trees=f"{sum(s['w'] > 0 and s['h'] > 0 for s in seen['svgs'])}/{len(seen['svgs'])}",
                sections=[s["id"] for s in seen["sections"]], page_height_px=seen["height"])
            shot = out_dir / SCREENSHOT
            out_dir.mkdir(parents=True, exist_ok=True)
            browser_screenshot(page, shot, width=p["width"],
                               height=min(p["max_height"], seen["height"]))
            result["screenshot"] = str(shot)
        else:
            result["screenshot"] = f"none: {CHROMIUM} not found (apt-get install -y chromium)"
    p["source"] = source
    record = harness.make_record(NAME, "vstar report: page build time, size, browser check",
                                 "subprocess `vstar report`, headless Chromium", p, dev, seed,
                                 quick, UNITS, [result], time.perf_counter() - t_start)
    harness.write_record(out_dir, OUTPUT, record)
    harness.print_table("vstar report", [result],
                        [("report_seconds", "s"), ("html_bytes", "bytes"), ("images", "images"),
                         ("trees", "trees"), ("screenshot", "screenshot")])
    return record


if __name__ == "__main__":
    torch.set_num_threads(1)
    harness.standalone_main(run, __doc__)
