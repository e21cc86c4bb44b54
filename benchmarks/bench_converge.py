"""Accuracy per CPU-minute: gfldet beside torchvision's detectors, trained for the same time.

    python -m benchmarks.bench_converge --out bench_converge.json        # `make bench-converge`
    python -m benchmarks.bench_converge --peer ssdlite --out bench_converge_lite.json
    python -m benchmarks.bench_converge --quick --minutes 0.2 --data DIR  # smoke run

--peer fcos (default): gfldet's demo model beside FCOS on the same backbone, as below.
--peer ssdlite: gfldet-lite (configs/gfl_lite_shapes.yaml) beside torchvision's
ssdlite320_mobilenet_v3_large (random init, its own 320x320 resize, anchors, losses and
post-processing; labels shifted by one for its background class), with the same loader,
optimizer, schedule, budget and evaluator. Both are real-time CPU models, trained from scratch.

Both detectors get the demo config's ResNet + FPN (configs/shapes_demo.yaml; the same module
code, the same initial weights), the same training loader (data order, augmentation, batch,
workers), the same optimizer and the same wall-clock budget (--minutes each, counted from the
first training step and including data loading), then the same COCO evaluator
(gfldet.evaluation.evaluator.coco_evaluate) on the shapes val set. What differs is the method:
GFL's head, ATSS, QFL + DFL + GIoU against FCOS's head, centre sampling, focal + GIoU +
centerness losses.

FCOS is torchvision's `FCOS` built from parts: the backbone is gfldet's ResNet + FPN wrapped to
return an OrderedDict of P3-P7 (`GfldetBackbone`); the anchor generator has one square anchor
per location of side = the level's stride, as torchvision's FCOS defaults (FCOS uses the anchor
only as a point and as the unit of its per-level size ranges); the head has the demo's tower
depth, width and GroupNorm groups and prior_prob; the test settings (nms_pre, score threshold,
NMS IoU, detections per image) are gfldet's.

The budget (benchmarks.budget): gfldet trains with its own Trainer, each step's learning rate
from the shared time-based schedule, stopped once the budget is spent; the peer trains in
`train_peer`, a loop of the same steps. The schedule: the config's linear warm-up over
train.warmup_iters iterations, then train.lr (scaled to the batch as the trainer does), times
train.lr_gamma for the last (1 - --decay-at) of the budget.

A comparison is a function of the parsed arguments that trains its contenders and returns
what the JSON records of it, its rows {name: {"iterations", "train_s", COCO metrics}} under
"results" (`compare_with_peer` here). `train_gfldet` trains any gfldet config for the budget
and scores it on that config's val split, so a comparison of gfldet configs (two recipes, or
a user's dataset with a preset) is one more such function beside it, picked in `main`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import platform
import sys
import warnings
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import (
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)

from gfldet.config import load_config
from gfldet.core.files import write_json_atomic
from gfldet.core.records import detections_to_coco
from gfldet.data.loader import build_dataloader
from gfldet.data.synth import shapes_overrides
from gfldet.evaluation.evaluator import coco_evaluate, predict_dataset
from gfldet.model.build import build_model
from gfldet.training.optim import build_optimizer

from .budget import Budget, BudgetTrainer
from .models import DEMO, LITE_SHAPES, QUICK_DATA, ensure_shapes
from .timing import machine

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# --quick: tiny images, no worker processes (the data of a smoke test is tiny too).
QUICK = QUICK_DATA
# Every contender trains until the budget ends it, evaluated once at the end by this script.
BUDGET_RUN = [
    "train.epochs=1000000",
    "train.max_iters=null",
    "train.eval_interval=0",
    "train.checkpoint_interval=1000000",
    "train.ema=false",
    "train.amp=false",
]


class GfldetBackbone(nn.Module):
    """gfldet's ResNet + FPN as a torchvision detection backbone.

    forward: normalised images [B, 3, H, W] -> OrderedDict {"p3": [B, F, H/8, W/8], ...,
    "p7": [B, F, H/128, W/128]}; `out_channels` = F, as torchvision's detectors expect.
    """

    def __init__(self, body: nn.Module, neck: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body, self.neck, self.out_channels = body, neck, out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.neck(self.body(x))
        return OrderedDict((f"p{i + 3}", f) for i, f in enumerate(feats))


def build_fcos_on_gfldet(cfg: Any) -> FCOS:
    """torchvision's FCOS on the backbone and FPN that gfldet builds for `cfg` (same seed, so
    the same initial weights), with a head of the same depth, width and GroupNorm groups."""
    m, h = cfg.model, cfg.model.head
    width = m.neck.out_channels
    if h.feat_channels != width:
        raise ValueError(
            f"FCOS's towers are as wide as the FPN ({width}); model.head.feat_channels is "
            f"{h.feat_channels}: set them equal for a like-for-like comparison"
        )
    torch.manual_seed(cfg.seed)
    gfl = build_model(cfg.model)
    n, convs = m.num_classes, h.stacked_convs
    norm = partial(nn.GroupNorm, h.num_groups)
    head = FCOSHead(width, 1, n, num_convs=0)  # its towers are replaced just below
    head.classification_head = FCOSClassificationHead(width, 1, n, convs, h.prior_prob, norm)
    head.regression_head = FCOSRegressionHead(width, 1, convs, norm)
    strides = gfl.strides
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    scale, test = cfg.data.train.img_scale, m.test
    return FCOS(
        GfldetBackbone(gfl.backbone, gfl.neck, width),
        n,
        min_size=min(scale),
        max_size=max(scale),
        image_mean=[v / 255 for v in cfg.model.mean],
        image_std=[v / 255 for v in cfg.model.std],
        anchor_generator=anchors,
        head=head,
        score_thresh=test.score_thr,
        nms_thresh=test.nms_iou,
        detections_per_img=test.max_per_img,
        topk_candidates=test.nms_pre,
    )


def to_peer(
    images: Tensor, targets: list[dict], offset: int = 0
) -> tuple[list[Tensor], list[dict]]:
    """gfldet's batch (uint8 [B, 3, Hp, Wp], padded) -> torchvision's: unpadded float 0..1
    images [3, h, w] and {"boxes", "labels"} targets (labels 0..C-1 as gfldet's, + offset)."""
    imgs = [
        im[:, : t["img_size"][0], : t["img_size"][1]].float() / 255
        for im, t in zip(images, targets)
    ]
    peer = [{"boxes": t["boxes"], "labels": t["labels"] + offset} for t in targets if "boxes" in t]
    return imgs, peer


def train_peer(
    model: nn.Module, cfg: Any, loader: Any, budget: Budget, base_lr: float, offset: int = 0
) -> int:
    """The trainer's steps for a torchvision detector until the budget is spent; returns the
    iterations. `offset` is added to the labels (1 for detectors with a background class 0)."""
    t = cfg.train
    opt = build_optimizer(model, t, base_lr)
    model.train()
    it, epoch = 0, 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        for images, targets in loader:
            if not targets:
                continue
            for g in opt.param_groups:
                g["lr"] = budget.lr(t, base_lr, it)
            losses = model(*to_peer(images, targets, offset))
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"peer: non-finite loss at iteration {it + 1}: {losses}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            it += 1
            if budget.spent():
                return it
        epoch += 1


@torch.inference_mode()
def predict_peer(model: nn.Module, loader: Any, cat_ids: list[int], offset: int = 0) -> list[dict]:
    """COCO results of a torchvision detector on the loader's images, in original pixels."""
    model.eval()
    results = []
    for images, targets in loader:
        for t, det in zip(targets, model(to_peer(images, targets)[0])):
            sx, sy = t.get("scale_factor", (1.0, 1.0))
            boxes = det["boxes"] / det["boxes"].new_tensor([sx, sy, sx, sy])
            det = {**det, "boxes": boxes, "labels": det["labels"] - offset}
            keep = (det["labels"] >= 0) & (det["labels"] < len(cat_ids))
            det = {k: v[keep] for k, v in det.items()}
            results.extend(detections_to_coco(int(t["image_id"]), det, cat_ids))
    return results


def score(ds: Any, results: list[dict]) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = coco_evaluate(ds.coco, results, ds.class_names, ds.cat_ids, None, plots=False)
    return {k: metrics[k] for k in METRICS}


def train_gfldet(cfg: Any, seconds: float, decay_at: float) -> tuple[dict, BudgetTrainer]:
    """gfldet's Trainer on `cfg` for the budget, then its COCO metrics on the val split.
    Returns its row and the trainer (its data, device and learning rate serve the peer)."""
    trainer = BudgetTrainer(cfg, Budget(seconds, decay_at), schedule=True)
    trainer.fit()
    train_s = trainer.budget.elapsed()
    val_set = trainer.val_set
    val_loader = build_dataloader(
        val_set,
        cfg.data.val.batch_size,
        cfg.data.val.num_workers,
        False,
        size_divisor=cfg.data.size_divisor,
    )
    results = predict_dataset(
        trainer.model, val_loader, trainer.device, progress=False, cat_ids=val_set.cat_ids
    )
    return {"iterations": trainer.iter, "train_s": train_s, **score(val_set, results)}, trainer


def compare_with_peer(a: argparse.Namespace) -> dict[str, Any]:
    """gfldet (a.config, or the demo / lite config for a.peer) on the shapes data, then a.peer
    (torchvision's FCOS on gfldet's backbone, or SSDlite) on the same loader, schedule and
    budget. Returns what the JSON records of the comparison: "title" (of the printed table),
    "config", "peer", "overrides", "batch_size", "val_images", "results" (the rows),
    "ap_gfldet_minus_peer" and "ap_ratio"."""
    overrides = [
        *shapes_overrides(ensure_shapes(Path(a.data))),
        *(QUICK if a.quick else []),
        *a.set,
        f"work_dir={a.work_dir}",
        *BUDGET_RUN,
    ]
    config = a.config or str(DEMO if a.peer == "fcos" else LITE_SHAPES)
    cfg = load_config(config, overrides)
    seconds = 60 * a.minutes
    print(f"== gfldet, {a.minutes:g} min", flush=True)
    row, trainer = train_gfldet(cfg, seconds, a.decay_at)
    rows = {"gfldet": row}

    cfg_peer = copy.deepcopy(trainer.cfg)
    cfg_peer.train.max_iters = None
    val_set = trainer.val_set
    if a.peer == "fcos":
        print(f"== torchvision FCOS on the same backbone, {a.minutes:g} min", flush=True)
        peer, offset = build_fcos_on_gfldet(cfg_peer), 0
    else:
        print(f"== torchvision SSDlite320 MobileNetV3, {a.minutes:g} min", flush=True)
        torch.manual_seed(cfg.seed)
        peer = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=val_set.num_classes + 1
        )
        offset = 1  # its class 0 is the background
    peer = peer.to(trainer.device)
    d, bs = cfg.data, trainer.batch_size
    train_loader = build_dataloader(
        trainer.train_set, bs, d.train.num_workers, True, cfg.seed, size_divisor=d.size_divisor
    )
    val_loader = build_dataloader(
        val_set, d.val.batch_size, d.val.num_workers, False, size_divisor=d.size_divisor
    )
    budget = Budget(seconds, a.decay_at)
    iterations = train_peer(peer, cfg_peer, train_loader, budget, trainer.base_lr, offset)
    train_s = budget.elapsed()
    metrics = score(val_set, predict_peer(peer, val_loader, val_set.cat_ids, offset))
    rows[a.peer] = {"iterations": iterations, "train_s": train_s, **metrics}

    ap, peer_ap = rows["gfldet"]["AP"], rows[a.peer]["AP"]
    return {
        "title": f"accuracy per CPU-minute: {a.minutes:g} min each, {a.threads} threads, batch "
        f"{bs}, shapes val ({len(val_set)} images)",
        "config": config,
        "peer": a.peer,
        "overrides": overrides,
        "batch_size": bs,
        "val_images": len(val_set),
        "results": rows,
        "ap_gfldet_minus_peer": ap - peer_ap,
        "ap_ratio": ap / peer_ap if peer_ap > 0 else None,
    }


def fmt(v: float | None) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"


def format_table(rows: dict[str, dict], title: str, batch_size: int) -> str:
    """One line per model: iterations, images/s (added to its row) and AP, AP50, AP75."""
    lines = [title, "model      iters  img/s     AP   AP50   AP75"]
    for name, r in rows.items():
        r["images_per_s"] = r["iterations"] * batch_size / max(r["train_s"], 1e-9)
        lines.append(
            f"{name:<9} {r['iterations']:6d} {r['images_per_s']:6.1f}  "
            f"{fmt(r['AP'])}  {fmt(r['AP50'])}  {fmt(r['AP75'])}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_converge", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="bench_converge.json", help="JSON results")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget of each model")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--data", default="data/shapes", help="shapes dataset (made if missing)")
    p.add_argument(
        "--peer",
        choices=("fcos", "ssdlite"),
        default="fcos",
        help="the torchvision detector beside gfldet (see above)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="gfldet's config (default: shapes_demo.yaml for fcos, "
        "gfl_lite_shapes.yaml for ssdlite)",
    )
    p.add_argument("--work-dir", default="work_dirs/bench_converge", help="gfldet's work_dir")
    p.add_argument(
        "--decay-at",
        type=float,
        default=0.8,
        help="fraction of the budget after which lr is x train.lr_gamma",
    )
    p.add_argument("--quick", action="store_true", help="tiny images, no workers: a smoke run")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for both models",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    if a.minutes <= 0 or not 0 < a.decay_at <= 1 or a.threads < 1:
        raise SystemExit("bench_converge: --minutes > 0, 0 < --decay-at <= 1, --threads >= 1")
    torch.set_num_threads(a.threads)
    comparison = compare_with_peer(a)
    title = comparison.pop("title")
    table = format_table(comparison["results"], title, comparison["batch_size"])
    print("\n" + table)
    results = {
        "command": " ".join(["python -m benchmarks.bench_converge", *argv]),
        "minutes": a.minutes,
        "threads": a.threads,
        "decay_at": a.decay_at,
        **comparison,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": machine(),
        "table": table,
    }
    write_json_atomic(results, a.out, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
