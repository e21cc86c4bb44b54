"""Accuracy per CPU-minute: gfldet beside torchvision's detectors, trained for the same time.

    python scripts/bench_converge.py --out bench_converge.json        # `make bench-converge`
    python scripts/bench_converge.py --peer ssdlite --out bench_converge_lite.json
    python scripts/bench_converge.py --quick --minutes 0.2 --data DIR  # smoke run

--peer fcos (default): gfldet's demo model beside FCOS on the same backbone, as below.
--peer ssdlite: gfldet-lite (configs/gfl_lite_shapes.yaml) beside torchvision's
ssdlite320_mobilenet_v3_large (random init, its own 320x320 resize, anchors, losses and
post-processing; labels shifted by one for its background class), with the same loader,
optimizer, schedule, budget and evaluator. Both are real-time CPU models of 1.7M and 3.4M
parameters, trained from scratch.

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

The budget: gfldet trains with its own Trainer (gfldet.training.trainer), whose `train_step` is
extended (`BudgetTrainer`) to take the learning rate from the shared time-based schedule and
to set train.max_iters to the current iteration once the budget is spent, so the trainer stops
after that step as it does for max_iters; the peer trains in `train_peer`, a loop of the same steps.
The schedule (`Budget.lr`): the config's linear warm-up over train.warmup_iters iterations, then
train.lr (scaled to the batch as the trainer does), times train.lr_gamma for the last
(1 - --decay-at) of the budget. (The trainer's log.jsonl records its own epoch-based lr, not
this one.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import math
import platform
import sys
import time
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
from gfldet.data.synth import shapes_overrides, shapes_paths, write_shapes_dataset
from gfldet.evaluation.evaluator import coco_evaluate, predict_dataset
from gfldet.model.build import build_model
from gfldet.training.optim import build_optimizer, lr_at
from gfldet.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "shapes_demo.yaml"
LITE = ROOT / "configs" / "gfl_lite_shapes.yaml"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# --quick: tiny images, no worker processes (the data of a smoke test is tiny too).
QUICK = [
    "data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]", "data.train.batch_size=2",
    "data.val.batch_size=2", "data.train.num_workers=0", "data.val.num_workers=0",
]  # fmt: skip


class Budget:
    """A wall-clock budget that starts at the first `lr` call, and the learning rate at each
    point of it (see the module docstring)."""

    def __init__(self, seconds: float, decay_at: float) -> None:
        self.seconds, self.decay_at = seconds, decay_at
        self.start: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.elapsed() >= self.seconds

    def lr(self, cfg: dict, base_lr: float, it: int) -> float:
        if self.start is None:
            self.start = time.perf_counter()
        warm = lr_at(dataclasses.replace(cfg.train, lr_steps=[]), base_lr, 0, it)
        decayed = self.elapsed() >= self.decay_at * self.seconds
        return warm * (cfg.train.lr_gamma if decayed else 1.0)


class BudgetTrainer(Trainer):
    """gfldet's Trainer on the shared time-based schedule, stopped when the budget is spent."""

    def __init__(self, cfg: dict, budget: Budget) -> None:
        super().__init__(cfg)
        self.budget = budget

    def train_step(self, images: Tensor, targets: list[dict], lr: float) -> dict[str, float]:
        losses = super().train_step(images, targets, self.budget.lr(self.cfg, self.base_lr,
                                                                    self.iter))  # fmt: skip
        if self.budget.spent():
            self.cfg.train.max_iters = self.iter + 1  # counts this step; stops after it
        return losses


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


def build_fcos_on_gfldet(cfg: dict) -> FCOS:
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
        GfldetBackbone(gfl.backbone, gfl.neck, width), n,
        min_size=min(scale), max_size=max(scale),
        image_mean=[v / 255 for v in cfg.model.mean],
        image_std=[v / 255 for v in cfg.model.std],
        anchor_generator=anchors, head=head, score_thresh=test.score_thr,
        nms_thresh=test.nms_iou, detections_per_img=test.max_per_img,
        topk_candidates=test.nms_pre,
    )  # fmt: skip


def to_peer(
    images: Tensor, targets: list[dict], offset: int = 0
) -> tuple[list[Tensor], list[dict]]:
    """gfldet's batch (uint8 [B, 3, Hp, Wp], padded) -> torchvision's: unpadded float 0..1
    images [3, h, w] and {"boxes", "labels"} targets (labels 0..C-1 as gfldet's, + offset)."""
    imgs = [im[:, : t["img_size"][0], : t["img_size"][1]].float() / 255
            for im, t in zip(images, targets)]  # fmt: skip
    peer = [{"boxes": t["boxes"], "labels": t["labels"] + offset}
            for t in targets if "boxes" in t]  # fmt: skip
    return imgs, peer


def train_peer(
    model: nn.Module, cfg: dict, loader: Any, budget: Budget, base_lr: float, offset: int = 0
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
                g["lr"] = budget.lr(cfg, base_lr, it)
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
            det = {**det, "boxes": det["boxes"] / det["boxes"].new_tensor([sx, sy, sx, sy]),
                   "labels": det["labels"] - offset}  # fmt: skip
            keep = (det["labels"] >= 0) & (det["labels"] < len(cat_ids))
            det = {k: v[keep] for k, v in det.items()}
            results.extend(detections_to_coco(int(t["image_id"]), det, cat_ids))
    return results


def score(ds: Any, results: list[dict]) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = coco_evaluate(ds.coco, results, ds.class_names, ds.cat_ids, None, plots=False)
    return {k: metrics[k] for k in METRICS}


def data_overrides(data: Path) -> list[str]:
    paths = shapes_paths(data)
    if not paths["train_ann"].is_file():
        print(f"generating the shapes dataset in {data} ...", flush=True)
        write_shapes_dataset(data)
    return shapes_overrides(paths)


def fmt(v: float | None) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_converge.json", help="JSON results")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget of each model")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--data", default="data/shapes", help="shapes dataset (made if missing)")
    p.add_argument("--peer", choices=("fcos", "ssdlite"), default="fcos",
                   help="the torchvision detector beside gfldet (see above)")  # fmt: skip
    p.add_argument("--config", default=None,
                   help="gfldet's config (default: shapes_demo.yaml for fcos, "
                   "gfl_lite_shapes.yaml for ssdlite)")  # fmt: skip
    p.add_argument("--work-dir", default="work_dirs/bench_converge", help="gfldet's work_dir")
    p.add_argument("--decay-at", type=float, default=0.8,
                   help="fraction of the budget after which lr is x train.lr_gamma")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny images, no workers: a smoke run")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides for both models")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.minutes <= 0 or not 0 < a.decay_at <= 1 or a.threads < 1:
        raise SystemExit("bench_converge: --minutes > 0, 0 < --decay-at <= 1, --threads >= 1")
    torch.set_num_threads(a.threads)
    overrides = data_overrides(Path(a.data)) + (QUICK if a.quick else []) + list(a.set) + [
        f"work_dir={a.work_dir}", "train.epochs=1000000", "train.max_iters=null",
        "train.eval_interval=0", "train.checkpoint_interval=1000000", "train.ema=false",
        "train.amp=false",
    ]  # fmt: skip
    config = a.config or str(DEMO if a.peer == "fcos" else LITE)
    cfg = load_config(config, overrides)
    seconds = 60 * a.minutes

    print(f"== gfldet, {a.minutes:g} min", flush=True)
    trainer = BudgetTrainer(cfg, Budget(seconds, a.decay_at))
    trainer.fit()
    gfl_train_s = trainer.budget.elapsed()
    val_set = trainer.val_set
    val_loader = build_dataloader(
        val_set, cfg.data.val.batch_size, cfg.data.val.num_workers, False,
        size_divisor=cfg.data.size_divisor,
    )  # fmt: skip
    gfl_metrics = score(
        val_set,
        predict_dataset(
            trainer.model, val_loader, trainer.device, progress=False, cat_ids=val_set.cat_ids
        ),
    )
    rows = {"gfldet": {"iterations": trainer.iter, "train_s": gfl_train_s, **gfl_metrics}}

    cfg_peer = copy.deepcopy(trainer.cfg)
    cfg_peer.train.max_iters = None
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
    train_loader = build_dataloader(
        trainer.train_set, trainer.batch_size, cfg.data.train.num_workers, True,
        cfg.seed, size_divisor=cfg.data.size_divisor,
    )  # fmt: skip
    budget = Budget(seconds, a.decay_at)
    peer_iters = train_peer(peer, cfg_peer, train_loader, budget, trainer.base_lr, offset)
    peer_train_s = budget.elapsed()
    peer_metrics = score(val_set, predict_peer(peer, val_loader, val_set.cat_ids, offset))
    rows[a.peer] = {"iterations": peer_iters, "train_s": peer_train_s, **peer_metrics}

    bs = trainer.batch_size
    lines = [f"accuracy per CPU-minute: {a.minutes:g} min each, {a.threads} threads, batch {bs}, "
             f"shapes val ({len(val_set)} images)",
             "model      iters  img/s     AP   AP50   AP75"]  # fmt: skip
    for name, r in rows.items():
        r["images_per_s"] = r["iterations"] * bs / max(r["train_s"], 1e-9)
        lines.append(f"{name:<9} {r['iterations']:6d} {r['images_per_s']:6.1f}  "
                     f"{fmt(r['AP'])}  {fmt(r['AP50'])}  {fmt(r['AP75'])}")  # fmt: skip
    table = "\n".join(lines)
    print("\n" + table)
    args = argv if argv is not None else sys.argv[1:]
    write_json_atomic({
        "command": " ".join(["scripts/bench_converge.py", *args]),
        "minutes": a.minutes, "threads": a.threads, "decay_at": a.decay_at, "config": config,
        "peer": a.peer,
        "overrides": overrides, "batch_size": bs, "val_images": len(val_set),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "results": rows, "ap_gfldet_minus_peer": rows["gfldet"]["AP"] - rows[a.peer]["AP"],
        "ap_ratio": rows["gfldet"]["AP"] / rows[a.peer]["AP"] if rows[a.peer]["AP"] > 0 else None,
        "table": table,
    }, a.out, indent=1)  # fmt: skip
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
