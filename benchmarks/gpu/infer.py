"""infer: batch 1, R-50 GFL at Sizes.infer_hw (padded to a multiple of 32 as gfldet's loader
pads), fp32 and fp16 autocast, latency and images/s beside torchvision's FCOS R-50 on the same
image; the same for GFLv2 R-50, and for gfldet-lite at Sizes.lite_hw beside torchvision's
SSDlite320-MobileNetV3. Random weights; gfldet's models prepared for inference
(gfldet.model.fuse.prepare_for_inference); every input already on the device. Also a copy of
gfldet's R-50 whose scores put ~3000 (box, class) pairs over the threshold, as a trained
model's (benchmarks.models.loaded_copy): NMS at work on the device."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torchvision
from torch import nn

from gfldet.config import load_config
from gfldet.data.transforms import collate_batch
from gfldet.model.fuse import prepare_for_inference

from ..models import (
    LITE,
    PEER_CLASSES_LITE,
    RECIPE,
    RECIPE_V2,
    build_fcos,
    build_gfl_r50,
    count_candidates,
    input_size_check,
    loaded_copy,
)
from ..timing import latency, measure, synced
from . import Sizes
from .device import amp_dtype, finite_run, free_memory


def compare_inference(
    fns: dict[str, Callable[[], Any]],
    heads: dict[str, nn.Module],
    device: torch.device,
    sz: Sizes,
    checks: list[Callable[[], contextlib.AbstractContextManager]],
) -> dict[str, dict[str, Any]]:
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
            timed = {k: synced(fn, device) for k, fn in fns.items()}
            times = measure(timed, sz.infer_repeats, sz.infer_warmup)
        for k in fns:
            res[k][precision] = {**latency(times[k], 1), "finite": finite[k]}
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


def run(sz: Sizes, device: torch.device, res: dict) -> None:
    """R-50 GFL and GFLv2 vs FCOS at sz.infer_hw, gfldet-lite vs SSDlite at sz.lite_hw."""
    h, w = sz.infer_hw
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    # Padded to data.size_divisor as gfldet's loader pads; torchvision pads inside its transform.
    batch, targets = collate_batch([(image, {"img_size": (h, w), "scale_factor": (1.0, 1.0)})])
    padded = tuple(batch.shape)
    images = batch.to(device).contiguous(memory_format=torch.channels_last)
    peer_in = [image.to(device).float() / 255]
    res.update(
        hw=[h, w],
        padded_hw=list(padded[-2:]),
        amp_dtype=str(amp_dtype(device)),
        repeats=sz.infer_repeats,
        warmup=sz.infer_warmup,
        skipped={},
    )

    fns: dict[str, Callable[[], Any]] = {}
    heads: dict[str, nn.Module] = {}
    for name, recipe in (("gfl_r50", RECIPE), ("gflv2_r50", RECIPE_V2)):
        if name != "gfl_r50" and not recipe.is_file():
            res["skipped"][name] = f"config {recipe} not found"
            continue
        model = prepare_for_inference(build_gfl_r50(recipe).eval()).to(device)
        fns[name], heads[name] = partial(model.predict, images, targets), model.head
        if name == "gfl_r50":
            # Scores as a trained model's (models.loaded_copy): the post-processing and NMS
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
    pairs = [("gfl_r50", "fcos_r50"), ("gflv2_r50", "fcos_r50")]
    pairs.append(("gfl_r50", "fcos_r50_channels_last"))
    res["ratios"] = ratios(res["models"], pairs)
    del fns, heads, fcos, fcos_cl
    free_memory(device)

    if not LITE.is_file():
        res["skipped"]["lite"] = f"config {LITE} not found"
    else:
        res["lite"] = run_lite(sz, device)
    groups = (res["models"], res.get("lite", {}).get("models", {}))
    res["all_finite"] = all(
        v["finite"] for group in groups for model in group.values() for v in model.values()
    )


def run_lite(sz: Sizes, device: torch.device) -> dict[str, Any]:
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
    )
    ssd = ssd.eval().to(device)
    peer_in = [image.to(device).float() / 255]
    fns = {"gfl_lite": partial(lite.predict, images, meta), "ssdlite": partial(ssd, peer_in)}
    models = compare_inference(fns, {"gfl_lite": lite.head, "ssdlite": ssd.head}, device, sz, [])
    return {"hw": [h, w], "models": models, "ratios": ratios(models, [("gfl_lite", "ssdlite")])}


def report(infer: dict[str, Any]) -> list[str]:
    """The inference table (nothing when no model ran)."""
    if not infer.get("models"):
        return []
    h, w = infer["hw"]
    lines = [
        f"\ninference, batch 1, {h}x{w} (padded {infer['padded_hw']}), median of "
        f"{infer['repeats']} after {infer['warmup']}; amp = {infer['amp_dtype']}:",
        f"  {'model':<26} {'fp32 ms':>9} {'img/s':>8} {'amp ms':>9} {'img/s':>8}",
    ]
    groups = [infer["models"], infer.get("lite", {}).get("models", {})]
    for name, m in ((k, v) for g in groups for k, v in g.items()):
        f, a = m["fp32"], m["amp"]
        lines.append(
            f"  {name:<26} {f['latency_s'] * 1e3:9.2f} {f['images_per_s']:8.1f} "
            f"{a['latency_s'] * 1e3:9.2f} {a['images_per_s']:8.1f}"
        )
    for k, v in infer.get("skipped", {}).items():
        lines.append(f"  {k}: skipped ({v})")
    return lines
