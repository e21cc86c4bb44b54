"""`gfldet benchmark`: how fast the user's model runs on their machine, in every runtime and
precision available there, measured side by side.

    result = benchmark_checkpoint(cfg, "work_dirs/run/best.pth", quick=True)

What is timed is the network with its box decoding for one image (batch 1) at the fixed input
size: the PyTorch model (as loaded, and prepared: BatchNorm folded, channels_last; bf16
autocast where the CPU computes bf16) against the exported graph in each installed ONNX runtime,
fp32 and int8 (calibrated on the config's val images). Resizing and NMS are left out: they are
the same code whatever the runtime. Contenders run in turn, round after round (measure), so that
a change in the machine's load hits all alike; latency is the median and the 90th percentile,
throughput one image / median. Memory: how much the process's resident memory grew when the
contender was loaded and first run (approximate: allocators keep freed memory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import make_output_dir, write_json_atomic
from ..deploy.machine import (
    has_bf16,
    has_int8_dot,
    load_average,
    machine,
    measure,
    median,
    percentile,
    resident_mib,
)
from ..deploy.sessions import ONNX_RUNTIMES, open_session, runtime_installed

log = logging.getLogger("gfldet")

QUICK = {"repeats": 3, "warmup": 1, "calib_num": 2}
FULL = {"repeats": 20, "warmup": 3, "calib_num": 16}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to n (None: left as they are) for the block."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loaded(make: Callable[[], Callable[[], Any]]) -> tuple[Callable[[], Any], float | None]:
    """make() -> the contender, run once; with the growth of resident memory meanwhile."""
    before = resident_mib()
    fn = make()
    fn()
    after = resident_mib()
    # Clamped at 0: what the allocator freed meanwhile (another contender's) is not a saving.
    return fn, (max(0.0, after - before) if before is not None and after is not None else None)


def benchmark_checkpoint(
    cfg: Any,
    checkpoint: str | Path,
    quick: bool = False,
    img_size: tuple[int, int] | None = None,
    threads: int | None = None,
    calib: str | Path | None = None,
    out: str | Path | None = None,
    echo: Callable[[str], None] = print,
    repeats: int | None = None,
    warmup: int | None = None,
    calib_num: int | None = None,
) -> dict[str, Any]:
    """Times the checkpoint's model (cfg's architecture) in every runtime and precision
    available here (see the module docstring); prints a table (echo) and returns

        {"machine": machine() + load averages, "model", "input": [1, 3, H, W], "threads",
         "repeats", "rows": [{"runtime", "precision", "median_ms", "p90_ms", "images_per_s",
         "memory_mib", "vs_torch"}], "skipped": {contender: why}}

    vs_torch: median latency / the PyTorch fp32 model's (as loaded), measured side by side.
    img_size: (H, W) (default: the export default, gfldet.inference.export.default_img_size);
    threads: of every runtime (default: torch's current count); calib: int8 calibration images
    (default: the config's val split); quick: few repeats and 2 calibration images, for a
    smoke test; repeats, warmup, calib_num: override the plan's (QUICK or FULL). out: also
    write the result as JSON there.
    """
    from ..deploy.quantize import quantize_onnx
    from ..model.fuse import prepare_for_inference
    from .export import DecodedGFL, calibration_files, export_onnx, input_size
    from .predictor import load_trained_model

    plan = dict(QUICK if quick else FULL)
    for key, value in (("repeats", repeats), ("warmup", warmup), ("calib_num", calib_num)):
        if value is not None:
            if value < (0 if key == "warmup" else 1):
                raise ValueError(f"{key} must be >= {0 if key == 'warmup' else 1}, got {value}")
            plan[key] = value
    size = input_size(cfg, img_size)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    threads = threads or torch.get_num_threads()
    if out is not None:
        check_result_out(Path(out), [checkpoint])
    if calib is not None and not Path(calib).is_dir():  # a user's folder: not a reason to skip
        raise NotADirectoryError(f"--calib {calib}: not a folder of images")
    h, w = size
    load_before = load_average()
    model, _ = load_trained_model(cfg, checkpoint, torch.device("cpu"))
    images = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=_gen())
    x = images.numpy()
    contenders: dict[str, Callable[[], Any]] = {}
    memory: dict[str, float | None] = {}
    skipped: dict[str, str] = {}

    def add(name: str, make: Callable[[], Callable[[], Any]]) -> None:
        try:
            contenders[name], memory[name] = _loaded(make)
        except (ImportError, RuntimeError, ValueError, OSError) as e:
            skipped[name] = str(e).splitlines()[0]

    with torch_threads(threads), torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        eager = DecodedGFL(model, size)
        add("torch fp32", lambda: lambda: eager(images))
        prepared = DecodedGFL(prepare_for_inference(model), size)
        channels_last = images.contiguous(memory_format=torch.channels_last)
        add("torch fp32 prepared", lambda: lambda: prepared(channels_last))
        if has_bf16():

            def bf16() -> Any:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return prepared(channels_last)

            add("torch bf16 prepared", lambda: bf16)
        else:
            skipped["torch bf16 prepared"] = "no AMX / AVX512-BF16 on this CPU"
        onnx_runtimes = [r for r in ONNX_RUNTIMES if runtime_installed(r)]
        for r in ONNX_RUNTIMES:
            if r not in onnx_runtimes:
                skipped[f"{r} fp32"] = skipped[f"{r} int8"] = "not installed"
        files: dict[str, Path] = {}
        if onnx_runtimes:
            try:
                files["fp32"] = export_onnx(model, Path(tmp) / "fp32.onnx", size)
            except ImportError as e:
                for r in onnx_runtimes:
                    skipped[f"{r} fp32"] = skipped[f"{r} int8"] = str(e)
        if "fp32" in files and runtime_installed("onnxruntime"):
            try:
                calib_files = calibration_files(
                    None if calib else cfg.data.val, calib, plan["calib_num"]
                )
                quantize_onnx(files["fp32"], Path(tmp) / "int8.onnx", calib_files, echo=log.info)
                files["int8"] = Path(tmp) / "int8.onnx"
            except (ValueError, OSError) as e:
                for r in onnx_runtimes:
                    skipped[f"{r} int8"] = f"no int8 model: {str(e).splitlines()[0]}"
        for precision, path in files.items():
            for r in onnx_runtimes:
                add(f"{r} {precision}", _session_call(path, r, threads, x))
        times = measure(contenders, plan["repeats"], plan["warmup"])
    base = median(times["torch fp32"])
    rows = []
    for name, t in times.items():
        runtime, _, precision = name.partition(" ")
        m = median(t)
        rows.append(
            {
                "runtime": runtime,
                "precision": precision,
                "median_ms": round(m * 1000, 2),
                "p90_ms": round(percentile(t, 90) * 1000, 2),
                "images_per_s": round(1 / m, 2),
                "memory_mib": None if memory[name] is None else round(memory[name], 1),
                "vs_torch": round(m / base, 3),
            }
        )
    where = machine()
    where.update(
        threads=threads,
        load_average_before=load_before,
        load_average_after=load_average(),
        int8_dot_product=has_int8_dot(),
        bf16=has_bf16(),
    )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": where,
        "model": {
            "checkpoint": str(checkpoint),
            "classes": model.num_classes,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "input": [1, 3, h, w],
        "threads": threads,
        "repeats": plan["repeats"],
        "rows": rows,
        "skipped": skipped,
    }
    echo(format_benchmark(result))
    if out is not None:
        write_json_atomic(result, Path(out), indent=1)
        echo(f"wrote {out}")
    return result


def check_result_out(out: Path, inputs: list[str | Path]) -> None:
    """Refuses an --out that is not a .json file, is one of `inputs`, or holds a file other
    than an earlier benchmark result (a user's file is never replaced)."""
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: name a .json file for the results")
    for inp in inputs:
        if out.exists() and Path(inp).exists() and out.samefile(inp):
            raise ValueError(f"--out {out} is the input {inp}: name a new .json file")
    if out.exists():
        try:
            earlier = json.loads(out.read_text(encoding="utf-8"))
            ours = isinstance(earlier, dict) and {"machine", "rows"} <= set(earlier)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileExistsError(
                f"--out {out} holds a file that is not a gfldet benchmark result: refusing "
                "to replace it; name a new .json file"
            )
    make_output_dir(out.parent, "--out")  # before the run, not after it


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _session_call(
    path: Path, runtime: str, threads: int, x: np.ndarray
) -> Callable[[], Callable[[], Any]]:
    def make() -> Callable[[], Any]:
        session = open_session(path, runtime, threads)
        return lambda: session(x)

    return make


def format_benchmark(result: dict[str, Any]) -> str:
    """The table `gfldet benchmark` prints, with the machine it was measured on."""
    m = result["machine"]
    flags = " ".join(m["cpu_flags"]) or "unknown"
    lines = [
        f"{m['cpu']} ({m['cpu_count']} CPUs; {result['threads']} threads; load average "
        f"{m['load_average_before']} -> {m['load_average_after']})",
        f"instruction sets: {flags}",
        f"int8 dot product (VNNI / AMX): {'yes' if m['int8_dot_product'] else 'no'}; "
        f"bf16: {'yes' if m['bf16'] else 'no'}; torch {m['torch']} ({m['torch_cpu_capability']})",
        f"input {result['input']}, batch 1, {result['repeats']} rounds side by side "
        "(network + box decoding)",
        f"{'runtime':<12} {'precision':<14} {'median ms':>10} {'p90 ms':>9} {'img/s':>8} "
        f"{'memory MiB':>11} {'vs torch':>9}",
    ]
    for r in result["rows"]:
        mem = "-" if r["memory_mib"] is None else f"{r['memory_mib']:.0f}"
        lines.append(
            f"{r['runtime']:<12} {r['precision']:<14} {r['median_ms']:>10.1f} "
            f"{r['p90_ms']:>9.1f} {r['images_per_s']:>8.2f} {mem:>11} {r['vs_torch']:>8.2f}x"
        )
    for name, why in result["skipped"].items():
        lines.append(f"{name}: skipped ({why})")
    return "\n".join(lines)
