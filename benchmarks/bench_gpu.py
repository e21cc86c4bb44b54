"""gfldet's CUDA paths, checked and timed in one command for the few minutes a GPU is lent.

    python -m benchmarks.bench_gpu --out bench_gpu.json              # `make bench-gpu`
    python -m benchmarks.bench_gpu --only infer train --out g.json   # some of the sections
    python -m benchmarks.bench_gpu --cpu-smoke --out /tmp/g.json     # every section, tiny, CPU

Sections (--only picks some; one module each in benchmarks/gpu/, whose docstrings say what
they measure):
  infer     batch 1, R-50 GFL at 800x1333 (padded to 800x1344 as gfldet's loader pads), fp32
            and fp16 autocast, beside torchvision's FCOS R-50; GFLv2 R-50; gfldet-lite at
            320x320 beside torchvision's SSDlite320-MobileNetV3; a copy of the R-50 whose
            scores load NMS as a trained model's do
  train     30 training steps of the R-50 1x recipe, batch 2 of 800x1216, AMP on and off:
            s/iter, peak memory, losses, GradScaler's final scale, beside torchvision's FCOS
  torchrun  `torchrun --nproc_per_node=1 -m gfldet train` (NCCL on CUDA, gloo on the CPU) with
            AMP, EMA and SyncBN, then `gfldet eval`, then `--resume` to a second epoch
  demo      the shapes demo trained on the device with AMP for its schedule or
            --demo-seconds, whichever ends first, then its val AP

Reading the JSON (--out; rewritten after every section, so a crash or a timeout keeps what
was measured): "environment" (GPU, driver, torch, CUDA, cuDNN, NCCL, capability, CPU, python,
platform), "command", "date", "mode" ("gpu" or "cpu-smoke"), "settings" (sizes, repeats),
"sections" {name: {"status": "ok" | "failed" ("running" while it runs), "seconds",
"results", and on failure "error" and "traceback"}}, "targets" {name: {"value", "target",
"status"}}, "failed_sections", "missed_targets", "ok", "table". Times are
wall-clock medians in seconds, with torch.cuda.synchronize() after every timed call; memory is
torch.cuda.max_memory_allocated, reset before each variant is built.

Targets (GPU; on the CPU they read "not applicable (cpu-smoke)"):
  R-50 GFL inference fp16 >= 60 images/s at 800x1333; gfldet's latency <= 0.9x FCOS's, in fp32
  and in fp16; training step with AMP <= 0.9x FCOS's (AMP), peak memory <= FCOS's + 10 %; no
  NaN/inf in any output or loss; the resume exits 0 and trains epoch 2; demo AP > 0.3.

Exit status: 0 when every section ran (and, on a GPU, every target was met), 1 otherwise, 2
when there is no CUDA device and --cpu-smoke was not given. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from gfldet.core.files import write_json_atomic
from gfldet.core.runtime import resolve_device

from .gpu import SMOKE, Sizes, demo, infer, torchrun, train
from .gpu.device import cudnn_benchmark, environment

SECTIONS = {"infer": infer, "train": train, "torchrun": torchrun, "demo": demo}
TIMED = ("infer", "train")  # run with cudnn.benchmark; torchrun and demo run as gfldet runs
NOT_APPLICABLE = "not applicable (cpu-smoke)"
NO_CUDA = (
    "bench_gpu: no CUDA device is available (torch.cuda.is_available() is False); this script "
    "measures gfldet on a GPU. Run it with --cpu-smoke to check every section at tiny sizes on "
    "the CPU instead."
)

# name -> (where the value is: section, then keys into its results; comparison; limit).
TARGETS: dict[str, tuple[tuple[str, ...], str, Any]] = {
    "R-50 inference fp16 images/s": (
        ("infer", "models", "gfl_r50", "amp", "images_per_s"),
        ">=",
        60.0,
    ),
    "inference fp32 / FCOS": (("infer", "ratios", "gfl_r50/fcos_r50", "fp32"), "<=", 0.90),
    "inference fp16 / FCOS": (("infer", "ratios", "gfl_r50/fcos_r50", "amp"), "<=", 0.90),
    "train step AMP / FCOS AMP": (("train", "ratios", "s_per_iter", "amp"), "<=", 0.90),
    "train peak memory AMP / FCOS AMP": (("train", "ratios", "peak_memory", "amp"), "<=", 1.10),
    "no NaN/inf anywhere": (("*", "all_finite"), "==", True),
    "resume exits 0, trains epoch 2": (("torchrun", "resume_ok"), "==", True),
    "demo AP": (("demo", "AP"), ">", 0.30),
}
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": lambda v, x: v <= x,
    ">=": lambda v, x: v >= x,
    ">": lambda v, x: v > x,
    "==": lambda v, x: v == x,
}


def lookup(out: dict, path: tuple[str, ...]) -> Any:
    """The value at `path` (section, keys into its results); "*" as the section: the AND of
    that key over the sections that report it. None when not measured."""
    sections = out["sections"]
    if path[0] == "*":
        values = [s["results"].get(path[1]) for s in sections.values()]
        values = [v for v in values if v is not None]
        return all(values) if values else None
    node: Any = sections.get(path[0], {}).get("results")
    for key in path[1:]:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def check_targets(out: dict, smoke: bool) -> dict[str, dict]:
    """Every target's value and verdict: "met", "MISSED", "not measured" or, on the CPU,
    NOT_APPLICABLE."""
    res = {}
    for name, (path, op, limit) in TARGETS.items():
        value = lookup(out, path)
        if smoke:
            status = NOT_APPLICABLE
        elif value is None:
            status = "not measured"
        else:
            status = "met" if OPS[op](value, limit) else "MISSED"
        res[name] = {"value": value, "target": f"{op} {limit}", "status": status}
    return res


def report(out: dict) -> str:
    """The table printed at the end (also stored in the JSON)."""
    env, sec = out["environment"], out["sections"]
    gpu = env.get("gpu") or "no GPU"
    lines = [
        f"bench_gpu ({out['mode']}): {gpu}, driver {env.get('driver')}, torch {env['torch']}, "
        f"CUDA {env['cuda']}, cuDNN {env['cudnn']}, capability {env.get('capability')}; "
        f"{out['date']}"
    ]
    for name, section in SECTIONS.items():
        lines += section.report(sec.get(name, {}).get("results", {}))
    lines.append("\nsections:")
    for name, s in sec.items():
        err = f"  {s['error'].splitlines()[0][:100]}" if s["status"] == "failed" else ""
        lines.append(f"  {name:<10} {s['status']:<7} {s['seconds']:6.1f} s{err}")
    lines.append("\ntargets:")
    for name, t in out["targets"].items():
        v = t["value"]
        shown = "-" if v is None else (str(v) if isinstance(v, bool) else f"{v:.3f}")
        lines.append(f"  {name:<34} {shown:>8}  (target {t['target']})  {t['status']}")
    return "\n".join(lines)


def run_section(out: dict, name: str, fn: Callable[[dict], None], path: str | Path) -> None:
    """Runs one section into out["sections"][name] and rewrites the JSON; an exception is
    recorded (its text and the traceback's tail), never raised."""
    res: dict[str, Any] = {}
    entry = out["sections"][name] = {"status": "running", "seconds": 0.0, "results": res}
    write_json_atomic(out, path, indent=1)  # killed mid-section, the file names the section
    start = time.perf_counter()
    try:
        fn(res)
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failing section must not stop the others
        entry.update(
            status="failed",
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc()[-4000:],
        )
        print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
    entry["seconds"] = time.perf_counter() - start
    write_json_atomic(out, path, indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_gpu", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--out", default="bench_gpu.json", help="JSON results")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="every section at tiny sizes on the CPU: a smoke test, no targets",
    )
    p.add_argument(
        "--data",
        default="data/shapes",
        help="demo: the shapes dataset (made with `make demo`'s defaults if missing)",
    )
    p.add_argument(
        "--demo-seconds",
        type=float,
        default=None,
        help="demo: wall-clock cap of the training (default 120; cpu-smoke 0: one step)",
    )
    p.add_argument(
        "--no-cudnn-benchmark",
        action="store_true",
        help="infer, train: leave torch.backends.cudnn.benchmark off",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    sz = copy.deepcopy(SMOKE if a.cpu_smoke else Sizes())
    if a.demo_seconds is not None:
        sz.demo_seconds = a.demo_seconds
    if a.no_cudnn_benchmark:
        sz.cudnn_benchmark = False
    device = torch.device("cpu") if a.cpu_smoke else resolve_device("cuda")
    if a.cpu_smoke:
        # Tiny models on shared cores: one thread never waits on an OpenMP barrier behind
        # other processes' threads (two threads did, up to 50x slower steps).
        torch.set_num_threads(1)
    out: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks.bench_gpu", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu-smoke" if a.cpu_smoke else "gpu",
        "environment": environment(device),
        "settings": {"sections": a.only, "sizes": asdict(sz)},
        "sections": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchgpu_") as tmp_dir:
        tmp = Path(tmp_dir)
        runs: dict[str, Callable[[dict], None]] = {
            "infer": partial(infer.run, sz, device),
            "train": partial(train.run, sz, device),
            "torchrun": lambda res: torchrun.run(sz, device, res, tmp / "torchrun"),
            "demo": lambda res: demo.run(sz, device, res, tmp / "demo", Path(a.data)),
        }
        for name in SECTIONS:
            if name not in a.only:
                continue
            print(f"[{time.perf_counter() - start:5.0f} s] {name} ...", flush=True)
            timed = sz.cudnn_benchmark and name in TIMED
            with cudnn_benchmark(True) if timed else contextlib.nullcontext():
                run_section(out, name, runs[name], a.out)
    out["seconds"] = time.perf_counter() - start
    out["targets"] = check_targets(out, a.cpu_smoke)
    failed = [k for k, s in out["sections"].items() if s["status"] != "ok"]
    missed = [k for k, t in out["targets"].items() if t["status"] == "MISSED"]
    out.update(failed_sections=failed, missed_targets=missed, ok=not failed and not missed)
    out["table"] = report(out)
    print("\n" + out["table"])
    write_json_atomic(out, a.out, indent=1)
    print(f"\nwrote {a.out} ({out['seconds']:.0f} s)")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
