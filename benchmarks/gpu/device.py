"""What the GPU sections share: the device's memory and precision, finiteness checks, and a
description of the GPU and its software (driver, CUDA, cuDNN, NCCL)."""

from __future__ import annotations

import contextlib
import gc
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..timing import machine


def all_finite(obj: Any) -> bool:
    """Whether every floating tensor in `obj` (a tensor, or dicts / lists / tuples of them)
    is free of NaN and inf."""
    if isinstance(obj, Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(o) for o in obj)
    return True


def finite_run(fn: Callable[[], Any], head: nn.Module) -> bool:
    """Runs `fn` once; True when its output and the raw outputs of `head` are all finite (with
    random weights hardly any detection passes the score threshold, so the head's logits are
    where an fp16 overflow shows)."""
    seen: list[bool] = []
    handle = head.register_forward_hook(lambda m, args, out: seen.append(all_finite(out)))
    try:
        return all_finite(fn()) and bool(seen) and all(seen)
    finally:
        handle.remove()


def free_memory(device: torch.device) -> None:
    """Drops cached blocks and restarts the peak-memory counter (CUDA only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def amp_dtype(device: torch.device) -> torch.dtype:
    """The trainer's autocast dtype: float16 on CUDA (with a GradScaler), bfloat16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """torch.backends.cudnn.benchmark for the block (gfldet itself never sets it)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def nvidia_smi() -> dict[str, str] | None:
    """Name, driver and memory of GPU 0 from nvidia-smi, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    keys = ("name", "driver_version", "memory.total")
    cmd = [exe, f"--query-gpu={','.join(keys)}", "--format=csv,noheader"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(zip(keys, (v.strip() for v in out.splitlines()[0].split(","))))


def nccl_version() -> str | None:
    """NCCL's version as torch reports it (a tuple, or an int in older releases), or None."""
    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and the software: timing.machine() plus CUDA, cuDNN, NCCL and the GPU."""
    env: dict[str, Any] = {
        **machine(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        # TF32 (Ampere and later): torch's defaults, the same for every contender
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        smi = nvidia_smi()
        env.update(
            gpu=props.name,
            capability=list(torch.cuda.get_device_capability(device)),
            gpu_memory_gib=props.total_memory / 2**30,
            driver=smi["driver_version"] if smi else None,
            nvidia_smi=smi,
            nccl=nccl_version(),
        )
    return env
