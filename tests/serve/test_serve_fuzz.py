"""Fuzz / soak (issue 10 part 5): thousands of malformed and valid requests against a real
uvicorn server on 127.0.0.1, bounded in time. Every bad request gets a 4xx naming a field (or a
4xx for a body that is not JSON), every good one a correct answer, and the server stays alive."""

import json
import random
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from vstar.decode.beam import beam_search
from vstar.experiments.budget import load_run
from vstar.serve import Recommender, ServeConfig, create_app

N_REQUESTS = 3000
TIME_LIMIT_S = 40.0          # stop early (but after at least MIN_REQUESTS) on a slow machine
MIN_REQUESTS = 500
MAX_HISTORY = 50


@pytest.fixture(scope="module")
def server(toy_runs):
    run = load_run(toy_runs["vstar"])
    rec = Recommender(run, ServeConfig(max_wait_ms=1, max_batch=16, max_history=MAX_HISTORY))
    config = uvicorn.Config(create_app(recommender=rec), host="127.0.0.1", port=0,
                            log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", run
    srv.should_exit = True
    thread.join(timeout=10)


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


def test_fuzz_every_bad_request_is_4xx_every_good_one_answered(server):
    url, run = server
    ids = list(run.data.item_ids)
    rng = random.Random(0)
    index = {iid: i for i, iid in enumerate(ids)}
    expected = {}
    n, n_good, n_bad, t0 = 0, 0, 0, time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for n in range(1, N_REQUESTS + 1):
            good = rng.random() < 0.4
            body, field = (_valid(rng, ids), None) if good else _bad(rng, ids)
            if isinstance(body, bytes):
                r = client.post("/recommend", content=body,
                                headers={"content-type": "application/json"})
            else:
                r = client.post("/recommend", json=body)
            shown = body[:60] if isinstance(body, bytes) else json.dumps(body)[:300]
            context = f"request {n}: {shown!r} -> {r.status_code} {r.text[:300]}"
            if good:
                n_good += 1
                assert r.status_code == 200, context
                out = r.json()
                k = body.get("k", 10)
                excl = body.get("exclude_history", True)
                assert 0 < len(out["items"]) <= k, context
                assert len(out["items"]) == len(out["scores"]), context
                assert len(set(out["items"])) == len(out["items"]), context
                assert out["scores"] == sorted(out["scores"], reverse=True), context
                assert all(i in index for i in out["items"]), context
                if excl:
                    assert not set(out["items"]) & set(body["history"]), context
                if body.get("decoder", "beam") == "beam" and not excl:
                    key = (tuple(body["history"]), k)
                    if key not in expected:
                        hist = [torch.tensor([index[h] for h in body["history"]])]
                        tokens, mask = run.vocab.encode_histories(
                            [h.numpy() for h in hist], run.trie.codes,
                            max_items=run.splits.max_history)
                        with torch.no_grad():
                            res = beam_search(run.model, run.vocab, run.trie, tokens, mask, k)
                        expected[key] = [ids[i] for i in res.items[0].tolist() if i >= 0]
                    assert out["items"] == expected[key], context
            else:
                n_bad += 1
                assert 400 <= r.status_code < 500, context
                if field is not None:
                    named = r.json()["field"]
                    if field == "extra":
                        assert named not in ("history", "k", "decoder", "budget",
                                             "exclude_history"), context
                    else:
                        assert named.split(".")[0] == field, context
            if n >= MIN_REQUESTS and time.perf_counter() - t0 > TIME_LIMIT_S:
                break
        assert client.get("/health").json()["status"] == "ok"
    assert n >= MIN_REQUESTS and n_good > 0.2 * n and n_bad > 0.4 * n
    print(f"fuzz: {n} requests ({n_good} good, {n_bad} bad) in {time.perf_counter() - t0:.1f}s")
