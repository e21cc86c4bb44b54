"""train: Sizes.train_iters training steps of the R-50 1x recipe (random init, no download),
batch Sizes.train_images of Sizes.train_hw with Sizes.train_boxes random boxes each, AMP on and
off: s/iter, peak memory, losses, GradScaler's final scale; the same for torchvision's FCOS
(and FCOS with gfldet's frozen recipe). gfldet's step is the trainer's own
(Trainer.train_step); every step starts from a pinned uint8 batch on the host, as the training
loader gives it."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from gfldet.config import load_config
from gfldet.training.optim import build_optimizer
from gfldet.training.trainer import Trainer

from ..models import (
    RECIPE,
    build_fcos,
    build_fcos_same_recipe,
    build_gfl_r50,
    input_size_check,
    layout,
    random_boxes,
)
from ..timing import measure, median, synced
from . import Sizes
from .device import amp_dtype, free_memory, peak_memory

VARIANTS = ("gfl_r50", "fcos_r50", "fcos_r50_same_recipe")


def peer_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: bool,
    images: Tensor,
    targets: list[dict],
    device: torch.device,
) -> dict[str, float]:
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
        pinned = (x.pin_memory() for x in (images, boxes, labels, peer_labels))
        images, boxes, labels, peer_labels = pinned
    ours = [
        {"boxes": boxes[i], "labels": labels[i], "img_size": (h, w), "pad_size": (h, w)}
        for i in range(b)
    ]
    theirs = [{"boxes": boxes[i], "labels": peer_labels[i]} for i in range(b)]
    return images, ours, theirs


def train_variant(
    name: str, amp: bool, sz: Sizes, device: torch.device, batch: tuple
) -> dict[str, Any]:
    """sz.train_iters steps of one model with AMP on or off; the median s/iter after the
    warm-up, peak memory (model, optimizer state and activations), losses, final scale."""
    images, ours, theirs = batch
    sets = ["model.num_classes=80", "model.backbone.pretrained=null"]
    cfg = load_config(RECIPE, [*sets, f"train.amp={str(amp).lower()}"])
    lr = cfg.train.lr * sz.train_images / cfg.train.base_batch_size
    free_memory(device)
    losses: list[float] = []
    if name == "gfl_r50":
        # The trainer's own step (autocast, the NaN check, GradScaler, the optimizer step) on
        # this model: a trainer built without data or a work dir.
        model = build_gfl_r50().train()
        trainer = Trainer.for_model(cfg, model, device, batch_size=sz.train_images)
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
        timed = {"step": synced(step, device)}
        times = measure(timed, sz.train_iters - sz.train_warmup, sz.train_warmup)["step"]
    peak = peak_memory(device)
    # The model goes with this frame; the next variant's free_memory drops it.
    return {
        "s_per_iter": median(times),
        "images_per_s": sz.train_images / median(times),
        "times": times,
        "peak_memory_bytes": peak,
        "peak_memory_mib": None if peak is None else peak / 2**20,
        "losses_finite": all(map(math.isfinite, losses)),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
        "layout": layout(model),
    }


def run(sz: Sizes, device: torch.device, res: dict) -> None:
    """Every (model, AMP on / off) variant in turn; a failing variant is recorded and the
    others still run (the section then fails)."""
    batch = train_batch(sz, device)
    h, w = sz.train_hw
    res.update(
        hw=[h, w],
        images=sz.train_images,
        boxes=sz.train_boxes,
        iters=sz.train_iters,
        warmup=sz.train_warmup,
        amp_dtype=str(amp_dtype(device)),
        variants={},
    )
    errors = []
    for name in VARIANTS:
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
                errors.append(key)
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


def report(train: dict[str, Any]) -> list[str]:
    """The training-step table (nothing when no variant ran)."""
    if not train.get("variants"):
        return []
    h, w = train["hw"]
    lines = [
        f"\ntraining step, {train['images']} x {h}x{w}, {train['boxes']} boxes, "
        f"median of {train['iters'] - train['warmup']} after {train['warmup']}:",
        f"  {'variant':<26} {'s/iter':>8} {'peak MiB':>9} {'scale':>8}  finite",
    ]
    for name, v in train["variants"].items():
        if "error" in v:
            lines.append(f"  {name:<26} failed: {v['error'][:80]}")
            continue
        mib = "-" if v["peak_memory_mib"] is None else f"{v['peak_memory_mib']:.0f}"
        scale = "-" if v["grad_scale"] is None else f"{v['grad_scale']:g}"
        lines.append(
            f"  {name:<26} {v['s_per_iter']:8.3f} {mib:>9} {scale:>8}  {v['losses_finite']}"
        )
    return lines
