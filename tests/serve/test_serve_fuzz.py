"""Fuzz / soak (issue 10 part 5): 10,000 malformed and valid requests from 8 concurrent clients
against a ``vstar serve`` process on 127.0.0.1, bounded in time. Every bad request gets a 4xx
naming the field (or a 4xx for a body that is not JSON), every good one a 200 whose answer is
well-formed (at most k distinct catalogue items, scores sorted, no history item when excluded)
and, for the first ``DIRECT_SAMPLE`` of them (beam search and VED, every request option), equal
to the decoder called directly in this process; the server is still alive at the end with no
error in its log. 8 clients, so that the valid requests are micro-batched (the server runs
decode calls of up to 16 users while the event loop keeps answering).

``VSTAR_FUZZ_REQUESTS`` sets the count (default 10,000); the clients stop early, after at least
``MIN_REQUESTS``, when ``TIME_LIMIT_S`` has passed (a slow machine), and the test prints how many
it sent."""

import dataclasses
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from vstar.decode.beam import beam_search
from vstar.decode.ved import value_guided_decode
from vstar.experiments.budget import load_run

N_REQUESTS = int(os.environ.get("VSTAR_FUZZ_REQUESTS", 10_000))
N_CLIENTS = 8
TIME_LIMIT_S = 45.0          # stop early (after at least MIN_REQUESTS) on a slow machine
MIN_REQUESTS = min(N_REQUESTS, 2000)
MAX_HISTORY = 50
DIRECT_SAMPLE = 1000         # good answers compared with a direct decoder call (the first ones)
VED_SAMPLE = 150             # of which VED at most
WIDTH_STEP = 8               # vstar.serve.app.WIDTH_STEP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(toy_runs):
    """A ``vstar serve`` process on the toy RL run folder: (base url, its log file, process)."""
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    proc = subprocess.Popen([sys.executable, "-m", "vstar", "serve", str(toy_runs["vstar"]),
                             "--port", str(port), "--threads", "1", "--max-history",
                             str(MAX_HISTORY), "--max-batch", "16", "--max-wait-ms", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "the server did not start:\n" + \
            Path(log.name).read_text()[-3000:]
        time.sleep(0.1)
    yield port, log, proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _valid(rng, ids):
    body = {"history": [rng.choice(ids) for _ in range(rng.randint(1, 8))]}
    if rng.random() < 0.7:
        body["k"] = rng.randint(1, len(ids))
    if rng.random() < 0.3:
        body["decoder"] = rng.choice(["beam", "ved"])
    if rng.random() < 0.3:
        body["exclude_history"] = rng.random() < 0.5
    if body.get("decoder") == "ved" and rng.random() < 0.3:
        body["budget"] = rng.randint(4, 40)
    return body


BAD_VALUES = {
    "history": [[], "i1", 5, None, {"a": 1}, [1, 2], [None], [["i1"]], ["nope"], ["i1", "zz"],
                ["i1"] * (MAX_HISTORY + 1), ["\u00e9\u2603" * 100], [""], [True], [1.5]],
    "k": [0, -1, 10 ** 12, "10", 1.5, None, True, [3], {"k": 1}, 31],
    "decoder": ["", "BEAM", "greedy", 0, None, ["beam"]],
    "budget": [0, -5, "many", 1.5, [10], 10 ** 9, True],
    "exclude_history": ["yes", 2, [True], {"x": 1}, "true!", None],
}
JUNK = [b"", b"{", b"null", b"[]", b"[1,2,3]", b"\"history\"", b"\xff\xfe\xfd", b"{\"history\": [",
        b"[" * 5000 + b"]" * 5000, b"{\"history\": " + b"[" * 3000 + b"]" * 3000 + b"}", b"1e999",
        b"{\"history\": [\"i1\"], \"k\": 1e999}", b"{\"history\": [\"i1\"], \"k\": NaN}"]


def _bad(rng, ids):
    """(body or raw bytes, the field the error must name or None for a raw body)."""
    r = rng.random()
    if r < 0.12:
        return rng.choice(JUNK), None
    if r < 0.2:
        body = _valid(rng, ids)
        body[rng.choice(["kk", "History", "user", "extra"])] = 1
        return body, "extra"
    if r < 0.27:
        body = _valid(rng, ids)
        del body["history"]
        return body, "history"
    body = _valid(rng, ids)
    field = rng.choice(list(BAD_VALUES))
    body[field] = rng.choice(BAD_VALUES[field])
    if field == "budget":
        body["decoder"] = "beam"
        if body["budget"] == 10 ** 9:            # within int range but above the server's cap
            body["budget"] = 10 ** 8
    return body, field


def _requests(ids, n):
    """n (body, good, field) triples, 40 % valid, seeded."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        if rng.random() < 0.4:
            out.append((_valid(rng, ids), True, None))
        else:
            body, field = _bad(rng, ids)
            out.append((body, False, field))
    return out


def _send(port, reqs, n_clients, deadline):
    """Send ``reqs`` from ``n_clients`` threads (request i from client i % n_clients, in order,
    one keep-alive ``http.client`` connection each: cheaper than httpx, so that the client
    leaves the CPU to the server) until done or past ``deadline`` -> {i: (status, body)}."""
    answers = {}
    lock = threading.Lock()

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for i in range(c, len(reqs), n_clients):
                if time.perf_counter() > deadline and i >= MIN_REQUESTS:
                    return
                body = reqs[i][0]
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                conn.request("POST", "/recommend", raw, {"content-type": "application/json"})
                r = conn.getresponse()
                text = r.read().decode("utf-8", "replace")
                with lock:
                    answers[i] = (r.status, text)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


class Direct:
    """What the server must answer for a valid body, from the decoders called here (cached)."""

    def __init__(self, run):
        self.run = run
        self.ids = list(run.data.item_ids)
        self.index = {iid: i for i, iid in enumerate(self.ids)}
        self.cache = {}

    def __call__(self, body):
        run = self.run
        hist = body["history"]
        k, decoder = body.get("k", 10), body.get("decoder", "beam")
        exclude = set(hist) if body.get("exclude_history", True) else set()
        width = min(len(self.ids), -(-(k + len(exclude)) // WIDTH_STEP) * WIDTH_STEP
                    if exclude else k)
        budget = body.get("budget")
        key = (tuple(hist), decoder, width, budget)
        if key not in self.cache:
            tokens, mask = run.vocab.encode_histories(
                [[self.index[h] for h in hist]], run.trie.codes,
                max_items=run.splits.max_history)
            with torch.no_grad():
                if decoder == "beam":
                    res = beam_search(run.model, run.vocab, run.trie, tokens, mask, width)
                else:
                    ved = run.rl_cfg.ved if budget is None else dataclasses.replace(
                        run.rl_cfg.ved, budget=budget, budget_multiplier=1.0)
                    res = value_guided_decode(run.model, run.value_head, run.vocab, run.trie,
                                              tokens, mask, width, ved)
            self.cache[key] = [self.ids[i] for i in res.items[0].tolist() if i >= 0]
        return [i for i in self.cache[key] if i not in exclude][:k]


def test_fuzz_every_bad_request_is_4xx_every_good_one_answered(server, toy_runs):
    port, log, proc = server
    url = f"http://127.0.0.1:{port}"
    run = load_run(toy_runs["vstar"], threads=1)
    direct = Direct(run)
    reqs = _requests(direct.ids, N_REQUESTS)
    t0 = time.perf_counter()
    answers = _send(port, reqs, N_CLIENTS, t0 + TIME_LIMIT_S)
    seconds = time.perf_counter() - t0
    n_good = n_bad = n_checked = n_ved = 0
    for i in sorted(answers):
        body, good, field = reqs[i]
        status, text = answers[i]
        shown = body[:60] if isinstance(body, bytes) else json.dumps(body)[:300]
        context = f"request {i}: {shown!r} -> {status} {text[:300]}"
        if good:
            n_good += 1
            assert status == 200, context
            out = json.loads(text)
            k = body.get("k", 10)
            assert 0 < len(out["items"]) <= k, context
            assert len(out["items"]) == len(out["scores"]), context
            assert len(set(out["items"])) == len(out["items"]), context
            assert out["scores"] == sorted(out["scores"], reverse=True), context
            assert all(item in direct.index for item in out["items"]), context
            if body.get("exclude_history", True):
                assert not set(out["items"]) & set(body["history"]), context
            is_ved = body.get("decoder", "beam") == "ved"
            if n_checked < DIRECT_SAMPLE and (not is_ved or n_ved < VED_SAMPLE):
                n_ved += is_ved
                n_checked += 1
                assert out["items"] == direct(body), context
        else:
            n_bad += 1
            assert 400 <= status < 500, context
            if field is not None:
                named = json.loads(text)["field"]
                if field == "extra":
                    assert named not in ("history", "k", "decoder", "budget",
                                         "exclude_history"), context
                else:
                    assert named.split(".")[0] == field, context
    n = len(answers)
    assert proc.poll() is None, "the server died"
    assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
    logged = Path(log.name).read_text()
    assert "Traceback" not in logged and "Exception in ASGI" not in logged, logged[-3000:]
    assert n >= MIN_REQUESTS
    assert n_good > 0.3 * n and n_bad > 0.5 * n and n_ved > 0
    print(f"fuzz: {n} of {N_REQUESTS} requests ({n_good} good, {n_bad} bad; {n_checked} "
          f"answers equal to a direct decoder call, {n_ved} of them VED) from {N_CLIENTS} "
          f"clients in {seconds:.1f}s")
