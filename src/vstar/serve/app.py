"""The HTTP service behind ``vstar serve RUN_DIR``.

Why FastAPI + uvicorn: the request and response bodies are pydantic models, so every field is
type-checked before any model code runs (a wrong type, a missing ``history`` or an unknown field
is a 422 naming the field, never a crash), and the OpenAPI schema (``/openapi.json``, ``/docs``)
comes for free from the same models. uvicorn is the standard ASGI server for it; its asyncio loop
lets the micro-batcher below collect concurrent requests while one decode call runs in a worker
thread. Both are small, pure-Python (plus optional C speed-ups) and pull in no model stack.

Endpoints:
    POST /recommend  {"history": ["1", "50"], "k": 10, "decoder": "beam", "budget": null,
                      "exclude_history": true}  -> items (dataset ids), scores, decode cost
    GET  /health     -> {"status": "ok", ...}
    GET  /metadata   -> dataset, SID levels and codebooks, model size, vstar version, run folder

Micro-batching: requests wait at most ``max_wait_ms`` (or until ``max_batch`` have arrived) and
are decoded together; requests with the same (decoder, width, budget) share one decode call.

Decoding (``decode/``): ``beam`` is constrained beam search of width ``k``; with
``exclude_history`` the width is ``k`` + the history's distinct items rounded up to a multiple of 8
(so that ``k`` items are left after removing them, and requests of similar lengths share one
decode call); the answer is exactly the batch decoder's ranking at that width, history removed.
VED likewise returns that many candidates. ``budget`` is
the decode forward-token budget per user: for beam search it sets the width to
``budget // (L-1)`` (which must be at least the width above); for VED it replaces the run's
``rl.ved`` budget. ``ved`` needs the value head of an RL run folder: on an SFT folder it is a 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

import vstar
from vstar.core.errors import InputError
from vstar.decode.beam import beam_search, item_head_decoder
from vstar.decode.ved import value_guided_decode
from vstar.core.device import DEVICES
from vstar.experiments.budget import LoadedRun, load_run


WIDTH_STEP = 8    # exclude_history: beam width k + |history|, rounded up to a multiple of this


@dataclasses.dataclass
class ServeConfig:
    """Server limits. ``max_history``: longest history accepted (the model reads its last
    ``splits.max_history`` items); ``max_k``: largest k (capped at the catalogue size);
    ``max_batch`` / ``max_wait_ms``: micro-batching bounds (users per decode call; how long the
    first request of a batch waits for others)."""

    max_batch: int = 32
    # 2 ms (bench/README.md, "serve"): 0 splits the batches of concurrent clients, 5 adds
    # ~3 ms to every request and batches no more
    max_wait_ms: float = 2.0
    max_history: int = 1000
    max_k: int = 1000
    threads: int | None = None
    device: str = "auto"      # auto | cpu | cuda (vstar.core.device): where the run decodes

    def validate(self) -> None:
        for name in ("max_batch", "max_history", "max_k"):
            if getattr(self, name) < 1:
                raise InputError(f"expected >= 1, got {getattr(self, name)}", field=name)
        if not self.max_wait_ms >= 0:
            raise InputError(f"expected >= 0, got {self.max_wait_ms}", field="max_wait_ms")
        if self.device not in DEVICES:
            raise InputError(f"expected one of {list(DEVICES)}, got {self.device!r}",
                             field="device")


class RecommendRequest(BaseModel):
    """Body of ``POST /recommend``; only ``history`` is required."""

    model_config = ConfigDict(extra="forbid")

    history: list[StrictStr] = Field(..., description="item ids as the dataset writes them, "
                                     "oldest first (MovieLens: \"1\")")
    k: StrictInt = Field(10, description="number of items to return")
    decoder: Literal["beam", "ved"] = Field("beam", description="beam search, or value-guided "
                                            "decoding (RL run folders only)")
    budget: StrictInt | None = Field(None, description="decode forward tokens per user")
    exclude_history: StrictBool = Field(True, description="never return items of the history")


class Cost(BaseModel):
    forward_tokens: int = Field(description="decode forward tokens this user cost (prefill "
                                "excluded)")
    decode_ms: float = Field(description="wall time of the decode call this request was part of")
    queue_ms: float = Field(description="time spent waiting for the batch")
    batch_size: int = Field(description="users in that decode call")


class RecommendResponse(BaseModel):
    items: list[str]
    scores: list[float]
    decoder: str
    cost: Cost


class RequestError(Exception):
    """A request that is well-typed but invalid for this run (-> 422 naming ``field``)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": f"{field}: {message}", "field": field})


@dataclasses.dataclass
class _Job:
    history: np.ndarray        # item indices
    k: int
    decoder: str
    width: int                 # beam width / VED candidates
    budget: int | None
    exclude: set[int]
    t_enqueued: float


class Recommender:
    """A loaded run folder that turns validated requests into decode calls."""

    def __init__(self, run: LoadedRun, cfg: ServeConfig | None = None):
        self.run = run
        self.cfg = cfg or ServeConfig()
        self.cfg.validate()
        self.index = {iid: i for i, iid in enumerate(run.data.item_ids)}
        self.n_items = len(run.data.item_ids)
        self.n_levels = run.vocab.n_levels
        self.max_k = min(self.cfg.max_k, self.n_items)
        self.batch_sizes: list[int] = []      # users per decode call, in call order (tests)

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike, cfg: ServeConfig | None = None):
        cfg = cfg or ServeConfig()
        return cls(load_run(run_dir, threads=cfg.threads, device=cfg.device), cfg)

    # ------------------------------------------------------------------ validation
    def make_job(self, req: RecommendRequest) -> _Job:
        if not req.history:
            raise RequestError("history", "must hold at least one item id")
        if len(req.history) > self.cfg.max_history:
            raise RequestError("history", f"holds {len(req.history)} items, at most "
                                          f"{self.cfg.max_history} are accepted")
        unknown = [h for h in req.history if h not in self.index]
        if unknown:
            shown = ", ".join(repr(u[:40]) for u in unknown[:5])
            raise RequestError("history", f"{len(unknown)} unknown item id(s): {shown}"
                                          + (" ..." if len(unknown) > 5 else ""))
        if not 1 <= req.k <= self.max_k:
            raise RequestError("k", f"must be between 1 and {self.max_k}, got {req.k}")
        if req.decoder == "ved" and self.run.value_head is None:
            raise RequestError("decoder", "'ved' needs a value head: this is an SFT run folder "
                                          "(serve an RL run folder, or use 'beam')")
        hist = np.asarray([self.index[h] for h in req.history], dtype=np.int64)
        exclude = set(hist.tolist()) if req.exclude_history else set()
        width = req.k
        if exclude:      # room for the history's items, rounded up so that requests batch
            width = -(-(req.k + len(exclude)) // WIDTH_STEP) * WIDTH_STEP
        width = min(self.n_items, width)
        budget = req.budget
        if budget is not None:
            if not 1 <= budget <= 10_000_000:
                raise RequestError("budget", f"must be between 1 and 10000000, got {budget}")
            if req.decoder == "beam":
                need = width * max(1, self.n_levels - 1)
                if budget < need:
                    raise RequestError("budget", f"beam search of width {width} costs {need} "
                                                 f"forward tokens per user, the budget is {budget}")
                width = min(self.n_items, budget // max(1, self.n_levels - 1))
                budget = None
            elif budget < self.n_levels - 1:
                raise RequestError("budget", f"VED needs at least L-1 = {self.n_levels - 1} "
                                             f"forward tokens per user, got {budget}")
        return _Job(hist, req.k, req.decoder, width, budget, exclude, time.perf_counter())

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, jobs: list[_Job]) -> list[dict | Exception]:
        """Answers for ``jobs`` (one decode call per distinct (decoder, width, budget))."""
        out: list[dict | Exception | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.decoder, job.width, job.budget), []).append(i)
        for (decoder, width, budget), idx in groups.items():
            t_start = time.perf_counter()
            try:
                res = self._decode_call(decoder, width, budget, [jobs[i].history for i in idx])
            except InputError as err:
                for i in idx:
                    out[i] = RequestError(err.field or "request", str(err))
                continue
            decode_ms = 1000 * (time.perf_counter() - t_start)
            self.batch_sizes.append(len(idx))
            items = res.items.cpu().numpy()
            scores = res.scores.cpu().numpy()
            tokens = res.tokens_per_user.cpu().numpy()
            for row, i in enumerate(idx):
                job = jobs[i]
                keep = [(int(it), float(sc)) for it, sc in zip(items[row], scores[row])
                        if it >= 0 and int(it) not in job.exclude][: job.k]
                out[i] = {"items": [self.run.data.item_ids[it] for it, _ in keep],
                          "scores": [sc if math.isfinite(sc) else -1e30 for _, sc in keep],
                          "decoder": decoder,
                          "cost": {"forward_tokens": int(tokens[row]), "decode_ms": decode_ms,
                                   "queue_ms": 1000 * (t_start - job.t_enqueued),
                                   "batch_size": len(idx)}}
        return out

    def _decode_call(self, decoder: str, width: int, budget: int | None, histories):
        run = self.run
        tokens, mask = run.vocab.encode_histories(histories, run.trie.codes.cpu(),
                                                  max_items=run.splits.max_history)
        tokens, mask = tokens.to(run.trie.device), mask.to(run.trie.device)   # model's device
        if decoder == "beam":         # fused with the item head where the run ranks with it
            fused = item_head_decoder(width, run.cfg.eval.item_head)
            if fused is not None:
                return fused(run.model, run.vocab, run.trie, tokens, mask)
            return beam_search(run.model, run.vocab, run.trie, tokens, mask, width)
        ved_cfg = run.rl_cfg.ved
        if budget is not None:
            ved_cfg = dataclasses.replace(ved_cfg, budget=budget, budget_multiplier=1.0)
        return value_guided_decode(run.model, run.value_head, run.vocab, run.trie, tokens, mask,
                                   width, ved_cfg)

    def metadata(self) -> dict[str, Any]:
        run = self.run
        return {"dataset": run.data.name, "n_items": self.n_items,
                "sid_levels": self.n_levels, "codebook_sizes": list(run.vocab.codebook_sizes),
                "model": {"parameters": int(sum(p.numel() for p in run.model.parameters())),
                          "config": dataclasses.asdict(run.cfg.model)},
                "value_head": run.value_head is not None,
                "decoders": ["beam", "ved"] if run.value_head is not None else ["beam"],
                "method": run.layout.method, "run_dir": str(run.layout.path),
                "vstar_version": vstar.__version__,
                "model_max_history": int(run.splits.max_history),
                "limits": {"max_history": self.cfg.max_history, "max_k": self.max_k,
                           "max_batch": self.cfg.max_batch, "max_wait_ms": self.cfg.max_wait_ms}}


class MicroBatcher:
    """Collects queued jobs for at most ``max_wait_ms`` (or ``max_batch`` jobs) and hands them
    to ``fn`` in one worker thread, so that the event loop keeps accepting requests."""

    def __init__(self, fn, max_batch: int, max_wait_ms: float):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vstar-decode")
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    async def submit(self, job):
        if self.task is None:
            self.start()
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((job, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.001))
            try:
                results = await loop.run_in_executor(self.executor, self.fn,
                                                     [job for job, _ in batch])
            except Exception as err:          # never let one bad batch stop the loop
                results = [err] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


def _field_of(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else "body"


def create_app(run_dir: str | os.PathLike | None = None, recommender: Recommender | None = None,
               **cfg) -> FastAPI:
    """The ASGI app for a run folder (or an already loaded ``Recommender``)."""
    rec = recommender or Recommender.from_run_dir(run_dir, ServeConfig(**cfg))
    batcher = MicroBatcher(rec.decode, rec.cfg.max_batch, rec.cfg.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # Move everything loaded so far (the run's data, splits, model: ~200k objects for
        # ML-100K) out of the garbage collector's reach: a full collection over them costs
        # ~50-90 ms, which the requests' allocations trigger now and then (the p99 spikes of
        # bench/bench_serve.py). Frozen objects are never collected; they live as long as the
        # server anyway.
        gc.collect()
        gc.freeze()
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="vstar", version=vstar.__version__, lifespan=lifespan,
                  description="Top-k recommendations from a vstar run folder "
                              f"({rec.run.layout.path}).")
    app.state.recommender, app.state.batcher = rec, batcher

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(first.get("loc", ("body",)))
        detail = [{"field": _field_of(e.get("loc", ())), "message": str(e.get("msg", ""))}
                  for e in errors[:20]]
        return JSONResponse(status_code=422, content={
            "error": f"{field}: {first.get('msg', 'invalid')}", "field": field,
            "detail": detail})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "decode_calls": len(rec.batch_sizes)}

    @app.get("/metadata")
    async def metadata() -> dict:
        return rec.metadata()

    @app.post("/recommend", response_model=RecommendResponse,
              responses={422: {"description": "invalid request; 'field' names the field"}})
    async def recommend(req: RecommendRequest):
        try:
            job = rec.make_job(req)
            return await batcher.submit(job)
        except RequestError as err:
            return _error(422, err.field, err.message)
        except InputError as err:
            return _error(422, err.field or "request", str(err))

    return app


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          **cfg) -> None:
    """Load the run folder and serve it with uvicorn until interrupted."""
    import uvicorn

    app = create_app(run_dir, **cfg)
    uvicorn.run(app, host=host, port=port, log_level="info")
