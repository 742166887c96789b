"""``vstar serve``: answers equal the batch decoders', bad requests are 4xx naming the field,
concurrent requests are micro-batched, and the CLI starts uvicorn with its options."""

import concurrent.futures as cf

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from vstar.decode.beam import beam_search
from vstar.decode.ved import value_guided_decode
from vstar.experiments.budget import load_run
from vstar.experiments.cli import main
from vstar.serve import Recommender, ServeConfig, create_app

HISTORIES = [["i1", "i3"], ["i0"], ["i5", "i7", "i9", "i11", "i13", "i15", "i17"], ["i2", "i2"]]


@pytest.fixture(scope="module")
def rl_run(toy_runs):
    return load_run(toy_runs["vstar"])


@pytest.fixture(scope="module")
def client(rl_run):
    with TestClient(create_app(recommender=Recommender(rl_run, ServeConfig(max_wait_ms=0,
                                                                           max_history=50)))) as c:
        yield c


@pytest.fixture(scope="module")
def sft_client(toy_runs):
    with TestClient(create_app(toy_runs["sft"], max_wait_ms=0)) as c:
        yield c


def _indices(run, history):
    index = {iid: i for i, iid in enumerate(run.data.item_ids)}
    return np.asarray([index[h] for h in history], dtype=np.int64)


def _direct(run, history, width, decoder="beam"):
    """The batch decoder's ranking (dataset ids) for one history."""
    tokens, mask = run.vocab.encode_histories([_indices(run, history)], run.trie.codes,
                                              max_items=run.splits.max_history)
    with torch.no_grad():
        if decoder == "beam":
            res = beam_search(run.model, run.vocab, run.trie, tokens, mask, width)
        else:
            res = value_guided_decode(run.model, run.value_head, run.vocab, run.trie, tokens,
                                      mask, width, run.rl_cfg.ved)
    return [run.data.item_ids[i] for i in res.items[0].tolist() if i >= 0]


@pytest.mark.parametrize("history", HISTORIES)
def test_beam_answers_equal_the_batch_decoder(client, rl_run, history):
    r = client.post("/recommend", json={"history": history, "k": 7, "exclude_history": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["items"] == _direct(rl_run, history, 7)
    assert len(body["scores"]) == 7 and body["scores"] == sorted(body["scores"], reverse=True)
    assert body["cost"]["forward_tokens"] > 0 and body["cost"]["decode_ms"] >= 0
    # exclude_history (the default): the ranking of a beam k + |history| wide (rounded up to a
    # multiple of 8), history removed
    r = client.post("/recommend", json={"history": history, "k": 7})
    width = min(rl_run.data.n_items, -(-(7 + len(set(history))) // 8) * 8)
    assert r.json()["items"] == [i for i in _direct(rl_run, history, width)
                                 if i not in history][:7]


def test_ved_answers_equal_value_guided_decode(client, rl_run):
    for history in HISTORIES[:2]:
        r = client.post("/recommend", json={"history": history, "k": 4, "decoder": "ved",
                                            "exclude_history": False})
        assert r.status_code == 200, r.text
        assert r.json()["items"] == _direct(rl_run, history, 4, decoder="ved")
        assert r.json()["decoder"] == "ved"


def test_budget_sets_the_beam_width_and_the_ved_budget(client, rl_run):
    L1 = rl_run.vocab.n_levels - 1
    r = client.post("/recommend", json={"history": ["i1"], "k": 3, "budget": 8 * L1,
                                        "exclude_history": False})
    assert r.json()["items"] == _direct(rl_run, ["i1"], 8)[:3]
    assert r.json()["cost"]["forward_tokens"] <= 8 * L1
    r = client.post("/recommend", json={"history": ["i1"], "k": 3, "decoder": "ved",
                                        "budget": 5 * L1})
    assert r.status_code == 200 and r.json()["cost"]["forward_tokens"] <= 5 * L1


def test_health_metadata_and_openapi(client, rl_run):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["dataset"] == "toy" and meta["n_items"] == rl_run.data.n_items
    assert meta["sid_levels"] == rl_run.vocab.n_levels
    assert meta["codebook_sizes"] == list(rl_run.vocab.codebook_sizes)
    assert meta["model"]["parameters"] > 0 and meta["vstar_version"]
    assert meta["decoders"] == ["beam", "ved"] and meta["method"] == "vstar"
    schema = client.get("/openapi.json").json()
    assert "/recommend" in schema["paths"] and "RecommendRequest" in schema["components"]["schemas"]


def test_ved_on_an_sft_folder_is_a_clear_4xx(sft_client):
    assert sft_client.get("/metadata").json()["decoders"] == ["beam"]
    r = sft_client.post("/recommend", json={"history": ["i1"], "decoder": "ved"})
    assert r.status_code == 422
    assert r.json()["field"] == "decoder" and "value head" in r.json()["error"]
    assert sft_client.post("/recommend", json={"history": ["i1"]}).status_code == 200


BAD = [
    ({}, "history"),
    ({"history": []}, "history"),
    ({"history": "i1"}, "history"),
    ({"history": ["i1", 3]}, "history"),
    ({"history": [None]}, "history"),
    ({"history": ["i1", "nope"]}, "history"),
    ({"history": ["i1"] * 51}, "history"),
    ({"history": ["i1"], "k": 0}, "k"),
    ({"history": ["i1"], "k": 31}, "k"),
    ({"history": ["i1"], "k": -3}, "k"),
    ({"history": ["i1"], "k": "5"}, "k"),
    ({"history": ["i1"], "k": 1.5}, "k"),
    ({"history": ["i1"], "k": True}, "k"),
    ({"history": ["i1"], "decoder": "greedy"}, "decoder"),
    ({"history": ["i1"], "decoder": 1}, "decoder"),
    ({"history": ["i1"], "budget": 0}, "budget"),
    ({"history": ["i1"], "budget": "lots"}, "budget"),
    ({"history": ["i1"], "k": 10, "budget": 3}, "budget"),
    ({"history": ["i1"], "decoder": "ved", "budget": 1}, "budget"),
    ({"history": ["i1"], "exclude_history": "yes"}, "exclude_history"),
    ({"history": ["i1"], "kk": 3}, "kk"),
]


@pytest.mark.parametrize("body,field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_requests_are_4xx_naming_the_field(client, body, field):
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"].split(".")[0] == field and r.json()["error"].startswith(field)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"null", b"\xff\xfe"])
def test_malformed_bodies_are_4xx(client, raw):
    r = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert client.get("/health").status_code == 200


def test_concurrent_requests_are_micro_batched(rl_run):
    rec = Recommender(rl_run, ServeConfig(max_batch=4, max_wait_ms=500))
    histories = [["i%d" % i, "i%d" % (i + 2)] for i in range(0, 20, 2)]     # 10 users
    with TestClient(create_app(recommender=rec)) as c:
        with cf.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda h: c.post("/recommend", json={
                "history": h, "k": 5, "exclude_history": False}), histories))
    assert all(a.status_code == 200 for a in answers)
    assert sum(rec.batch_sizes) == 10
    assert max(rec.batch_sizes) > 1 and max(rec.batch_sizes) <= 4         # batched, bounded
    assert max(a.json()["cost"]["batch_size"] for a in answers) > 1
    for h, a in zip(histories, answers):             # batching does not change the answers
        assert a.json()["items"] == _direct(rl_run, h, 5)


def test_serve_command_starts_uvicorn_with_its_options(toy_runs, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", str(toy_runs["sft"]), "--port", "8123", "--max-batch", "7",
                 "--max-wait-ms", "2", "--threads", "1"]) in (0, None)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    rec = seen["app"].state.recommender
    assert rec.cfg.max_batch == 7 and rec.cfg.max_wait_ms == 2


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    from vstar.core.errors import InputError

    with pytest.raises(InputError, match="run folder"):
        create_app(tmp_path)


def test_a_run_ranked_with_the_item_head_is_served_with_it(toy_runs):
    """eval.item_head > 0 in the run's config: /recommend answers with the fused beam, as the
    run's evaluation ranked (the head's weights do not matter for the equality)."""
    from vstar.decode.beam import item_head_decoder

    run = load_run(toy_runs["sft"])
    run.cfg.eval.item_head = 2.0
    fused = item_head_decoder(10, 2.0)
    with TestClient(create_app(recommender=Recommender(run, ServeConfig(max_wait_ms=0)))) as c:
        for history in HISTORIES:
            r = c.post("/recommend", json={"history": history, "k": 10,
                                           "exclude_history": False})
            tokens, mask = run.vocab.encode_histories([_indices(run, history)], run.trie.codes,
                                                      max_items=run.splits.max_history)
            with torch.no_grad():
                res = fused(run.model, run.vocab, run.trie, tokens, mask)
            assert r.json()["items"] == [run.data.item_ids[i] for i in res.items[0].tolist()
                                         if i >= 0]
            assert r.json()["scores"] == pytest.approx(
                [s for s in res.scores[0].tolist() if s > float("-inf")], abs=1e-5)
