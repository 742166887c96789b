"""Load test of ``vstar serve``: latency percentiles, throughput and resident memory of a real
server on 127.0.0.1, and the server's decode ms/user against the FLOP lower bound.

What is served: the ML-100K demo's RL run folder (``runs/demo_ml100k/vstar/seed0`` from
``make demo``, or $VSTAR_BENCH_DEMO_RUN), started with ``python -m vstar serve RUN_DIR``; when there
is none (and always with --quick) nothing is trained: a random generator of the demo's size and
config (2 x 128, item-level history, 3 x 32 codes, 1,682 random SIDs, ``harness.DEMO_SYNTHETIC``)
with a fresh random value head, served by the same app (``create_app``) from a child process
of this script. ``params.source`` says which.

Load: every request is a real user history of 20 items (the run's test split; random histories
for the synthetic model) with ``exclude_history: false``, so that the decode is exactly beam
search of width k (``beam-10``, ``beam-50``) or VED with k candidates at the budget of beam-k,
(L-1) x k forward tokens per user (``ved-10``, ``ved-50``). For each setting and concurrency
1 / 8 / 32, that many client threads (stdlib ``http.client``, one keep-alive connection each, on
the same machine) send requests back to back until ``requests`` are answered or ``max_seconds``
have passed, after ``warmup_requests`` untimed ones. Latency is the client's wall time per
request; the response's ``cost`` splits it into ``queue_ms`` (waiting for the micro-batch and
for the decode call before it), ``decode_ms`` (the decode call) and the rest (HTTP, JSON,
validation, event loop, client). Resident memory: ``VmHWM`` (peak) of the server process.

FLOP floor (``harness.beam_flops`` at the fp32 matmul rate measured in the same run, as in
``bench_decode.py``): the server's decode ms per user (decode_ms / batch_size of each call)
against the forward matmul FLOPs of the same work, and the same decoders called directly on
the same histories in batches of the server's ``max_batch`` (a fresh process). A sample of the
answers is compared with single-user direct calls.

    .venv/bin/python bench/bench_serve.py [--quick] [--threads 1] [--out-dir DIR]

Against a server you started yourself (no JSON written; item ids "1".."N_ITEMS", MovieLens):

    vstar serve runs/demo_ml100k/vstar/seed0 --port 8000 --threads 1 &
    .venv/bin/python bench/bench_serve.py --url http://127.0.0.1:8000 --concurrency 1 8 32 \\
        --requests 300 --decoder beam --k 10 [--budget N] [--n-items 1682] [--exclude-history]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402

NAME = "serve"
OUTPUT = "serve_load.json"
SETTINGS = [{"name": "beam-10", "decoder": "beam", "k": 10},
            {"name": "beam-50", "decoder": "beam", "k": 50},
            {"name": "ved-10", "decoder": "ved", "k": 10},
            {"name": "ved-50", "decoder": "ved", "k": 50}]
FULL = {"concurrency": [1, 8, 32], "settings": SETTINGS, "requests": 300, "max_seconds": 5.0,
        "warmup_requests": 16, "users": 256, "max_batch": None, "max_wait_ms": None,
        "direct_repeats": 3, "sample_check": 8, "synthetic": harness.DEMO_SYNTHETIC,
        "demo_run": True, "startup_timeout_s": 180}
QUICK = {"concurrency": [1, 4], "settings": [{"name": "beam-5", "decoder": "beam", "k": 5},
                                             {"name": "ved-5", "decoder": "ved", "k": 5}],
         "requests": 20, "max_seconds": 2.0, "warmup_requests": 2, "users": 16,
         "max_batch": None, "max_wait_ms": None, "direct_repeats": 1, "sample_check": 2,
         "synthetic": {**harness.DEMO_SYNTHETIC, "items": 300, "codebook_sizes": [8, 8, 8]},
         "demo_run": False, "startup_timeout_s": 120}
UNITS = {
    "p50_ms": "client latency per request, 50th percentile, ms", "p95_ms": "95th percentile, ms",
    "p99_ms": "99th percentile, ms", "mean_ms": "mean client latency, ms",
    "throughput_rps": "answered requests per second (timed requests / wall time of the load)",
    "requests": "timed requests (all answered 200, else 'errors' > 0)",
    "mean_batch": "mean users per decode call over the requests (cost.batch_size)",
    "queue_ms_mean": "mean cost.queue_ms: waiting for the batch and the decode call before it",
    "queue_ms_p99": "99th percentile of cost.queue_ms",
    "decode_ms_mean": "mean cost.decode_ms: the decode call the request was part of",
    "other_ms_mean": "mean of latency - queue_ms - decode_ms: HTTP, JSON, validation, event "
                     "loop and client",
    "other_ms_p99": "99th percentile of latency - queue_ms - decode_ms",
    "server_decode_ms_per_user": "mean over requests of decode_ms / batch_size",
    "server_cpu_ms_per_request": "server process CPU time (user + system) during the load / "
                                 "requests",
    "forward_tokens_per_user": "mean cost.forward_tokens (decode, prefill excluded)",
    "floor_ms_per_user": "beam: forward matmul FLOPs of the same work (prefill of the 21-token "
                         "prompt + (L-1) x k decode tokens) at the measured fp32 matmul rate",
    "server_ratio_to_floor": "server_decode_ms_per_user / floor_ms_per_user",
    "direct_ms_per_user": "the decoder called directly on the same histories in batches of "
                          "max_batch, ms per user (prefill included), median over repeats",
    "direct_ratio_to_floor": "direct_ms_per_user / floor_ms_per_user",
    "sample_identical": "fraction of the checked answers equal to a single-user direct call",
    "server_peak_rss_mb": "peak resident set (VmHWM) of the server process over the whole "
                          "benchmark, MiB",
    "server_rss_idle_mb": "resident set of the server after start-up and warm-up, MiB",
}


# ------------------------------------------------------------------ the model served

def synthetic_run(e: dict, seed: int):
    """A ``LoadedRun``-like object for ``Recommender``: a demo-size random generator, its trie,
    a fresh random value head (``init_std=0.5``, so that VED's priorities are not flat) and the
    default RL config; item ids "1".."N" (MovieLens style)."""
    from vstar.experiments.budget import LoadedRun
    from vstar.experiments.config import EvalConfig
    from vstar.model import ModelConfig, ValueHead, ValueHeadConfig
    from vstar.train.config import RLConfig

    dev = torch.device("cpu")
    model, vocab, trie, codes, _ = harness.demo_size_synthetic(e, seed, dev)
    torch.manual_seed(seed + 1)
    head = ValueHead(model.hidden_size, ValueHeadConfig(init_std=0.5)).eval()
    ids = [str(i + 1) for i in range(len(codes))]
    return LoadedRun(layout=SimpleNamespace(path="<synthetic demo-size model>",
                                            method="synthetic"),
                     cfg=SimpleNamespace(model=ModelConfig(**e["model"]), eval=EvalConfig()),
                     data=SimpleNamespace(item_ids=ids, name="synthetic", n_items=len(ids)),
                     splits=SimpleNamespace(max_history=e["history"]), vocab=vocab, trie=trie,
                     model=model, value_head=head, rl_cfg=RLConfig())


def serve_synthetic(a: dict) -> None:
    """The server child for the synthetic model (``--serve-synthetic JSON``)."""
    import uvicorn

    from vstar.serve import Recommender, ServeConfig, create_app

    harness.setup_torch(a["threads"], "cpu")
    cfg = ServeConfig(**{k: v for k, v in a["serve"].items() if v is not None},
                      threads=a["threads"])
    app = create_app(recommender=Recommender(synthetic_run(a["synthetic"], a["seed"]), cfg))
    uvicorn.run(app, host="127.0.0.1", port=a["port"], log_level="warning")


def direct_child(a: dict) -> dict:
    """Loads the served model in a fresh process: the histories of the load (dataset ids), the
    FLOPs per user of each setting, the decoders' ms/user on them in batches of max_batch, and
    single-user answers of the first ``sample_check`` histories."""
    from vstar.decode.beam import beam_search
    from vstar.decode.ved import value_guided_decode
    from vstar.experiments.budget import load_run

    p = a["p"]
    harness.setup_torch(a["threads"], "cpu")
    if a.get("run_dir"):
        run = load_run(a["run_dir"], threads=a["threads"])
        rows = run.splits.test
        hist = [np.asarray(h)[-run.splits.max_history:] for h in rows.histories[:p["users"]]]
    else:
        run = synthetic_run(p["synthetic"], a["seed"])
        rng = np.random.default_rng(a["seed"] + 2)
        hist = [rng.integers(0, run.data.n_items, size=p["synthetic"]["history"])
                for _ in range(p["users"])]
    model, vocab, trie = run.model, run.vocab, run.trie
    L1 = max(1, vocab.n_levels - 1)
    lengths = harness.prompt_lengths(vocab, hist, run.splits.max_history)
    bs = a["max_batch"]

    def decode(s: dict, hs: list):
        tokens, mask = vocab.encode_histories(hs, trie.codes, max_items=run.splits.max_history)
        with torch.no_grad():
            if s["decoder"] == "beam":
                return beam_search(model, vocab, trie, tokens, mask, s["k"])
            ved = dataclasses.replace(run.rl_cfg.ved, budget=L1 * s["k"], budget_multiplier=1.0)
            return value_guided_decode(model, run.value_head, vocab, trie, tokens, mask, s["k"],
                                       ved)

    out = {}
    for s in p["settings"]:
        if s["decoder"] == "ved" and run.value_head is None:
            continue
        times, _ = harness.time_repeats(
            lambda: [decode(s, hist[i:i + bs]) for i in range(0, len(hist), bs)],
            p["direct_repeats"], lambda: None)
        sample = [[run.data.item_ids[i] for i in decode(s, [h]).items[0].tolist() if i >= 0]
                  for h in hist[:p["sample_check"]]]
        out[s["name"]] = {
            "direct_ms_per_user": 1e3 * harness.median(times) / len(hist),
            "direct_repeats_ms_per_user": [1e3 * t / len(hist) for t in times],
            "gflop_per_user": (harness.beam_flops(model, lengths, s["k"], vocab.n_levels)
                               / len(hist) / 1e9 if s["decoder"] == "beam" else None),
            "budget": L1 * s["k"] if s["decoder"] == "ved" else None, "sample": sample}
    return {"settings": out, "n_levels": vocab.n_levels, "value_head": run.value_head is not None,
            "histories": [[run.data.item_ids[i] for i in h] for h in hist],
            "prompt_tokens_mean": float(lengths.mean()),
            "model_parameters": model.num_parameters(), "n_items": len(run.data.item_ids)}


# ------------------------------------------------------------------ the server process

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 5.0) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Server:
    """A server subprocess on 127.0.0.1:port, its log in a temp file; stopped on exit."""

    def __init__(self, cmd: list[str], port: int, cwd: Path | None, timeout_s: float):
        self.port = port
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vstar-serve-", suffix=".log")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=harness.child_env(), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if _get(port, "/health", timeout=2).get("status") == "ok":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise SystemExit(f"the server did not answer /health in {timeout_s}s:\n"
                                 f"{self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def proc_status(self) -> dict:
        """VmRSS and VmHWM (MiB) and CPU seconds (user + system) of the server process."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------ the load client

def load(port: int, bodies: list[bytes], concurrency: int, n_max: int, max_seconds: float,
         host: str = "127.0.0.1") -> tuple[list[dict], float]:
    """Send ``bodies`` (cycled) from ``concurrency`` threads, one keep-alive connection each,
    until ``n_max`` are answered or ``max_seconds`` have passed -> (answers, wall seconds).
    Each answer: latency ms, HTTP status, the response's ``cost`` and ``items``, the body index."""
    lock = threading.Lock()
    counter = iter(range(n_max))
    answers: list[dict] = []
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = bodies[i % len(bodies)]
                t = time.perf_counter()
                conn.request("POST", "/recommend", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
                ms = 1e3 * (time.perf_counter() - t)
                out = json.loads(raw) if resp.status == 200 else {}
                with lock:
                    answers.append({"ms": ms, "status": resp.status, "index": i % len(bodies),
                                    "cost": out.get("cost"), "items": out.get("items")})
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, time.perf_counter() - t0


def summarize(answers: list[dict], wall: float) -> dict:
    """Latency percentiles, throughput and the queue / decode / other split of ``load``'s answers."""
    ok = [a for a in answers if a["status"] == 200]
    lat = np.array([a["ms"] for a in ok]) if ok else np.array([np.nan])
    row = {"requests": len(answers), "errors": len(answers) - len(ok),
           "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
           "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
           "throughput_rps": len(ok) / wall, "load_seconds": wall}
    if ok:
        queue = np.array([a["cost"]["queue_ms"] for a in ok])
        decode = np.array([a["cost"]["decode_ms"] for a in ok])
        batch = np.array([a["cost"]["batch_size"] for a in ok])
        other = lat - queue - decode
        row.update({"mean_batch": float(batch.mean()), "queue_ms_mean": float(queue.mean()),
                    "queue_ms_p99": float(np.percentile(queue, 99)),
                    "decode_ms_mean": float(decode.mean()),
                    "other_ms_mean": float(other.mean()),
                    "other_ms_p99": float(np.percentile(other, 99)),
                    "server_decode_ms_per_user": float((decode / batch).mean()),
                    "forward_tokens_per_user": float(np.mean([a["cost"]["forward_tokens"]
                                                              for a in ok]))})
    return row


def request_bodies(histories: list[list[str]], setting: dict, n_levels: int,
                   exclude_history: bool = False) -> list[bytes]:
    body = {"k": setting["k"], "decoder": setting["decoder"], "exclude_history": exclude_history}
    if setting["decoder"] == "ved":          # VED at the budget of beam search of width k
        body["budget"] = setting.get("budget") or max(1, n_levels - 1) * setting["k"]
    elif setting.get("budget"):
        body["budget"] = setting["budget"]
    return [json.dumps({"history": h, **body}).encode() for h in histories]


# ------------------------------------------------------------------ the benchmark

def run(quick: bool = False, threads: int = 1, device: str = "cpu",
        out_dir: str | Path = harness.DEFAULT_OUT, seed: int = 0,
        repeats: int | None = None) -> dict:
    from vstar.serve import ServeConfig

    p, dev, _, t_start = harness.begin(quick, FULL, QUICK, repeats, threads, "cpu", seed)
    if repeats is not None:
        p["direct_repeats"] = int(repeats)
    if device != "cpu":
        print("serve: vstar serve decodes on the CPU; --device is ignored by this benchmark")
    defaults = ServeConfig()
    p["max_batch"] = p["max_batch"] or defaults.max_batch
    p["max_wait_ms"] = p["max_wait_ms"] if p["max_wait_ms"] is not None else defaults.max_wait_ms
    load_before = os.getloadavg()
    demo = harness.demo_run_dir()
    use_run = p["demo_run"] and harness.has_run(demo)
    cwd = harness.demo_run_cwd(demo) if use_run else None
    common = {"p": p, "threads": threads, "seed": seed, "max_batch": p["max_batch"]}

    peaks = [harness.matmul_peak(dev)]
    direct = harness.run_child(__file__, {**common, "run_dir": str(demo) if use_run else None},
                               cwd=cwd)
    port = free_port()
    serve_opts = ["--port", str(port), "--threads", str(threads), "--max-batch",
                  str(p["max_batch"]), "--max-wait-ms", str(p["max_wait_ms"])]
    if use_run:
        cmd = [sys.executable, "-m", "vstar", "serve", str(demo), *serve_opts]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-synthetic", json.dumps(
            {"port": port, "threads": threads, "seed": seed, "synthetic": p["synthetic"],
             "serve": {"max_batch": p["max_batch"], "max_wait_ms": p["max_wait_ms"]}})]
    rows, t_server = [], time.perf_counter()
    with Server(cmd, port, cwd, p["startup_timeout_s"]) as server:
        startup_s = time.perf_counter() - t_server
        meta = _get(port, "/metadata")
        idle = None
        for s in p["settings"]:
            if s["name"] not in direct["settings"]:
                rows.append({"setting": s["name"], "decoder": s["decoder"], "k": s["k"],
                             "skipped": "no value head in this run folder"})
                continue
            d = direct["settings"][s["name"]]
            bodies = request_bodies(direct["histories"], s, direct["n_levels"])
            load(port, bodies, 1, p["warmup_requests"], 60.0)          # warm-up, untimed
            if idle is None:
                idle = server.proc_status()["VmRSS"]
            for conc in p["concurrency"]:
                cpu0 = server.proc_status()["cpu_s"]
                answers, wall = load(port, bodies, conc, p["requests"], p["max_seconds"])
                row = {"setting": s["name"], "decoder": s["decoder"], "k": s["k"],
                       "budget": d["budget"], "concurrency": conc, **summarize(answers, wall)}
                row["server_cpu_ms_per_request"] = (1e3 * (server.proc_status()["cpu_s"] - cpu0)
                                                    / max(1, len(answers)))
                checked = [a for a in answers if a["index"] < len(d["sample"])
                           and a["status"] == 200]
                row["sample_checked"] = len(checked)
                row["sample_identical"] = (float(np.mean([a["items"] == d["sample"][a["index"]]
                                                          for a in checked]))
                                           if checked else None)
                row["direct_ms_per_user"] = d["direct_ms_per_user"]
                row["gflop_per_user"] = d["gflop_per_user"]
                row["repeats"] = {"direct_ms_per_user": d["direct_repeats_ms_per_user"]}
                rows.append(row)
        alive = _get(port, "/health").get("status") == "ok"
        status = server.proc_status()
    peaks.append(harness.matmul_peak(dev))
    gflops = harness.median([x["gflops"] for x in peaks])
    for row in rows:
        if row.get("gflop_per_user") is not None:
            floor = 1e3 * row["gflop_per_user"] / gflops
            row.update({"floor_ms_per_user": floor,
                        "server_ratio_to_floor": row["server_decode_ms_per_user"] / floor,
                        "direct_ratio_to_floor": row["direct_ms_per_user"] / floor})
        row["server_peak_rss_mb"] = status["VmHWM"]
        row["server_rss_idle_mb"] = idle

    params = {**p, "seed": seed, "source": "run" if use_run else "synthetic",
              "run_dir": str(demo) if use_run else None, "server_command": cmd[1:4],
              "server_startup_seconds": startup_s, "server_alive_after": alive,
              "server_peak_rss_mb": status["VmHWM"], "server_rss_idle_mb": idle,
              "metadata": meta, "n_levels": direct["n_levels"], "n_items": direct["n_items"],
              "model_parameters": direct["model_parameters"],
              "prompt_tokens_mean": direct["prompt_tokens_mean"],
              "histories": "the run's test split (first `users` rows, last 20 items)" if use_run
              else "random 20-item histories", "exclude_history": False,
              "matmul": peaks, "matmul_gflops": gflops, "server_device": "cpu",
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cpu_count": os.cpu_count()}
    record = harness.make_record(
        NAME, "vstar serve under load: p50/p95/p99 latency, throughput, server resident memory; "
        "server decode ms/user against the FLOP lower bound",
        "a vstar serve process on 127.0.0.1 (the demo run folder, or a demo-size synthetic "
        "model); concurrency client threads with keep-alive connections send requests back "
        "to back (exclude_history false: beam search of width k, VED at (L-1) x k tokens) "
        "until `requests` are answered or `max_seconds` pass, after a warm-up; VmHWM of the "
        "server; FLOP floor = beam_flops / median fp32 2048^3 matmul rate of this run",
        params, dev, seed, quick, UNITS, rows, time.perf_counter() - t_start)
    path = harness.write_record(out_dir, OUTPUT, record)
    _print(rows, params, gflops, threads)
    print(f"wrote {path}")
    return record


def _print(rows: list[dict], params: dict, gflops: float, threads: int) -> None:
    src = params["run_dir"] or "synthetic demo-size model"
    harness.print_table(
        f"serve: {src}, {threads} torch thread(s), max_batch {params['max_batch']}, "
        f"max_wait_ms {params['max_wait_ms']}, fp32 matmul {gflops:.1f} GFLOP/s, server peak "
        f"RSS {params['server_peak_rss_mb']:.0f} MiB, load average "
        f"{params['load_average_before'][0]:.1f}", [r for r in rows if "skipped" not in r],
        [("setting", "setting"), ("concurrency", "conc"), ("p50_ms", "p50 ms"),
         ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("throughput_rps", "req/s"),
         ("mean_batch", "batch"), ("queue_ms_mean", "queue ms"), ("decode_ms_mean", "decode ms"),
         ("other_ms_mean", "other ms"), ("server_decode_ms_per_user", "ms/user"),
         ("floor_ms_per_user", "floor ms"), ("server_ratio_to_floor", "x floor"),
         ("direct_ms_per_user", "direct ms/user"), ("sample_identical", "same"),
         ("errors", "errors")])
    for r in rows:
        if "skipped" in r:
            print(f"  {r['setting']}: skipped ({r['skipped']})")


# ------------------------------------------------------------------ CLI for a running server

def client_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="load a running vstar serve (stdlib client)")
    ap.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=300, help="per concurrency")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="per concurrency")
    ap.add_argument("--decoder", choices=["beam", "ved"], default="beam")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--budget", type=int, default=None,
                    help="decode tokens per user (default: beam of width k; VED (L-1) x k)")
    ap.add_argument("--n-items", type=int, default=1682,
                    help='histories draw ids "1".."N" (MovieLens 100K: 1682)')
    ap.add_argument("--history-length", type=int, default=20)
    ap.add_argument("--exclude-history", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    url = urlparse(a.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metadata")
    n_levels = json.loads(conn.getresponse().read())["sid_levels"]
    conn.close()
    rng = np.random.default_rng(a.seed)
    histories = [[str(i) for i in rng.integers(1, a.n_items + 1, a.history_length)]
                 for _ in range(max(a.requests, 1))]
    setting = {"decoder": a.decoder, "k": a.k, "budget": a.budget}
    bodies = request_bodies(histories, setting, n_levels, a.exclude_history)
    load(port, bodies, 1, 8, 30.0, host)                      # warm-up
    rows = []
    for conc in a.concurrency:
        answers, wall = load(port, bodies, conc, a.requests, a.max_seconds, host)
        rows.append({"concurrency": conc, **summarize(answers, wall)})
    harness.print_table(f"{a.url} {a.decoder} k={a.k}", rows,
                        [("concurrency", "conc"), ("requests", "n"), ("p50_ms", "p50 ms"),
                         ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"),
                         ("throughput_rps", "req/s"), ("mean_batch", "batch"),
                         ("queue_ms_mean", "queue ms"), ("decode_ms_mean", "decode ms"),
                         ("other_ms_mean", "other ms"), ("errors", "errors")])
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-synthetic":
        serve_synthetic(json.loads(sys.argv[2]))
    elif any(x == "--url" or x.startswith("--url=") for x in sys.argv[1:]):
        sys.exit(client_main(sys.argv[1:]))
    elif not harness.child_main(sys.argv, direct_child):
        harness.standalone_main(run, __doc__)
