"""Where and how a latency was measured: the machine (CPU model, instruction-set flags, software
versions), the load on it, and wall-clock medians of contenders run side by side.

A time means little without the machine it came from, and a shared machine's load moves single
timings: contenders run in turn (a, b, c, a, b, c, ...), so that a burst of another process's
work hits all of them alike, and medians ignore the few slow runs. `gfldet benchmark` and the
scripts under benchmarks/ both use these.
"""

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

# /proc/cpuinfo flags that decide which kernels torch, onnxruntime, OpenVINO and OpenCV run:
# SIMD widths, fused multiply-add, half / bfloat16 conversion, dot-product and matrix extensions.
SIMD_FLAG_PREFIXES = ("sse", "avx", "fma", "f16c", "amx", "vnni", "asimd", "sve", "bf16", "i8mm")

# Flags of the int8 dot-product instructions that make int8 convolutions faster than float32
# ones (x86: AVX512-VNNI, AVX-VNNI, AMX-INT8; ARM: the dot-product and i8mm extensions).
INT8_DOT_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
# Flags of the bfloat16 matrix instructions that make bf16 autocast faster than float32
# (elsewhere bf16 is emulated and slower).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def has_int8_dot(flags: list[str] | None = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (INT8_DOT_FLAGS; default: this CPU's
    flags): without them int8 convolutions gain little or nothing over float32."""
    flags = cpu_description()[1] if flags is None else flags
    return any(f in flags for f in INT8_DOT_FLAGS)


def has_bf16(flags: list[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (BF16_FLAGS; default: this CPU's flags)."""
    flags = cpu_description()[1] if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


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


def percentile(times: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `times`, linearly interpolated (numpy's default)."""
    ordered = sorted(times)
    if not ordered:
        raise ValueError("percentile of no times")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def resident_mib() -> float | None:
    """This process's resident memory now, in MiB (Linux /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
