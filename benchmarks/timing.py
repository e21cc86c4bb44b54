"""What every benchmark shares: wall-clock medians over repeats, contenders measured side by
side, and a description of the machine that ran them (a time means little without it)."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

# /proc/cpuinfo flags that decide which kernels torch and OpenCV run: SIMD widths, fused
# multiply-add, half / bfloat16 conversion, dot-product and matrix extensions.
SIMD_FLAG_PREFIXES = ("sse", "avx", "fma", "f16c", "amx", "vnni", "asimd", "sve", "bf16", "i8mm")


def measure(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall-clock seconds of every fn: `warmup` untimed rounds, then `repeats` timed rounds,
    each round running every fn once, in turn (a, b, c, a, b, c, ...), so that a change in the
    machine's load hits the contenders of one comparison alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    """The median: a few slow runs (another process's burst) do not move it."""
    return statistics.median(times)


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


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and its SIMD instruction-set flags (SIMD_FLAG_PREFIXES), from
    /proc/cpuinfo where there is one (Linux), else what `platform` knows and no flags."""
    model, flags = None, None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and flags is None:  # x86 / ARM
                flags = sorted(f for f in value.split() if f.startswith(SIMD_FLAG_PREFIXES))
    return model or platform.processor() or platform.machine(), flags or []


def machine() -> dict[str, Any]:
    """The CPU (model, SIMD flags, the kernel set torch dispatches to), threads, and the
    versions of torch, torchvision and Python."""
    cpu, flags = cpu_description()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): a busy machine
    explains slow numbers."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
