"""torch.distributed helpers that also work in a single process.

Under torchrun every process calls these; outside it (no process group) they reduce to the
single-process answer, so callers need no `if distributed` branches.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_world_size() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; the world size otherwise)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or a launcher setting its variables) started, even with
    one process: `torchrun --nproc_per_node=1` then runs the same DDP code path as with 8."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")) > 1 or all(
        k in env for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    )


def init_distributed(device: torch.device) -> None:
    """Joins the process group when launched by torchrun: NCCL for CUDA devices, gloo for the
    CPU. Rendezvous details come from torchrun's environment."""
    if launched_by_torchrun() and not is_distributed():
        if device.type == "cuda":  # the rank's own GPU, so that NCCL need not guess it
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")


# The handle of the last collective, kept until the next one. A gloo worker thread releases a
# finished collective's tensors after `wait()` has returned, and needs the GIL for it; if that
# happens while the interpreter exits, the thread cannot get the GIL and the process aborts
# ("terminate called without an active exception", SIGABRT: 2 of 29 two-process torchrun
# trainings on 2 CPU cores, torch 2.14). Held here, the work outlives the worker's reference
# and is released by the main thread instead.
_last_work: list[dist.Work] = []


def _wait(work: dist.Work | None) -> None:
    """Waits for an async collective (async_op=True) and keeps its handle (see _last_work)."""
    assert work is not None
    work.wait()
    _last_work[:] = [work]


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (the tensor itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    _wait(dist.all_reduce(x, async_op=True))
    return x / world_size()


def reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (one all-reduce; no-op in one process).

    `device` must be the rank's GPU under NCCL (NCCL reduces CUDA tensors only).
    """
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    _wait(dist.all_reduce(t, async_op=True))
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """[object of rank 0, object of rank 1, ...] on every rank ([obj] in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        _wait(dist.barrier(async_op=True))


def shutdown(clean: bool = True) -> None:
    """Leaves the process group (a no-op without one): what a process run by torchrun does
    last. When `clean`, a barrier first lets every rank finish its collectives (and the gloo
    threads release their tensors, see _last_work) before any rank tears the group down. After
    an error, another rank may be inside another collective: no barrier, which could wait for
    the group's timeout (30 minutes)."""
    if is_distributed():
        if clean:
            barrier()
        dist.destroy_process_group()
