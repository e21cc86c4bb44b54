"""gfldet's speed beside torchvision's detectors, measured side by side in one process.

    python scripts/bench.py --out bench.json            # `make bench`
    python scripts/bench.py --quick --out /tmp/b.json   # tiny sizes, 1 run each: a smoke test
    python scripts/bench.py --only infer atss           # some of the sections

Sections (docs/benchmarks.md says what every number means):
  infer   latency, batch 1, 800x1216: gfldet's R-50 GFL (prepared by
          gfldet.model.fuse.prepare_for_inference) vs torchvision's FCOS and RetinaNet, each
          with its own pre- and post-processing; gfldet's post-processing share, with random
          weights and with scores arranged so that a few thousand (box, class) pairs pass the
          score threshold, as a trained model's do
  train   one training step (forward, targets, loss, backward, SGD step), 2 images 512x512
          with 5 boxes each, vs torchvision's FCOS
  atss    batched ATSS vs a per-image loop of the same function, 16 images x 30 gts at
          800x1216 anchors, and its share of the training step
  loader  training-loader images/s on the shapes dataset with 0 and 2 workers, and how long
          the demo model's training waits for data with 2 workers
  coco    COCO evaluation (pycocotools, gfldet's evaluator) of the shapes val set
  data    reading 20k images' annotations as COCO json, Pascal VOC and YOLO (into a dataset,
          every check included), and the memory of a 100k-image dataset in memory
  lite    latency, batch 1, 320x320, from a uint8 RGB image: gfldet-lite
          (configs/gfl_lite_320_coco.yaml) through gfldet.Predictor vs torchvision's
          ssdlite320_mobilenet_v3_large and fasterrcnn_mobilenet_v3_large_320_fpn

Every model has random weights. Every time is a wall-clock median of --repeats runs after
--warmup runs; the contenders of one comparison run in turn (a, b, c, a, b, c, ...) so that a
change in the machine's load hits them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, fcos_resnet50_fpn, retinanet_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from gfldet.config import load_config
from gfldet.core.files import write_json_atomic
from gfldet.data.coco import CocoDetection
from gfldet.data.loader import build_dataloader, build_dataset
from gfldet.data.options import ValSplitOptions
from gfldet.data.synth import shapes_overrides, shapes_paths, write_shapes_dataset
from gfldet.data.transforms import TestTransform
from gfldet.evaluation.evaluator import coco_evaluate
from gfldet.model.atss import atss_assign
from gfldet.model.box_ops import grid_points, square_anchors
from gfldet.model.build import build_model
from gfldet.model.detector import GFL
from gfldet.model.fuse import prepare_for_inference
from gfldet.training.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "gfl_r50_fpn_1x_coco.yaml"
RECIPE_V2 = ROOT / "configs" / "gflv2_r50_fpn_1x_coco.yaml"
DEMO = ROOT / "configs" / "shapes_demo.yaml"
LITE = ROOT / "configs" / "gfl_lite_320_coco.yaml"
SECTIONS = ("infer", "train", "atss", "loader", "coco", "data", "lite")
PEER_CLASSES_LITE = 91  # torchvision's COCO detectors of the lite section: 90 ids + background
PEER_CLASSES = 81  # torchvision's detectors for COCO's 80 classes (+1, their convention)
LOADED_PAIRS = 3000  # (box, class) pairs over the score threshold in the "loaded" case

# What the headline numbers of bench.json are (written into it, so that the file explains itself).
DEFINITIONS = {
    "infer_ratio_fcos": "gfldet inference latency / torchvision FCOS's (batch 1, pre- and "
    "post-processing included; gfldet prepared by gfldet.model.fuse.prepare_for_inference)",
    "infer_ratio_retinanet": "the same against torchvision RetinaNet",
    "infer_ratio_gflv2_gfl": "gfldet's GFLv2 R-50 (DGQP) inference latency / its GFL R-50's, both "
    "prepared, same input",
    "train_ratio_fcos": "gfldet training step / torchvision FCOS's (fcos_resnet50_fpn with "
    "random weights, which torchvision trains whole, BatchNorm in training mode)",
    "train_ratio_fcos_same_recipe": "the same against torchvision FCOS with gfldet's recipe "
    "(FrozenBatchNorm2d, stem + stage 1 frozen)",
    "train_gfldet_layout": "the memory format of gfldet's model as built (and trained)",
    "atss_speedup": "per-image loop of atss_assign / one batched call, same anchors and gts",
    "atss_share": "batched ATSS time per image (at the ATSS section's size, e.g. 800x1216 with "
    "30 gts) / gfldet training step time per image (at the train section's size, e.g. "
    "512x512): an upper bound of ATSS's share of a step at the larger size",
    "postprocess_share": "gfldet post-processing time / its inference time, scores arranged "
    "so that ~3000 (box, class) pairs pass the score threshold",
    "postprocess_share_random": "the same with the random weights' scores (almost none pass)",
    "loader_wait_share": "share of the demo model's training time spent waiting for batches "
    "of the training loader with 2 workers",
    "coco_eval_s": "seconds of gfldet.evaluation.evaluator.coco_evaluate on the shapes val set "
    "with 100 synthetic detections per image",
    "lite_ratio_ssdlite": "gfldet-lite latency / torchvision SSDlite320-MobileNetV3's, batch 1, "
    "320x320 uint8 RGB in, detections out (gfldet: gfldet.Predictor with scores arranged so "
    "that ~3000 (box, class) pairs pass the threshold, as a trained model's; torchvision's "
    "models: their own transform and post-processing)",
    "lite_ratio_frcnn": "the same against torchvision's Faster R-CNN MobileNetV3-320-FPN",
    "data_read_s": "seconds to read the annotations of 20k images (7 boxes each) into a gfldet "
    "dataset (gfldet.data.loader.build_dataset: parsing, every check, the image files' presence; "
    "YOLO also reads every image's header), the slowest of COCO json, VOC and YOLO",
    "data_memory_mib": "resident memory taken by a dataset of 100k images (700k boxes) built "
    "from a COCO json, MiB",
}

# name -> (bench.json key, comparison, limit): the CPU targets.
TARGETS = {
    "inference / FCOS": ("infer_ratio_fcos", "<=", 0.90),
    "train step / FCOS": ("train_ratio_fcos", "<=", 0.90),
    "ATSS loop / batched": ("atss_speedup", ">=", 5.0),
    "ATSS share of step": ("atss_share", "<=", 0.05),
    "post-process share": ("postprocess_share", "<=", 0.03),
    "data wait share (2 workers)": ("loader_wait_share", "<=", 0.05),
    "lite / SSDlite latency": ("lite_ratio_ssdlite", "<=", 0.80),
    "GFLv2 / GFL inference": ("infer_ratio_gflv2_gfl", "<=", 1.03),
    "annotations of 20k images (s)": ("data_read_s", "<=", 10.0),
    "memory of 100k images (MiB)": ("data_memory_mib", "<=", 1024.0),
}


@dataclass
class Sizes:
    infer_hw: tuple[int, int] = (800, 1216)
    train_hw: tuple[int, int] = (512, 512)
    train_images: int = 2
    train_boxes: int = 5
    atss_hw: tuple[int, int] = (800, 1216)
    atss_images: int = 16
    atss_gts: int = 30
    loader_batches: int = 30  # per timed pass over the loader
    demo_steps: int = 10  # demo training steps timed for the data-wait share
    coco_dets_per_image: int = 100  # test.max_per_img
    demo_set: tuple[str, ...] = ()  # overrides of the demo config
    lite_hw: tuple[int, int] = (320, 320)
    data_images: int = 20_000  # read in each format
    data_memory_images: int = 100_000


QUICK = Sizes(
    infer_hw=(64, 96), train_hw=(64, 64), atss_hw=(128, 192), atss_images=4, atss_gts=5,
    loader_batches=2, demo_steps=2, demo_set=("data.train.img_scale=[64,64]",),
    lite_hw=(64, 64), data_images=50, data_memory_images=200,
)  # fmt: skip


# -- timing -----------------------------------------------------------------------------------
def measure(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall-clock seconds of every fn: `warmup` untimed rounds, then `repeats` timed rounds,
    each round running every fn once, in turn."""
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


def med(times: list[float]) -> float:
    return statistics.median(times)


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


@contextlib.contextmanager
def input_size_check(model: nn.Module, expect: tuple[int, ...], who: str) -> Any:
    """Fails unless the peer's backbone sees images of `expect` (B, 3, H, W): torchvision's
    transform resizes, and a comparison is only fair on the same input."""
    seen: list[tuple[int, ...]] = []
    handle = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    try:
        yield
    finally:
        handle.remove()
    if seen and tuple(seen[0]) != expect:
        raise RuntimeError(f"{who}: its backbone got {tuple(seen[0])}, expected {expect}")


# -- models -----------------------------------------------------------------------------------
def build_gfl_r50(recipe: Path = RECIPE) -> GFL:
    """gfldet's R-50 GFL as the official recipe (stem + stage 1 frozen, BatchNorm statistics
    frozen), random weights, 80 classes (or the GFLv2 recipe)."""
    torch.manual_seed(0)
    cfg = load_config(recipe, ["model.num_classes=80", "model.backbone.pretrained=null"])
    return build_model(cfg.model)


def peer_kwargs(hw: tuple[int, int]) -> dict[str, int]:
    """torchvision's transform keeps an image of exactly this size as it is."""
    return {"min_size": min(hw), "max_size": max(hw)}


def build_fcos(hw: tuple[int, int]) -> FCOS:
    torch.manual_seed(0)
    return fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES, **peer_kwargs(hw)
    )


def build_fcos_same_recipe(hw: tuple[int, int]) -> FCOS:
    """torchvision's FCOS as it trains from ImageNet weights (FrozenBatchNorm2d, stem + stage 1
    frozen): gfldet's recipe, so this isolates the cost of everything but the freezing."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3,
        returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256),
    )  # fmt: skip
    return FCOS(backbone, PEER_CLASSES, **peer_kwargs(hw))


def build_retinanet(hw: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    return retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES, **peer_kwargs(hw)
    )


def random_boxes(gen: torch.Generator, shape: tuple[int, ...], hw: tuple[int, int]) -> Tensor:
    """Boxes [*shape, 4] xyxy inside an h x w image, sides 16 px .. half the image."""
    h, w = hw
    size = torch.tensor([w, h], dtype=torch.float32)
    wh = 16 + torch.rand(*shape, 2, generator=gen) * (size / 2 - 16).clamp(min=1)
    xy = torch.rand(*shape, 2, generator=gen) * (size - wh)
    return torch.cat([xy, xy + wh], -1)


def layout(model: nn.Module) -> str:
    """The memory format of the model's first conv weight: "channels_last" or "NCHW" (a 1x1
    conv's weight is both, so it looks at the first larger one)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    nhwc = conv.weight.is_contiguous(memory_format=torch.channels_last)
    return "channels_last" if nhwc else "NCHW"


# -- inference --------------------------------------------------------------------------------
def kept_logits(cls: Tensor, sizes: list[tuple[int, int]], nms_pre: int) -> Tensor:
    """The class logits [K, C] of the locations that gfldet's post-processing keeps for NMS:
    the nms_pre best per level by max score. cls [A, C] of one image, levels in order."""
    kept, start = [], 0
    for h, w in sizes:
        level = cls[start : start + h * w]
        start += h * w
        if 0 < nms_pre < len(level):
            level = level[level.amax(1).topk(nms_pre).indices]
        kept.append(level)
    return torch.cat(kept)


def head_outputs(model: GFL, images: Tensor, targets: list[dict]) -> tuple[Tensor, list]:
    """The class logits [A, C] of one image and the feature sizes, captured from model.head."""
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, output: tuple) -> None:
        seen["sizes"] = [tuple(f.shape[-2:]) for f in args[0]]
        seen["cls"] = output[0][0].float()

    handle = model.head.register_forward_hook(hook)
    try:
        model.predict(images, targets)
    finally:
        handle.remove()
    return seen["cls"], seen["sizes"]


def loaded_copy(model: GFL, images: Tensor, targets: list[dict], test_cfg: dict) -> GFL:
    """A copy of `model` whose class scores on `images` put LOADED_PAIRS (box, class) pairs of
    the locations kept for NMS over the score threshold, as a trained model's do (random weights
    put almost none there). It shifts the bias of the class conv: post-processing then does the
    work of a trained model, the network the same work as before."""
    cls, sizes = head_outputs(model, images, targets)
    kept = kept_logits(cls, sizes, test_cfg.nms_pre).flatten()
    kth = kept.topk(min(LOADED_PAIRS, kept.numel())).values[-1].item()
    thr = test_cfg.score_thr
    shift = math.log(thr / (1 - thr)) - kth + 1e-4
    loaded = copy.deepcopy(model)
    cls_conv = getattr(loaded.head, "gfl_cls", None)
    if not isinstance(cls_conv, nn.Conv2d) or cls_conv.bias is None:
        raise RuntimeError("bench: the loaded case shifts model.head.gfl_cls.bias; this head "
                           "has no such conv bias")  # fmt: skip
    with torch.no_grad():
        cls_conv.bias += shift
    return loaded


def count_candidates(model: GFL, images: Tensor, targets: list[dict], test_cfg: dict) -> int:
    """(box, class) pairs that enter gfldet's NMS for these images."""
    cls, sizes = head_outputs(model, images, targets)
    kept = kept_logits(cls, sizes, test_cfg.nms_pre)
    return int((kept.sigmoid() > test_cfg.score_thr).sum())


def bench_infer(sz: Sizes, repeats: int, warmup: int, out: dict) -> None:
    h, w = sz.infer_hw
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)
    img_cl = img.contiguous(memory_format=torch.channels_last)
    targets = [{"img_size": (h, w), "scale_factor": (1.0, 1.0)}]
    peer_in = [img[0].float() / 255]  # torchvision's API: float 0..1 [3, H, W]

    gfl = build_gfl_r50().eval()
    test_cfg = load_config(RECIPE, ["model.num_classes=80"]).model.test
    fast = prepare_for_inference(gfl)
    loaded = loaded_copy(fast, img_cl, targets, test_cfg)
    candidates = count_candidates(loaded, img_cl, targets, test_cfg)
    fast_v2 = prepare_for_inference(build_gfl_r50(RECIPE_V2).eval())
    post_random = time_calls(fast, "postprocess")
    post_loaded = time_calls(loaded, "postprocess")
    fcos = build_fcos((h, w)).eval()
    fcos_cl = copy.deepcopy(fcos).to(memory_format=torch.channels_last)
    retina = build_retinanet((h, w)).eval()

    fns = {
        "gfldet": lambda: fast.predict(img_cl, targets),
        "gfldet_loaded": lambda: loaded.predict(img_cl, targets),
        "gfldet_unprepared": lambda: gfl.predict(img, targets),
        "gfldet_v2": lambda: fast_v2.predict(img_cl, targets),
        "fcos": lambda: fcos(peer_in),
        "fcos_channels_last": lambda: fcos_cl(peer_in),
        "retinanet": lambda: retina(peer_in),
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        for model, name in ((fcos, "fcos"), (fcos_cl, "fcos"), (retina, "retinanet")):
            stack.enter_context(input_size_check(model, (1, 3, h, w), name))
        times = measure(fns, repeats, warmup)
        detections = len(loaded.predict(img_cl, targets)[0]["scores"])
    times["postprocess_random"] = post_random[warmup : warmup + repeats]
    times["postprocess_loaded"] = post_loaded[warmup : warmup + repeats]
    m = {k: med(v) for k, v in times.items()}
    out["times"]["infer"] = times
    out["medians"]["infer"] = m
    out["infer_ratio_fcos"] = m["gfldet"] / m["fcos"]
    out["infer_ratio_retinanet"] = m["gfldet"] / m["retinanet"]
    out["infer_ratio_gflv2_gfl"] = m["gfldet_v2"] / m["gfldet"]
    out["infer_ratio_fcos_channels_last"] = m["gfldet"] / m["fcos_channels_last"]
    out["infer_ratio_unprepared_fcos"] = m["gfldet_unprepared"] / m["fcos"]
    out["postprocess_share"] = m["postprocess_loaded"] / m["gfldet_loaded"]
    out["postprocess_share_random"] = m["postprocess_random"] / m["gfldet"]
    out["postprocess_candidates"] = candidates
    out["postprocess_detections"] = detections
    out["infer_gfldet_unprepared_layout"] = layout(gfl)


def bench_lite(sz: Sizes, repeats: int, warmup: int, out: dict, tmp: Path) -> None:
    """gfldet-lite through gfldet.Predictor (a checkpoint of random weights, as users run it)
    vs torchvision's real-time detectors, from the same uint8 RGB image."""
    from gfldet.core.checkpoint import save_checkpoint
    from gfldet.inference.predictor import Predictor
    from gfldet.model.fuse import prepare_for_inference as prepare

    h, w = sz.lite_hw
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    sets = ["model.num_classes=80", "model.backbone.pretrained=null",
            f"data.val.img_scale=[{max(h, w)},{min(h, w)}]"]  # fmt: skip
    cfg = load_config(LITE, sets)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    ckpt = tmp / "gfl_lite_random.pth"
    save_checkpoint({"model": model.state_dict()}, ckpt)
    predictor = Predictor(cfg, ckpt, device="cpu")
    # Scores of a trained model: ~3000 (box, class) pairs over the threshold (see "infer").
    # The small head's random logits are nearly equal everywhere; spread them to unit std
    # first, so that the threshold selects pairs instead of all or none.
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    meta = [{"img_size": (h, w)}]
    fast = prepare(model)
    cls, _ = head_outputs(fast, img, meta)
    with torch.no_grad():
        fast.head.gfl_cls.weight /= (cls - fast.head.gfl_cls.bias).std().clamp(min=1e-12)
    predictor.model = loaded_copy(fast, img, meta, cfg.model.test)
    candidates = count_candidates(predictor.model, img, meta, cfg.model.test)
    random_weights = Predictor(cfg, ckpt, device="cpu")
    torch.manual_seed(0)
    ssd = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES_LITE
    ).eval()
    frcnn = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES_LITE
    ).eval()

    def peer(model: nn.Module) -> Callable[[], Any]:
        return lambda: model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])

    fns = {
        "gfldet_lite": lambda: predictor([rgb]),
        "gfldet_lite_random": lambda: random_weights([rgb]),
        "ssdlite": peer(ssd),
        "frcnn_mobilenet_320": peer(frcnn),
    }
    with torch.inference_mode():
        times = measure(fns, repeats, warmup)
    m = {k: med(v) for k, v in times.items()}
    out["times"]["lite"] = times
    out["medians"]["lite"] = m
    out["lite_ratio_ssdlite"] = m["gfldet_lite"] / m["ssdlite"]
    out["lite_ratio_frcnn"] = m["gfldet_lite"] / m["frcnn_mobilenet_320"]
    out["lite_candidates"] = candidates
    out["lite_params"] = {
        "gfldet_lite": sum(p.numel() for p in model.parameters()),
        "ssdlite": sum(p.numel() for p in ssd.parameters()),
        "frcnn_mobilenet_320": sum(p.numel() for p in frcnn.parameters()),
    }


# -- data -------------------------------------------------------------------------------------
def synthetic_coco(images: int, boxes: int = 7, size: tuple[int, int] = (640, 480)) -> dict:
    """A COCO dict of `images` images with `boxes` random boxes each, 80 classes."""
    rng = np.random.default_rng(0)
    w, h = size
    xy = rng.uniform(0, 0.8, (images * boxes, 2)) * [w, h]
    wh = rng.uniform(0.02, 0.2, (images * boxes, 2)) * [w, h]
    cats = rng.integers(1, 81, images * boxes)
    anns = [{"id": k + 1, "image_id": k // boxes + 1, "category_id": int(cats[k]),
             "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
             "area": float(wh[k, 0] * wh[k, 1]), "iscrowd": 0}
            for k in range(images * boxes)]  # fmt: skip
    return {
        "images": [
            {"id": i + 1, "file_name": f"{i:07d}.jpg", "width": w, "height": h}
            for i in range(images)
        ],  # fmt: skip
        "annotations": anns,
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)],
    }


def resident_mib() -> float:
    with open("/proc/self/statm") as f:  # Linux: resident pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_data(sz: Sizes, repeats: int, warmup: int, out: dict, tmp: Path) -> None:
    """Each format read into a dataset, as `gfldet train` reads it; then the memory."""
    import json

    import cv2

    from gfldet.data.voc import write_voc
    from gfldet.data.yolo import write_yolo

    coco = synthetic_coco(sz.data_images, size=(32, 24))  # tiny image files: YOLO reads them
    src = tmp / "images"
    src.mkdir()
    tiny = cv2.imencode(".jpg", np.zeros((24, 32, 3), np.uint8))[1].tobytes()
    for im in coco["images"]:
        (src / im["file_name"]).write_bytes(tiny)
    (tmp / "coco.json").write_text(json.dumps(coco))
    voc_list = write_voc(coco, src, tmp / "voc", "train")
    yolo_yaml = write_yolo(coco, src, tmp / "yolo", "train")
    splits = {
        "coco": {"format": "coco", "ann_file": str(tmp / "coco.json"), "img_dir": str(src)},
        "voc": {"format": "voc", "ann_file": str(voc_list), "img_dir": str(tmp / "voc")},
        "yolo": {"format": "yolo", "ann_file": str(yolo_yaml),
                 "img_dir": str(tmp / "yolo" / "images" / "train")},
    }  # fmt: skip
    fns = {name: partial(build_dataset, ValSplitOptions(**split, img_scale=[1333, 800]), False)
           for name, split in splits.items()}  # fmt: skip
    times = measure(fns, repeats, warmup)
    m = {k: med(v) for k, v in times.items()}
    out["times"]["data"] = times
    out["medians"]["data"] = m
    out["data_read_s"] = max(m.values())
    out["data_images"] = sz.data_images

    big = tmp / "big.json"
    big.write_text(json.dumps(synthetic_coco(sz.data_memory_images)))
    before = resident_mib()
    dataset = CocoDetection(big, tmp, TestTransform((1333, 800)), train=True)
    out["data_memory_mib"] = resident_mib() - before
    out["data_memory_images"] = len(dataset)


# -- training ---------------------------------------------------------------------------------
def train_step(model: nn.Module, opt: torch.optim.Optimizer, images: Any, targets: list) -> float:
    """Forward with targets, summed loss, backward, SGD step; returns the loss."""
    losses = model(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def bench_train(sz: Sizes, repeats: int, warmup: int, out: dict) -> None:
    h, w = sz.train_hw
    b, n = sz.train_images, sz.train_boxes
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    boxes = random_boxes(gen, (b, n), (h, w))
    labels = torch.randint(0, 80, (b, n), generator=gen)
    targets = [{"boxes": boxes[i], "labels": labels[i], "img_size": (h, w)} for i in range(b)]
    peer_in = [im.float() / 255 for im in images]
    peer_targets = [{"boxes": boxes[i], "labels": labels[i] + 1} for i in range(b)]
    sgd = load_config(RECIPE, ["model.num_classes=80"]).train  # SGD, momentum, decay

    models = {
        "gfldet": build_gfl_r50().train(),
        "fcos": build_fcos((h, w)).train(),
        "fcos_same_recipe": build_fcos_same_recipe((h, w)).train(),
    }
    opts = {k: build_optimizer(m, sgd, 0.01) for k, m in models.items()}
    inputs = {
        "gfldet": (images, targets),
        "fcos": (peer_in, peer_targets),
        "fcos_same_recipe": (peer_in, peer_targets),
    }
    losses: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            losses[name] = train_step(models[name], opts[name], *inputs[name])

        return run

    with contextlib.ExitStack() as stack:
        for name in ("fcos", "fcos_same_recipe"):
            stack.enter_context(input_size_check(models[name], (b, 3, h, w), name))
        times = measure({k: step(k) for k in models}, repeats, warmup)
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"train: non-finite loss for {bad}: the timing would be moot")
    m = {k: med(v) for k, v in times.items()}
    out["times"]["train"] = times
    out["medians"]["train"] = m
    out["train_ratio_fcos"] = m["gfldet"] / m["fcos"]
    out["train_ratio_fcos_same_recipe"] = m["gfldet"] / m["fcos_same_recipe"]
    out["train_gfldet_layout"] = layout(models["gfldet"])


# -- ATSS -------------------------------------------------------------------------------------
def feature_sizes(hw: tuple[int, int], strides: list[int]) -> list[tuple[int, int]]:
    """P3..P5 at H/s (the input a multiple of 32); P6, P7 by gfldet's FPN's stride-2 3x3 convs
    (padding 1) on the level before."""
    sizes = [(-(-hw[0] // s), -(-hw[1] // s)) for s in strides[:3]]
    for _ in strides[3:]:
        sizes.append(((sizes[-1][0] - 1) // 2 + 1, (sizes[-1][1] - 1) // 2 + 1))
    return sizes


def bench_atss(sz: Sizes, repeats: int, warmup: int, out: dict) -> None:
    model_cfg = load_config(RECIPE, ["model.num_classes=80"]).model
    n = 3 + model_cfg.neck.extra_levels  # the recipe's P3..P7
    strides, topk = [8 * 2**i for i in range(n)], model_cfg.assigner.topk
    sizes = feature_sizes(sz.atss_hw, strides)
    points, point_strides = grid_points(sizes, strides)
    anchors = square_anchors(points, point_strides, model_cfg.assigner.anchor_scale)
    num_level = [h * w for h, w in sizes]
    gen = torch.Generator().manual_seed(2)
    gts = random_boxes(gen, (sz.atss_images, sz.atss_gts), sz.atss_hw)
    valid = torch.ones(gts.shape[:2], dtype=torch.bool)

    # As the detector calls it: the grid shapes let candidates be searched near each gt.
    def batched() -> Tensor:
        return atss_assign(anchors, num_level, gts, valid, topk, sizes)[0]

    def loop() -> list[Tensor]:
        return [atss_assign(anchors, num_level, g, None, topk, sizes)[0] for g in gts]

    # For reference: every anchor-gt distance measured (any anchor layout).
    def batched_all_pairs() -> Tensor:
        return atss_assign(anchors, num_level, gts, valid, topk)[0]

    if not all(torch.equal(x, y) for x, y in zip(batched(), loop())):
        raise RuntimeError("atss: the batched and per-image assignments differ")
    if not torch.equal(batched(), batched_all_pairs()):
        raise RuntimeError("atss: the grid search and the all-pairs search differ")
    fns = {"batched": batched, "loop": loop, "batched_all_pairs": batched_all_pairs}
    # Milliseconds each, so more repeats cost little and steady the median.
    times = measure(fns, max(repeats, 15), warmup)
    m = {k: med(v) for k, v in times.items()}
    out["times"]["atss"] = times
    out["medians"]["atss"] = m
    out["atss_speedup"] = m["loop"] / m["batched"]
    out["atss_anchors"] = int(anchors.shape[0])


# -- data loading and evaluation --------------------------------------------------------------
def shapes_config(data: Path, overrides: tuple[str, ...] = ()) -> dict:
    """The demo config on the shapes dataset in `data` (generated with the defaults when
    missing), with `overrides`."""
    paths = shapes_paths(data)
    if not paths["train_ann"].is_file():
        print(f"generating the shapes dataset in {data} ...", flush=True)
        write_shapes_dataset(data)
    return load_config(DEMO, [
        *shapes_overrides(paths), *overrides,
    ])  # fmt: skip


def loader_pass(loader: Any, batches: int, epochs: Any) -> None:
    """The first `batches` batches of the next epoch (`epochs` yields the epoch numbers)."""
    loader.batch_sampler.set_epoch(next(epochs))
    it = iter(loader)
    for _ in range(batches):
        next(it)


def demo_training(model: GFL, opt: Any, loader: Any, steps: int) -> tuple[list, list]:
    """`steps` training steps on the loader's batches (after one untimed step: the first batch
    waits for the workers to start). Returns each step's seconds waiting for its batch and in
    all."""
    wait, total = [], []
    epochs = iter(range(10**9))
    it = iter(())
    for i in range(steps + 1):
        start = time.perf_counter()
        batch = next(it, None)
        if batch is None:  # the end of an epoch: the next one
            loader.batch_sampler.set_epoch(next(epochs))
            it = iter(loader)
            batch = next(it)
        got = time.perf_counter()
        train_step(model, opt, *batch)
        if i > 0:
            wait.append(got - start)
            total.append(time.perf_counter() - start)
    return wait, total


def bench_loader(sz: Sizes, repeats: int, warmup: int, out: dict, data: Path) -> None:
    cfg = shapes_config(data, sz.demo_set)
    d = cfg.data
    ds = build_dataset(d.train, train=True)
    bs = d.train.batch_size
    cfg.model.num_classes = ds.num_classes
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    opt = build_optimizer(model, cfg.train, 0.01)
    times: dict[str, list[float]] = {}
    batches = 0
    for workers in (0, 2):
        loader = build_dataloader(ds, bs, workers, True, cfg.seed, 1, 0, d.size_divisor)
        batches = min(sz.loader_batches, len(loader))
        one_pass = partial(loader_pass, loader, batches, iter(range(10**9)))
        times[f"workers_{workers}"] = measure({"pass": one_pass}, repeats, warmup)["pass"]
        if workers == 2:
            # The demo model's training on this loader: how long each step waits for data.
            times["demo_wait"], times["demo_step"] = demo_training(
                model, opt, loader, sz.demo_steps
            )
        del loader, one_pass  # shuts its persistent workers down
    out["times"]["loader"] = times
    out["medians"]["loader"] = {k: med(v) for k, v in times.items()}
    out["loader_images_per_s_0_workers"] = batches * bs / med(times["workers_0"])
    out["loader_images_per_s_2_workers"] = batches * bs / med(times["workers_2"])
    total = times["demo_step"]
    out["demo_train_images_per_s"] = bs * len(total) / sum(total)
    out["loader_wait_share"] = sum(times["demo_wait"]) / sum(total)


def synthetic_detections(ds: Any, per_image: int, seed: int = 0) -> list[dict]:
    """COCO results for every image of `ds`: each gt jittered (score 0.3..1, right class), the
    rest up to `per_image` random boxes of random classes (score 0..0.3) - the load of a
    trained model's output at test.max_per_img."""
    rng = np.random.default_rng(seed)
    results = []
    for img_id in ds.img_ids:
        info = ds.coco.imgs[img_id]
        wh = np.array([info["width"], info["height"]], dtype=np.float64)
        anns = ds.coco.imgToAnns[img_id][:per_image]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.05, 4) * [w, h, w, h]
            results.append({"image_id": img_id, "category_id": ann["category_id"],
                            "bbox": [float(v) for v in np.array([x, y, w, h]) + jitter],
                            "score": float(rng.uniform(0.3, 1.0))})  # fmt: skip
        for _ in range(per_image - len(anns)):
            xy = rng.uniform(0, 0.8, 2) * wh
            size = rng.uniform(0.05, 0.5, 2) * wh
            results.append({"image_id": img_id, "category_id": int(rng.choice(ds.cat_ids)),
                            "bbox": [*map(float, xy), *map(float, size)],
                            "score": float(rng.uniform(0.0, 0.3))})  # fmt: skip
    return results


def bench_coco(sz: Sizes, repeats: int, warmup: int, out: dict, data: Path) -> None:
    ds = build_dataset(shapes_config(data).data.val, train=False)
    results = synthetic_detections(ds, sz.coco_dets_per_image)
    metrics: dict = {}

    def evaluate() -> None:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics.update(coco_evaluate(ds.coco, results, ds.class_names, ds.cat_ids, None,
                                         plots=False))  # fmt: skip

    times = measure({"coco_evaluate": evaluate}, repeats, warmup)
    out["times"]["coco"] = times
    out["medians"]["coco"] = {k: med(v) for k, v in times.items()}
    out["coco_eval_s"] = med(times["coco_evaluate"])
    out["coco_eval_images"] = len(ds.img_ids)
    out["coco_eval_detections"] = len(results)
    out["coco_eval_AP_of_synthetic_detections"] = metrics.get("AP")


# -- report -----------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
    }  # fmt: skip


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def check_targets(out: dict) -> dict[str, dict]:
    res = {}
    for name, (key, op, limit) in TARGETS.items():
        value = out.get(key)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        res[name] = {"key": key, "value": value, "target": f"{op} {limit:g}", "met": met}
    return res


def report(out: dict) -> str:
    s = out["settings"]
    lines = [
        f"gfldet benchmark: {out['machine']['cpu']}, {s['threads']} threads, torch "
        f"{out['machine']['torch']}, torchvision {out['machine']['torchvision']}; median of "
        f"{s['repeats']} after {s['warmup']} warm-up; load average {out['load_average_start']}"
        f" -> {out['load_average_end']}" + ("; QUICK (tiny sizes)" if s["quick"] else ""),
    ]
    med_ = out["medians"]
    sz = s["sizes"]
    if "infer" in med_:
        h, w = sz["infer_hw"]
        m = med_["infer"]
        lines += [
            f"\ninference, batch 1, {h}x{w}, pre- and post-processing included (s):",
            f"  gfldet R-50 GFL, prepare_for_inference (BN folded, channels_last) "
            f"{m['gfldet']:8.3f}",
            f"  gfldet R-50 GFL, as built ({out['infer_gfldet_unprepared_layout']})"
            f"{' ' * (38 - len(out['infer_gfldet_unprepared_layout']))}"
            f"{m['gfldet_unprepared']:8.3f}",
            f"  gfldet R-50 GFLv2 (DGQP), prepared                               "
            f"{m['gfldet_v2']:8.3f}",
            f"  torchvision FCOS R-50                                            {m['fcos']:8.3f}",
            f"  torchvision FCOS R-50, weights channels_last                     "
            f"{m['fcos_channels_last']:8.3f}",
            f"  torchvision RetinaNet R-50                                       "
            f"{m['retinanet']:8.3f}",
            f"  gfldet post-processing, random weights: {m['postprocess_random'] * 1e3:.1f} ms "
            f"({100 * out['postprocess_share_random']:.2f} %); loaded "
            f"({out['postprocess_candidates']} pairs over the threshold, "
            f"{out['postprocess_detections']} kept): {m['postprocess_loaded'] * 1e3:.1f} ms of "
            f"{m['gfldet_loaded']:.3f} s ({100 * out['postprocess_share']:.2f} %)",
        ]
    if "train" in med_:
        h, w = sz["train_hw"]
        m = med_["train"]
        lines += [
            f"\ntraining step, {sz['train_images']} images {h}x{w}, {sz['train_boxes']} boxes "
            "each, SGD step included (s):",
            f"  gfldet R-50 GFL (stem + stage 1 frozen, BN frozen)   {m['gfldet']:8.3f}"
            f"  ({out['train_gfldet_layout']}, as built)",
            f"  torchvision FCOS R-50 (random weights: all trainable) {m['fcos']:7.3f}",
            f"  torchvision FCOS R-50, gfldet's recipe (frozen)      {m['fcos_same_recipe']:8.3f}",
        ]
    if "atss" in med_:
        h, w = sz["atss_hw"]
        m = med_["atss"]
        lines += [
            f"\nATSS, {sz['atss_images']} images x {sz['atss_gts']} gts, {h}x{w} "
            f"({out['atss_anchors']} anchors): batched {m['batched'] * 1e3:.1f} ms, per-image "
            f"loop {m['loop'] * 1e3:.1f} ms (all-pairs search, batched: "
            f"{m['batched_all_pairs'] * 1e3:.1f} ms)",
        ]
    if "loader" in med_:
        lines += [
            f"\ntraining loader, shapes demo config: {out['loader_images_per_s_0_workers']:.0f} "
            f"images/s with 0 workers, {out['loader_images_per_s_2_workers']:.0f} with 2; demo "
            f"training {out['demo_train_images_per_s']:.1f} images/s, waiting for data "
            f"{100 * out['loader_wait_share']:.1f} % of the time (2 workers)",
        ]
    if "data" in med_:
        m = med_["data"]
        lines += [
            f"\nreading {out['data_images']} images' annotations into a dataset (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in m.items())
            + f"; {out['data_memory_images']} images in memory: "
            f"{out['data_memory_mib']:.0f} MiB",
        ]
    if "lite" in med_:
        h, w = sz["lite_hw"]
        m, p = med_["lite"], out["lite_params"]
        lines += [
            f"\nreal-time models, batch 1, {h}x{w} uint8 RGB in, detections out (ms):",
            f"  gfldet-lite ({p['gfldet_lite'] / 1e6:.2f}M), Predictor, "
            f"{out['lite_candidates']} pairs over the threshold  {m['gfldet_lite'] * 1e3:7.1f}",
            f"  gfldet-lite, random weights' scores                      "
            f"{m['gfldet_lite_random'] * 1e3:7.1f}",
            f"  torchvision SSDlite320 MobileNetV3 ({p['ssdlite'] / 1e6:.2f}M)"
            f"{' ' * 19}{m['ssdlite'] * 1e3:7.1f}",
            f"  torchvision Faster R-CNN MobileNetV3-320 ({p['frcnn_mobilenet_320'] / 1e6:.1f}M)"
            f"{' ' * 12}{m['frcnn_mobilenet_320'] * 1e3:7.1f}",
        ]
    if "coco" in med_:
        lines += [
            f"\nCOCO evaluation, shapes val ({out['coco_eval_images']} images, "
            f"{out['coco_eval_detections']} detections): {out['coco_eval_s']:.2f} s",
        ]
    lines.append("\ntargets:")
    for name, t in out["targets"].items():
        v = t["value"]
        shown = "-" if v is None else f"{v:.3f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {name:<28} {shown:>8}  (target {t['target']})  {verdict}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench.json", help="JSON results")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 3, quick 1)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed runs before (default 1, quick 0)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 run: a smoke test")
    p.add_argument("--data", default="data/shapes", help="shapes dataset (made if missing)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else 3)
    warmup = a.warmup if a.warmup is not None else (0 if a.quick else 1)
    if repeats < 1 or warmup < 0 or a.threads < 1:
        raise SystemExit("bench: --repeats and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(a.threads)
    sz = QUICK if a.quick else Sizes()
    out: dict[str, Any] = {
        "command": " ".join(["scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "settings": {"threads": a.threads, "repeats": repeats, "warmup": warmup,
                     "quick": a.quick, "sections": a.only, "sizes": asdict(sz)},  # fmt: skip
        "load_average_start": load_average(),
        "definitions": DEFINITIONS,
        "times": {}, "medians": {},
    }  # fmt: skip
    start = time.perf_counter()
    data = Path(a.data)
    for section in SECTIONS:
        if section not in a.only:
            continue
        print(f"[{time.perf_counter() - start:5.0f} s] {section} ...", flush=True)
        if section == "infer":
            bench_infer(sz, repeats, warmup, out)
        elif section == "train":
            bench_train(sz, repeats, warmup, out)
        elif section == "atss":
            bench_atss(sz, repeats, warmup, out)
        elif section == "loader":
            bench_loader(sz, repeats, warmup, out, data)
        elif section == "coco":
            bench_coco(sz, repeats, warmup, out, data)
        elif section == "data":
            with tempfile.TemporaryDirectory() as tmp:
                bench_data(sz, repeats, warmup, out, Path(tmp))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bench_lite(sz, repeats, warmup, out, Path(tmp))
    if "atss" in out["medians"] and "train" in out["medians"]:
        # Per image: ATSS at 800x1216 anchors with 30 gts vs the 512x512 step, so this
        # overstates the share in a step at 800x1216 (about 3.7x the pixels) - an upper bound.
        atss_per_image = out["medians"]["atss"]["batched"] / sz.atss_images
        step_per_image = out["medians"]["train"]["gfldet"] / sz.train_images
        out["atss_share"] = atss_per_image / step_per_image
    out["seconds"] = time.perf_counter() - start
    out["load_average_end"] = load_average()
    out["targets"] = check_targets(out)
    table = report(out)
    out["table"] = table
    print("\n" + table)
    write_json_atomic(out, a.out, indent=1)
    print(f"\nwrote {a.out} ({out['seconds']:.0f} s)")
    if a.check and any(t["met"] is False for t in out["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
