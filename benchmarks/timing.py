"""What every benchmark shares: wall-clock medians over repeats, contenders measured side by
side, and a description of the machine that ran them (a time means little without it)."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# One definition, in the library (`gfldet benchmark` uses them too); re-exported here.
from gfldet.deploy.machine import (  # noqa: F401
    SIMD_FLAG_PREFIXES,
    cpu_description,
    load_average,
    machine,
    measure,
    median,
)


def latency(times: list[float], images: int) -> dict[str, Any]:
    """Median seconds per call, images/s at `images` per call, and the raw times."""
    m = median(times)
    return {"latency_s": m, "images_per_s": images / m, "times": times}


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """`fn` followed by torch.cuda.synchronize on a CUDA device, so that a wall-clock timer
    around the call measures the GPU work it queued (and none of the next call's)."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def time_calls(obj: nn.Module, name: str) -> list[float]:
    """Records the wall time of every later call of `obj.<name>()` (the model's forward calls
    `self.<name>`, which now finds this wrapper). Returns the list it appends to."""
    method = getattr(obj, name)
    times: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    object.__setattr__(obj, name, timed)
    return times


def run_one_thread(cmd: list[str]) -> tuple[float, float]:
    """Runs `cmd` (a training) in a process of its own with one intra-op thread, so that its CPU
    time is its whole cost; returns (CPU seconds, wall seconds). A failure raises with its
    stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    usage0, wall0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    usage, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - wall0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    return cpu, wall
