"""Data parallelism under ``torchrun``: the process group, sharding and the few collectives vstar
needs. With one process (no ``torchrun``, or ``--nproc_per_node=1``) every function is the
identity, so single-process code paths are unchanged.

    torchrun --nproc_per_node=2 -m vstar run configs/demo_ml100k.yaml

``init_from_env`` (called by the CLI) joins the group torchrun describes in the environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...): NCCL when CUDA is available, gloo otherwise.

**How training is split** (docs/method.md section 9, "Data parallelism"). Every rank holds the
whole model and the same data, draws the same global batch from the same seeded RNG, and works on
its share of it (``shard``: rows rank, rank + W, ...). Each rank's loss is its share of the
*global* mean (``global_share``: local count / global count of the loss's units, so the sum over
ranks is the single-process loss) and gradients are summed across ranks (``all_reduce_grads``)
before clipping and the optimiser step, so one step equals the single-process step on the same
global batch up to float rounding. Gradients are all-reduced by hand rather than through
``DistributedDataParallel``: an RL step runs several forwards (prefill, candidates, reference,
tree paths) and ``autograd.grad`` on part of the loss, which DDP's hooks do not follow.
Rank 0 alone writes files (``is_main``); the others wait at ``barrier``s where they read them.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import pickle
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from vstar.core.errors import InputError

# the seed offset of rank r's own random streams (sampling, dropout); rank 0 keeps the seed
RANK_SEED_STRIDE = 1_000_003


def active() -> bool:
    """True when a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0, or the only process)."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """This rank's seed for its own random streams: ``seed`` on rank 0, distinct elsewhere."""
    return int(seed) + RANK_SEED_STRIDE * rank()


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); returns True if joined.
    NCCL (one GPU per local rank) when CUDA is available, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available()
                                                        and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where collective buffers live: the GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may write shared files, e.g. SIDs), the others after it
    (they read them)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def main_result(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only (it writes files), its result given to every rank; if it
    raises, every rank raises the same error (so no rank waits for one that stopped)."""
    if not active():
        return fn()
    outcome: list[Any] = [None]
    if is_main():
        try:
            outcome = [("ok", fn())]
        except BaseException as err:          # noqa: BLE001 (re-raised on every rank)
            try:
                pickle.dumps(err)
                outcome = [("error", err)]
            except Exception:                 # an unpicklable error: its message
                outcome = [("error", RuntimeError(f"rank 0: {type(err).__name__}: {err}"))]
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def shard(items: Sequence | np.ndarray) -> Any:
    """This rank's share of ``items``: every W-th element from its rank (the whole sequence
    with one process)."""
    return items[rank()::world_size()] if active() else items


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def global_share(n_local: float) -> float:
    """``n_local / sum over ranks of n_local``: the weight of this rank's mean in the global
    mean (1 with one process; 0 where no rank has any)."""
    if not active():
        return 1.0
    total = all_sum([n_local])[0]
    return float(n_local) / total if total > 0 else 0.0


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting weights)."""
    if not active():
        return
    dev = _device()
    for t in list(module.parameters()) + list(module.buffers()):
        buf = t.data.to(dev)
        dist.broadcast(buf, src=0)
        if buf is not t.data:
            t.data.copy_(buf)


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum ``.grad`` over ranks, in one flat buffer per dtype. A parameter without a gradient
    on this rank counts as zeros if any rank has one, and stays without one (as in a single
    process, so the optimiser skips it) if none has."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    reduce_grad_list(params, [p.grad for p in params], assign=True)


def reduce_grad_list(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                     assign: bool = False) -> list[torch.Tensor | None]:
    """Sum a list of gradients (one per parameter, None allowed) over ranks; returns the summed
    list (None where no rank had a gradient). ``assign``: also set them as ``p.grad``."""
    if not active():
        return list(grads)
    dev = _device()
    present = torch.tensor([g is not None for g in grads], dtype=torch.int32, device=dev)
    dist.all_reduce(present)
    out: list[torch.Tensor | None] = []
    for p, g, n in zip(params, grads, present.tolist()):
        out.append(None if n == 0 else (g if g is not None else torch.zeros_like(p)))
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(out):
        if g is not None:
            by_dtype.setdefault(g.dtype, []).append(i)
    for idx in by_dtype.values():
        flat = torch.cat([out[i].reshape(-1) for i in idx]).to(dev)
        dist.all_reduce(flat)
        flat = flat.to(out[idx[0]].device)
        offset = 0
        for i in idx:
            n = out[i].numel()
            out[i] = flat[offset:offset + n].view_as(out[i]).clone()
            offset += n
    if assign:
        for p, g in zip(params, out):
            p.grad = g
    return out


def gather_rng_state(state: torch.Tensor) -> torch.Tensor:
    """A torch RNG state to save: itself with one process, else every rank's, stacked
    [world, S] (each rank draws its own stream; ``pick_rng_state`` restores it)."""
    if not active():
        return state
    return torch.stack(all_gather_objects(state))


def pick_rng_state(saved: torch.Tensor) -> torch.Tensor:
    """This rank's state from what ``gather_rng_state`` saved; InputError if it was saved by
    another number of processes."""
    if saved.dim() == 1:
        if active():
            raise InputError(f"the state was saved by one process, this run has "
                             f"{world_size()}: resume with the same number of processes")
        return saved
    if saved.shape[0] != world_size():
        raise InputError(f"the state was saved by {saved.shape[0]} processes, this run has "
                         f"{world_size()}: resume with the same number of processes")
    return saved[rank()].clone()        # a copy: set_state ignores a view's storage offset


def reduce_record(record: dict, sum_keys: Iterable[str] = ()) -> dict:
    """A logged record of numbers combined over ranks: ``sum_keys`` summed (a loss already
    weighted by ``global_share``), every other number averaged over the ranks where it is finite
    (NaN where none). Keys missing on some ranks are combined over the ranks that have them."""
    if not active():
        return record
    records = all_gather_objects(record)
    sums = set(sum_keys)
    out = dict(record)
    for key in dict.fromkeys(k for r in records for k in r):
        vals = [r[key] for r in records if key in r]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            continue
        if key in sums:
            out[key] = float(sum(vals))
        elif all(v == vals[0] for v in vals):            # the same on every rank (step, lr)
            out[key] = vals[0]
        else:
            finite = [float(v) for v in vals if math.isfinite(float(v))]
            out[key] = float(np.mean(finite)) if finite else float("nan")
    return out
