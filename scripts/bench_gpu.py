"""gfldet's CUDA paths, checked and timed in one command for the few minutes a GPU is lent.

    python scripts/bench_gpu.py --out bench_gpu.json              # `make bench-gpu`
    python scripts/bench_gpu.py --only infer train --out g.json   # some of the sections
    python scripts/bench_gpu.py --cpu-smoke --out /tmp/g.json     # every section, tiny, CPU

Sections (each a minute or two on one GPU; --only picks some):
  infer     batch 1, R-50 GFL at 800x1333 (padded to 800x1344 as gfldet's loader pads), fp32
            and fp16 autocast, latency and images/s beside torchvision's FCOS R-50 on the same
            image; the same for GFLv2 R-50, and for gfldet-lite at 320x320 beside torchvision's
            SSDlite320-MobileNetV3. Random weights; gfldet's models prepared for inference
            (gfldet.model.fuse.prepare_for_inference); every input already on the device.
            Also a copy of gfldet's R-50 whose scores put ~3000 (box, class) pairs over the
            threshold, as a trained model's (bench.loaded_copy): NMS at work on the device.
  train     30 training steps of the R-50 1x recipe (random init, no download), batch 2 of
            800x1216 with 5 random boxes each, AMP on and off: s/iter, peak memory, losses,
            GradScaler's final scale; the same for torchvision's FCOS (and FCOS with gfldet's
            frozen recipe). gfldet's step is the trainer's own (Trainer.train_step); every step
            starts from a pinned uint8 batch on the host, as the training loader gives it.
  torchrun  `torchrun --nproc_per_node=1 -m gfldet train` (NCCL on CUDA, gloo on the CPU) with
            AMP, EMA and SyncBN on a tiny shapes set, then `gfldet eval`, then `--resume` to a
            second epoch: exit codes, durations, whether the process group was joined and
            whether the resume really continued.
  demo      the shapes demo (`make demo`'s config and data) trained on the device with
            train.amp=true for its own schedule or --demo-seconds, whichever ends first, then
            its val AP (the trainer's evaluation at the end of the run).

Reading the JSON (--out; rewritten after every section, so a crash or a timeout keeps what
was measured): "environment" (GPU, driver, torch, CUDA, cuDNN, NCCL, capability, python,
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
import gc
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench.py, not a package
import bench  # noqa: E402
from bench import (  # noqa: E402
    DEMO,
    LITE,
    PEER_CLASSES_LITE,
    RECIPE,
    RECIPE_V2,
    build_fcos,
    build_fcos_same_recipe,
    build_gfl_r50,
    count_candidates,
    input_size_check,
    layout,
    loaded_copy,
    measure,
    med,
    random_boxes,
    shapes_config,
)

from gfldet.config import load_config  # noqa: E402
from gfldet.core.checkpoint import load_checkpoint  # noqa: E402
from gfldet.core.files import write_json_atomic  # noqa: E402
from gfldet.core.runtime import resolve_device  # noqa: E402
from gfldet.data.synth import shapes_overrides, shapes_paths, write_shapes_dataset  # noqa: E402
from gfldet.data.transforms import collate_batch  # noqa: E402
from gfldet.model.fuse import prepare_for_inference  # noqa: E402
from gfldet.training.optim import build_optimizer  # noqa: E402
from gfldet.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("infer", "train", "torchrun", "demo")
NOT_APPLICABLE = "not applicable (cpu-smoke)"
NO_CUDA = (
    "bench_gpu: no CUDA device is available (torch.cuda.is_available() is False); this script "
    "measures gfldet on a GPU. Run it with --cpu-smoke to check every section at tiny sizes on "
    "the CPU instead."
)

# name -> (where the value is: section, then keys into its results; comparison; limit).
TARGETS: dict[str, tuple[tuple[str, ...], str, Any]] = {
    "R-50 inference fp16 images/s": (("infer", "models", "gfl_r50", "amp", "images_per_s"),
                                     ">=", 60.0),
    "inference fp32 / FCOS": (("infer", "ratios", "gfl_r50/fcos_r50", "fp32"), "<=", 0.90),
    "inference fp16 / FCOS": (("infer", "ratios", "gfl_r50/fcos_r50", "amp"), "<=", 0.90),
    "train step AMP / FCOS AMP": (("train", "ratios", "s_per_iter", "amp"), "<=", 0.90),
    "train peak memory AMP / FCOS AMP": (("train", "ratios", "peak_memory", "amp"), "<=", 1.10),
    "no NaN/inf anywhere": (("*", "all_finite"), "==", True),
    "resume exits 0, trains epoch 2": (("torchrun", "resume_ok"), "==", True),
    "demo AP": (("demo", "AP"), ">", 0.30),
}  # fmt: skip


def small_set(img: int, batch: int, workers: int) -> tuple[str, ...]:
    """--set overrides of the demo config for a small shapes set of img x img images."""
    return tuple(f"data.{split}.{key}" for split in ("train", "val") for key in (
        f"img_scale=[{img},{img}]", f"batch_size={batch}", f"num_workers={workers}"))  # fmt: skip


TORCHRUN_DATA = {"num_train": 32, "num_val": 8, "img_size": 128, "max_size": 80, "max_objects": 4}


@dataclass
class Sizes:
    """What each section runs: the GPU's defaults, or SMOKE's on the CPU."""

    infer_hw: tuple[int, int] = (800, 1333)
    lite_hw: tuple[int, int] = (320, 320)
    infer_repeats: int = 30
    infer_warmup: int = 5  # the first calls also pick cuDNN's algorithms
    train_hw: tuple[int, int] = (800, 1216)
    train_images: int = 2
    train_boxes: int = 5
    train_iters: int = 30  # per variant, warm-up included
    train_warmup: int = 5
    # torchrun: a tiny shapes set (write_shapes_dataset's arguments) and the run's overrides
    torchrun_data: dict = field(default_factory=lambda: dict(TORCHRUN_DATA))
    torchrun_set: tuple[str, ...] = small_set(128, 8, 1)
    demo_data: dict | None = None  # None: `make demo`'s set (--data, made when missing)
    demo_set: tuple[str, ...] = ()  # overrides of the demo config
    demo_seconds: float = 120.0  # wall-clock cap of the demo's training
    timeout_s: float = 300.0  # per torchrun subprocess
    cudnn_benchmark: bool = True  # infer and train (both contenders alike)


TINY = {"img_size": 64, "max_size": 40, "max_objects": 3}
SMOKE = Sizes(
    infer_hw=(64, 100), lite_hw=(64, 64), infer_repeats=2, infer_warmup=1,
    train_hw=(64, 96), train_iters=3, train_warmup=1,
    torchrun_data={"num_train": 8, "num_val": 4, **TINY}, torchrun_set=small_set(64, 4, 0),
    demo_data={"num_train": 12, "num_val": 4, **TINY},
    demo_set=(*small_set(64, 4, 0), "train.log_interval=1"),
    # A budget of 0 s: the deadline ends the run after its first step, deterministically.
    demo_seconds=0.0, timeout_s=600.0, cudnn_benchmark=False,
)  # fmt: skip


# -- helpers ----------------------------------------------------------------------------------
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


def timing(times: list[float], images: int) -> dict[str, Any]:
    """Median seconds per call, images/s at `images` per call, and the raw times."""
    m = med(times)
    return {"latency_s": m, "images_per_s": images / m, "times": times}


# -- inference --------------------------------------------------------------------------------
def compare_inference(
    fns: dict[str, Callable[[], Any]], heads: dict[str, nn.Module], device: torch.device,
    sz: Sizes, checks: list[Callable[[], contextlib.AbstractContextManager]],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Times every fn (interleaved, median of sz.infer_repeats after sz.infer_warmup) in fp32
    and under autocast ("amp": float16 on CUDA), inside a fresh context of every `checks`
    factory. Returns {model: {"fp32" | "amp": timing and "finite"}}."""
    res: dict[str, dict[str, Any]] = {k: {} for k in fns}
    for precision in ("fp32", "amp"):
        autocast = torch.autocast(device.type, dtype=amp_dtype(device), enabled=precision == "amp")
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(autocast)
            for check in checks:
                stack.enter_context(check())
            finite = {k: finite_run(fn, heads[k]) for k, fn in fns.items()}
            times = measure(
                {k: synced(fn, device) for k, fn in fns.items()}, sz.infer_repeats, sz.infer_warmup
            )
        for k in fns:
            res[k][precision] = {**timing(times[k], 1), "finite": finite[k]}
    return res


def ratios(models: dict[str, dict], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """{"a/b": {"fp32": latency a / latency b, "amp": ...}} for the pairs whose models ran."""
    out = {}
    for a, b in pairs:
        if a in models and b in models:
            out[f"{a}/{b}"] = {
                p: models[a][p]["latency_s"] / models[b][p]["latency_s"] for p in ("fp32", "amp")
            }
    return out


def bench_infer(sz: Sizes, device: torch.device, res: dict) -> None:
    """R-50 GFL and GFLv2 vs FCOS at sz.infer_hw, gfldet-lite vs SSDlite at sz.lite_hw."""
    h, w = sz.infer_hw
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    # Padded to data.size_divisor as gfldet's loader pads; torchvision pads inside its transform.
    batch, targets = collate_batch([(image, {"img_size": (h, w), "scale_factor": (1.0, 1.0)})])
    padded = tuple(batch.shape)
    images = batch.to(device).contiguous(memory_format=torch.channels_last)
    peer_in = [image.to(device).float() / 255]
    res.update(hw=[h, w], padded_hw=list(padded[-2:]), amp_dtype=str(amp_dtype(device)),
               repeats=sz.infer_repeats, warmup=sz.infer_warmup, skipped={})  # fmt: skip

    fns: dict[str, Callable[[], Any]] = {}
    heads: dict[str, nn.Module] = {}
    for name, recipe in (("gfl_r50", RECIPE), ("gflv2_r50", RECIPE_V2)):
        if name != "gfl_r50" and not recipe.is_file():
            res["skipped"][name] = f"config {recipe} not found"
            continue
        model = prepare_for_inference(build_gfl_r50(recipe).eval()).to(device)
        fns[name], heads[name] = partial(model.predict, images, targets), model.head
        if name == "gfl_r50":
            # Scores as a trained model's (bench.loaded_copy): the post-processing and NMS
            # then get the work they get in use, which random weights never give them.
            test_cfg = load_config(RECIPE, ["model.num_classes=80"]).model.test
            loaded = loaded_copy(model, images, targets, test_cfg)
            res["loaded_candidates"] = count_candidates(loaded, images, targets, test_cfg)
            fns["gfl_r50_loaded"] = partial(loaded.predict, images, targets)
            heads["gfl_r50_loaded"] = loaded.head
    fcos = build_fcos((h, w)).eval().to(device)
    fcos_cl = copy.deepcopy(fcos).to(memory_format=torch.channels_last)
    for name, model in (("fcos_r50", fcos), ("fcos_r50_channels_last", fcos_cl)):
        fns[name], heads[name] = partial(model, peer_in), model.head
    checks = [partial(input_size_check, m, padded, "fcos") for m in (fcos, fcos_cl)]
    res["models"] = compare_inference(fns, heads, device, sz, checks)
    pairs = [("gfl_r50", "fcos_r50"), ("gflv2_r50", "fcos_r50"),
             ("gfl_r50", "fcos_r50_channels_last")]  # fmt: skip
    res["ratios"] = ratios(res["models"], pairs)
    del fns, heads, fcos, fcos_cl
    free_memory(device)

    if not LITE.is_file():
        res["skipped"]["lite"] = f"config {LITE} not found"
    else:
        res["lite"] = bench_lite(sz, device)
    res["all_finite"] = all(
        v["finite"] for group in (res["models"], res.get("lite", {}).get("models", {}))
        for model in group.values() for v in model.values()
    )  # fmt: skip


def bench_lite(sz: Sizes, device: torch.device) -> dict[str, Any]:
    """gfldet-lite (prepared) vs torchvision's SSDlite320-MobileNetV3, batch 1, same image."""
    h, w = sz.lite_hw
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    lite = prepare_for_inference(build_gfl_r50(LITE).eval()).to(device)
    images = image[None].to(device).contiguous(memory_format=torch.channels_last)
    meta = [{"img_size": (h, w)}]
    torch.manual_seed(0)
    ssd = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES_LITE
    ).eval().to(device)  # fmt: skip
    peer_in = [image.to(device).float() / 255]
    fns = {"gfl_lite": partial(lite.predict, images, meta), "ssdlite": partial(ssd, peer_in)}
    models = compare_inference(fns, {"gfl_lite": lite.head, "ssdlite": ssd.head}, device, sz, [])
    return {"hw": [h, w], "models": models, "ratios": ratios(models, [("gfl_lite", "ssdlite")])}


# -- training ---------------------------------------------------------------------------------
class StepTrainer(Trainer):
    """The trainer's own step (Trainer.train_step: autocast, the NaN check, GradScaler, the
    optimizer step) on a model built here: Trainer.__init__ reads a dataset and makes a work
    dir, neither of which a step benchmark has. Sets what train_step reads, as __init__ does."""

    def __init__(self, cfg: dict, model: nn.Module, device: torch.device, lr: float) -> None:
        t = cfg.train
        self.cfg, self.device, self.model, self.ema = cfg, device, model, None
        self.optimizer = build_optimizer(model, t, lr)
        self.amp, self.amp_dtype = bool(t.amp), amp_dtype(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and device.type == "cuda")
        self.epoch = self.iter = 0
        self.last_checkpoint = None


def peer_step(
    model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp: bool,
    images: Tensor, targets: list[dict], device: torch.device,
) -> dict[str, float]:  # fmt: skip
    """One training step of a torchvision detector as Trainer.train_step does gfldet's: the
    pinned uint8 batch [B, 3, H, W] to the device, autocast, GradScaler, SGD. Returns the
    losses (reading them synchronises, as the trainer's NaN check does)."""
    images = images.to(device, non_blocking=True)
    inputs = [im.float() / 255 for im in images]  # torchvision's API: float 0..1 [3, H, W]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
        losses = model(inputs, targets)
    values = torch.stack([v.detach().float() for v in losses.values()])
    opt.zero_grad(set_to_none=True)
    scaler.scale(sum(losses.values())).backward()
    scaler.step(opt)
    scaler.update()
    return dict(zip(losses, values.tolist()))


def train_batch(sz: Sizes, device: torch.device) -> tuple[Tensor, list[dict], list[dict]]:
    """A batch as the training loader gives it (pinned on CUDA): uint8 images [B, 3, H, W],
    gfldet's targets (boxes [N, 4] xyxy, labels 0..79) and torchvision's (labels 1..80)."""
    h, w = sz.train_hw
    b, n = sz.train_images, sz.train_boxes
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    boxes, labels = random_boxes(gen, (b, n), (h, w)), torch.randint(0, 80, (b, n), generator=gen)
    peer_labels = labels + 1
    if device.type == "cuda":  # non_blocking copies need page-locked memory
        images, boxes, labels, peer_labels = (
            x.pin_memory() for x in (images, boxes, labels, peer_labels))  # fmt: skip
    ours = [{"boxes": boxes[i], "labels": labels[i], "img_size": (h, w), "pad_size": (h, w)}
            for i in range(b)]  # fmt: skip
    theirs = [{"boxes": boxes[i], "labels": peer_labels[i]} for i in range(b)]
    return images, ours, theirs


def train_variant(
    name: str, amp: bool, sz: Sizes, device: torch.device, batch: tuple
) -> dict[str, Any]:
    """sz.train_iters steps of one model with AMP on or off; the median s/iter after the
    warm-up, peak memory (model, optimizer state and activations), losses, final scale."""
    images, ours, theirs = batch
    cfg = load_config(RECIPE, ["model.num_classes=80", "model.backbone.pretrained=null",
                               f"train.amp={str(amp).lower()}"])  # fmt: skip
    lr = cfg.train.lr * sz.train_images / cfg.train.base_batch_size
    free_memory(device)
    losses: list[float] = []
    if name == "gfl_r50":
        model = build_gfl_r50().train().to(device)
        trainer = StepTrainer(cfg, model, device, lr)
        scaler = trainer.scaler

        def step() -> None:
            losses.append(sum(trainer.train_step(images, ours, lr).values()))

        check = contextlib.nullcontext()
    else:
        builder = build_fcos if name == "fcos_r50" else build_fcos_same_recipe
        model = builder(sz.train_hw).train().to(device)
        opt = build_optimizer(model, cfg.train, lr)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

        def step() -> None:
            out = peer_step(model, opt, scaler, amp, images, theirs, device)
            losses.append(sum(out.values()))

        check = input_size_check(model, tuple(images.shape), name)
    with check:
        times = measure(
            {"step": synced(step, device)}, sz.train_iters - sz.train_warmup, sz.train_warmup
        )["step"]
    peak = peak_memory(device)
    out = {
        "s_per_iter": med(times), "images_per_s": sz.train_images / med(times), "times": times,
        "peak_memory_bytes": peak, "peak_memory_mib": None if peak is None else peak / 2**20,
        "losses_finite": all(map(math.isfinite, losses)), "loss_first": losses[0],
        "loss_last": losses[-1], "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
        "layout": layout(model),
    }  # fmt: skip
    return out  # the model goes with this frame; the next variant's free_memory drops it


def bench_train(sz: Sizes, device: torch.device, res: dict) -> None:
    """Every (model, AMP on / off) variant in turn; a failing variant is recorded and the
    others still run (the section then fails)."""
    batch = train_batch(sz, device)
    h, w = sz.train_hw
    res.update(hw=[h, w], images=sz.train_images, boxes=sz.train_boxes, iters=sz.train_iters,
               warmup=sz.train_warmup, amp_dtype=str(amp_dtype(device)), variants={})  # fmt: skip
    errors = []
    for name in ("gfl_r50", "fcos_r50", "fcos_r50_same_recipe"):
        for amp in (True, False):
            key = f"{name}_{'amp' if amp else 'fp32'}"
            print(f"  train {key} ...", flush=True)
            try:
                res["variants"][key] = train_variant(name, amp, sz, device, batch)
            except Exception as e:  # noqa: BLE001 - recorded; the other variants still run
                res["variants"][key] = {
                    "error": f"{type(e).__name__}: {e}",
                    "losses_finite": not isinstance(e, FloatingPointError),
                }
                errors.append(key)  # fmt: skip
                free_memory(device)
    v = res["variants"]
    res["ratios"] = {"s_per_iter": {}, "peak_memory": {}}
    for p in ("amp", "fp32"):
        a, b = v.get(f"gfl_r50_{p}", {}), v.get(f"fcos_r50_{p}", {})
        if "s_per_iter" in a and "s_per_iter" in b:
            res["ratios"]["s_per_iter"][p] = a["s_per_iter"] / b["s_per_iter"]
            if a["peak_memory_bytes"] and b["peak_memory_bytes"]:
                res["ratios"]["peak_memory"][p] = a["peak_memory_bytes"] / b["peak_memory_bytes"]
    res["all_finite"] = all(x.get("losses_finite", False) for x in v.values())
    if errors:
        raise RuntimeError(f"train: variants failed: {', '.join(errors)}")


# -- torchrun ---------------------------------------------------------------------------------
def run_command(cmd: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Runs `cmd` in the repository root in its own process group (killed whole on timeout:
    torchrun's workers too). Returns its command line, exit code, seconds and output tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc, output = None, output + f"\n[bench_gpu: killed after {timeout:g} s]"
    return {"command": shlex.join(cmd), "returncode": rc,
            "seconds": time.perf_counter() - start, "output_tail": output[-3000:]}  # fmt: skip


def bench_torchrun(sz: Sizes, device: torch.device, res: dict, tmp: Path) -> None:
    """Train one epoch, evaluate, resume to epoch 2, each through the CLI under torchrun."""
    paths = write_shapes_dataset(tmp / "shapes", **sz.torchrun_data)
    work = tmp / "work"
    sets = [
        *shapes_overrides(paths),
        f"device={device.type}", "train.amp=true", "train.ema=true", "train.sync_bn=true",
        "train.eval_interval=0", "train.log_interval=1", "train.warmup_iters=5",
        *sz.torchrun_set,
    ]  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node=1", "-m", "gfldet"]  # fmt: skip
    config = ["--config", str(DEMO)]
    commands = {
        "train": [*launch, "train", *config, "--work-dir", str(work), "--set", *sets,
                  "train.epochs=1"],
        "eval": [*launch, "eval", *config, "--checkpoint", str(work / "latest.pth"),
                 "--out-dir", str(work / "eval"), "--set", *sets],
        "resume": [*launch, "train", *config, "--work-dir", str(work), "--resume", "--set",
                   *sets, "train.epochs=2"],
    }  # fmt: skip
    env = dict(os.environ)
    if device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # one process on shared cores
    res.update(backend="nccl" if device.type == "cuda" else "gloo", runs={})
    for name, cmd in commands.items():
        print(f"  torchrun {name} ...", flush=True)
        run = res["runs"][name] = run_command(cmd, sz.timeout_s, env)
        if run["returncode"] != 0:
            raise RuntimeError(f"torchrun {name} exited {run['returncode']}:\n"
                               f"{run['output_tail'][-1500:]}")  # fmt: skip

    # The trainer converts to SyncBN, or warns that it cannot, only inside a process group.
    said = res["runs"]["train"]["output_tail"] + (work / "train.log").read_text()
    res["process_group_joined"] = any(
        s in said for s in ("BatchNorm synchronised over 1 process", "SyncBatchNorm needs CUDA")
    )
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    res["eval_AP"] = metrics.get("AP")
    state = load_checkpoint(work / "latest.pth")
    records = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    res.update(
        checkpoints=sorted(p.name for p in work.glob("*.pth")),
        latest={k: state.get(k) for k in ("epoch", "iter", "world_size")},
        epochs_logged=sorted({r["epoch"] for r in records if "loss" in r}),
        resumed_logged="resumed from" in (work / "train.log").read_text(),
        scaler_state=bool(state.get("scaler")), ema_in_checkpoint="ema" in state,
        all_finite=bool(losses) and all(map(math.isfinite, losses)),
    )  # fmt: skip
    res["resume_ok"] = (
        res["runs"]["resume"]["returncode"] == 0 and res["resumed_logged"]
        and state.get("epoch") == 2 and (work / "epoch_2.pth").is_file()
        and res["epochs_logged"] == [1, 2]
    )  # fmt: skip
    if not (res["resume_ok"] and res["process_group_joined"]):
        raise RuntimeError(
            f"torchrun: resume_ok {res['resume_ok']} (latest {res['latest']}, epochs logged "
            f"{res['epochs_logged']}), process_group_joined {res['process_group_joined']}"
        )


# -- demo -------------------------------------------------------------------------------------
class BudgetTrainer(Trainer):
    """The trainer, also stopped at a wall-clock deadline the way train.max_iters stops it
    (the partial epoch is saved and evaluated as the last one), after one step at least."""

    def __init__(self, cfg: dict, seconds: float) -> None:
        super().__init__(cfg)
        self.deadline = time.monotonic() + seconds

    def _max_iters_reached(self) -> bool:
        late = self.iter > 0 and time.monotonic() >= self.deadline
        return super()._max_iters_reached() or late


def bench_demo(sz: Sizes, device: torch.device, res: dict, tmp: Path, data: Path) -> None:
    """The demo config, on the device with AMP, trained then evaluated on its val split."""
    if sz.demo_data is not None:
        data = tmp / "shapes"
        write_shapes_dataset(data, **sz.demo_data)
    elif not shapes_paths(data)["train_ann"].is_file():
        print(f"  generating the shapes dataset in {data} ...", flush=True)
        write_shapes_dataset(data, workers=max(1, min(8, os.cpu_count() or 1)))
    sets = [f"device={device.type}", "train.amp=true", f"work_dir={tmp / 'demo'}", *sz.demo_set]
    cfg = shapes_config(data, tuple(sets))
    start = time.perf_counter()
    try:
        trainer = BudgetTrainer(cfg, sz.demo_seconds)
        ready = time.perf_counter()
        planned = cfg.train.epochs * len(trainer.train_loader)
        metrics = trainer.fit()
    finally:
        # The run's log handlers write into a temporary folder: close them with it.
        log = logging.getLogger("gfldet")
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)
    records = [json.loads(x) for x in (trainer.work_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    res.update(
        data=str(data), images=len(trainer.train_set), epochs=trainer.epoch,
        iterations=trainer.iter, planned_iterations=planned, budget_s=sz.demo_seconds,
        stopped_by_budget=trainer.iter < min(planned, cfg.train.max_iters or planned),
        setup_s=ready - start, train_and_eval_s=time.perf_counter() - ready,
        AP=metrics.get("AP"), AP50=metrics.get("AP50"), AP75=metrics.get("AP75"),
        loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
        all_finite=bool(losses) and all(map(math.isfinite, losses)),
    )  # fmt: skip
    del trainer
    free_memory(device)
    ap = res["AP"]
    if not (isinstance(ap, float) and math.isfinite(ap)):
        raise RuntimeError(f"demo: no AP from the evaluation (metrics: {metrics})")


# -- report -----------------------------------------------------------------------------------
def nvidia_smi() -> dict[str, str] | None:
    """Name, driver and memory of GPU 0 from nvidia-smi, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    keys = ("name", "driver_version", "memory.total")
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={','.join(keys)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
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
    """The machine and the software: bench.machine() plus CUDA, cuDNN, NCCL and the GPU."""
    env: dict[str, Any] = {
        **bench.machine(), "device": str(device), "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        # TF32 (Ampere and later): torch's defaults, the same for every contender
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        smi = nvidia_smi()
        env.update(
            gpu=props.name, capability=list(torch.cuda.get_device_capability(device)),
            gpu_memory_gib=props.total_memory / 2**30,
            driver=smi["driver_version"] if smi else None, nvidia_smi=smi,
            nccl=nccl_version(),
        )  # fmt: skip
    return env


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
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "<=": lambda v, x: v <= x, ">=": lambda v, x: v >= x, ">": lambda v, x: v > x,
        "==": lambda v, x: v == x,
    }  # fmt: skip
    res = {}
    for name, (path, op, limit) in TARGETS.items():
        value = lookup(out, path)
        if smoke:
            status = NOT_APPLICABLE
        elif value is None:
            status = "not measured"
        else:
            status = "met" if ops[op](value, limit) else "MISSED"
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
    infer = sec.get("infer", {}).get("results", {})
    if infer.get("models"):
        h, w = infer["hw"]
        lines.append(
            f"\ninference, batch 1, {h}x{w} (padded {infer['padded_hw']}), median of "
            f"{infer['repeats']} after {infer['warmup']}; amp = {infer['amp_dtype']}:"
        )
        lines.append(f"  {'model':<26} {'fp32 ms':>9} {'img/s':>8} {'amp ms':>9} {'img/s':>8}")
        groups = [infer["models"], infer.get("lite", {}).get("models", {})]
        for name, m in ((k, v) for g in groups for k, v in g.items()):
            f, a = m["fp32"], m["amp"]
            lines.append(f"  {name:<26} {f['latency_s'] * 1e3:9.2f} {f['images_per_s']:8.1f} "
                         f"{a['latency_s'] * 1e3:9.2f} {a['images_per_s']:8.1f}")  # fmt: skip
        for k, v in infer.get("skipped", {}).items():
            lines.append(f"  {k}: skipped ({v})")
    train = sec.get("train", {}).get("results", {})
    if train.get("variants"):
        h, w = train["hw"]
        lines.append(
            f"\ntraining step, {train['images']} x {h}x{w}, {train['boxes']} boxes, "
            f"median of {train['iters'] - train['warmup']} after {train['warmup']}:"
        )
        lines.append(f"  {'variant':<26} {'s/iter':>8} {'peak MiB':>9} {'scale':>8}  finite")
        for name, v in train["variants"].items():
            if "error" in v:
                lines.append(f"  {name:<26} failed: {v['error'][:80]}")
                continue
            mib = "-" if v["peak_memory_mib"] is None else f"{v['peak_memory_mib']:.0f}"
            scale = "-" if v["grad_scale"] is None else f"{v['grad_scale']:g}"
            lines.append(f"  {name:<26} {v['s_per_iter']:8.3f} {mib:>9} {scale:>8}  "
                         f"{v['losses_finite']}")  # fmt: skip
    run = sec.get("torchrun", {}).get("results", {})
    if run.get("runs"):
        steps = ", ".join(f"{k} exit {r['returncode']} ({r['seconds']:.0f} s)"
                          for k, r in run["runs"].items())  # fmt: skip
        lines.append(f"\ntorchrun --nproc_per_node=1 ({run['backend']}): {steps}; process "
                     f"group joined {run.get('process_group_joined')}, resume ok "
                     f"{run.get('resume_ok')}")  # fmt: skip
    demo = sec.get("demo", {}).get("results", {})
    if "AP" in demo:
        lines.append(f"\ndemo (shapes, AMP): AP {demo['AP']:.3f} after {demo['iterations']} "
                     f"iterations, {demo['epochs']} epoch(s), {demo['train_and_eval_s']:.0f} s "
                     f"training + evaluation (budget {demo['budget_s']:g} s, stopped by it: "
                     f"{demo['stopped_by_budget']})")  # fmt: skip
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
        entry.update(status="failed", error=f"{type(e).__name__}: {e}",
                     traceback=traceback.format_exc()[-4000:])  # fmt: skip
        print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
    entry["seconds"] = time.perf_counter() - start
    write_json_atomic(out, path, indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", default="bench_gpu.json", help="JSON results")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
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
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="infer, train: leave torch.backends.cudnn.benchmark off")  # fmt: skip
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
        "command": shlex.join(["python", "scripts/bench_gpu.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu-smoke" if a.cpu_smoke else "gpu",
        "environment": environment(device),
        "settings": {"sections": a.only, "sizes": asdict(sz)},
        "sections": {},
    }  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchgpu_") as tmp_dir:
        tmp = Path(tmp_dir)
        sections: dict[str, Callable[[dict], None]] = {
            "infer": partial(bench_infer, sz, device),
            "train": partial(bench_train, sz, device),
            "torchrun": lambda res: bench_torchrun(sz, device, res, tmp / "torchrun"),
            "demo": lambda res: bench_demo(sz, device, res, tmp / "demo", Path(a.data)),
        }
        for name in SECTIONS:
            if name not in a.only:
                continue
            print(f"[{time.perf_counter() - start:5.0f} s] {name} ...", flush=True)
            # The timed sections only: torchrun and demo run as gfldet runs (it never sets it).
            timed = sz.cudnn_benchmark and name in ("infer", "train")
            with cudnn_benchmark(True) if timed else contextlib.nullcontext():
                run_section(out, name, sections[name], a.out)
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
