"""The contenders and inputs of the comparisons: gfldet's models as its configs build them,
torchvision's detectors sized to take the same image unchanged, random boxes, the shapes
dataset, and a copy of a gfldet model whose scores load its post-processing as a trained
model's do."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, fcos_resnet50_fpn, retinanet_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from gfldet.config import SHIPPED_CONFIGS, load_config
from gfldet.data.synth import shapes_overrides, shapes_paths, write_shapes_dataset
from gfldet.model.build import build_model
from gfldet.model.detector import GFL

CONFIGS = SHIPPED_CONFIGS  # the configs shipped with gfldet
RECIPE = CONFIGS / "gfl_r50_fpn_1x_coco.yaml"
RECIPE_V2 = CONFIGS / "gflv2_r50_fpn_1x_coco.yaml"
DEMO = CONFIGS / "shapes_demo.yaml"
# The data items of a --quick smoke run: tiny images, no worker processes.
QUICK_DATA = [
    "data.train.img_scale=[64,64]",
    "data.val.img_scale=[64,64]",
    "data.train.batch_size=2",
    "data.val.batch_size=2",
    "data.train.num_workers=0",
    "data.val.num_workers=0",
]
LITE = CONFIGS / "gfl_lite_320_coco.yaml"
LITE_SHAPES = CONFIGS / "gfl_lite_shapes.yaml"
PEER_CLASSES_LITE = 91  # torchvision's COCO detectors of the lite section: 90 ids + background
PEER_CLASSES = 81  # torchvision's detectors for COCO's 80 classes (+1, their convention)
LOADED_PAIRS = 3000  # (box, class) pairs over the score threshold in the "loaded" case


# -- models -----------------------------------------------------------------------------------
def build_gfl_r50(recipe: Path = RECIPE) -> GFL:
    """gfldet's R-50 GFL as the official recipe (stem + stage 1 frozen, BatchNorm statistics
    frozen), random weights, 80 classes (or the model of another recipe, e.g. GFLv2's)."""
    torch.manual_seed(0)
    cfg = load_config(recipe, ["model.num_classes=80", "model.backbone.pretrained=null"])
    return build_model(cfg.model)


def peer_kwargs(hw: tuple[int, int]) -> dict[str, int]:
    """torchvision's transform keeps an image of exactly this size as it is."""
    return {"min_size": min(hw), "max_size": max(hw)}


def build_fcos(hw: tuple[int, int]) -> FCOS:
    """torchvision's FCOS R-50 with random weights, all trainable (BatchNorm in training mode)."""
    torch.manual_seed(0)
    return fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES, **peer_kwargs(hw)
    )


def build_fcos_same_recipe(hw: tuple[int, int]) -> FCOS:
    """torchvision's FCOS as it trains from ImageNet weights (FrozenBatchNorm2d, stem + stage 1
    frozen): gfldet's recipe, so this isolates the cost of everything but the freezing."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return FCOS(backbone, PEER_CLASSES, **peer_kwargs(hw))


def build_retinanet(hw: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    return retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=PEER_CLASSES, **peer_kwargs(hw)
    )


def layout(model: nn.Module) -> str:
    """The memory format of the model's first conv weight: "channels_last" or "NCHW" (a 1x1
    conv's weight is both, so it looks at the first larger one)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    nhwc = conv.weight.is_contiguous(memory_format=torch.channels_last)
    return "channels_last" if nhwc else "NCHW"


@contextlib.contextmanager
def input_size_check(model: nn.Module, expect: tuple[int, ...], who: str) -> Iterator[None]:
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


# -- inputs -----------------------------------------------------------------------------------
def random_boxes(gen: torch.Generator, shape: tuple[int, ...], hw: tuple[int, int]) -> Tensor:
    """Boxes [*shape, 4] xyxy inside an h x w image, sides 16 px .. half the image."""
    h, w = hw
    size = torch.tensor([w, h], dtype=torch.float32)
    wh = 16 + torch.rand(*shape, 2, generator=gen) * (size / 2 - 16).clamp(min=1)
    xy = torch.rand(*shape, 2, generator=gen) * (size - wh)
    return torch.cat([xy, xy + wh], -1)


def ensure_shapes(data: Path, **synth: Any) -> dict[str, Path]:
    """The shapes dataset at `data` (its paths, as gfldet.data.synth.shapes_paths gives them):
    used as it is when its annotation files exist, otherwise generated with `synth`'s
    arguments (write_shapes_dataset's; none: `make demo`'s dataset)."""
    paths = shapes_paths(data)
    if paths["train_ann"].is_file() and paths["val_ann"].is_file():
        return paths
    print(f"generating the shapes dataset in {data} ...", flush=True)
    return write_shapes_dataset(data, **synth)


def shapes_config(data: Path, overrides: tuple[str, ...] = ()) -> Any:
    """The demo config on the shapes dataset in `data` (generated with the defaults when
    missing), with `overrides`."""
    return load_config(DEMO, [*shapes_overrides(ensure_shapes(data)), *overrides])


def train_step(model: nn.Module, opt: torch.optim.Optimizer, images: Any, targets: list) -> float:
    """Forward with targets, summed loss, backward, optimizer step; returns the loss."""
    losses = model(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


# -- scores as a trained model's ----------------------------------------------------------------
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


def loaded_copy(model: GFL, images: Tensor, targets: list[dict], test_cfg: Any) -> GFL:
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
        raise RuntimeError(
            "bench: the loaded case shifts model.head.gfl_cls.bias; this head has no such conv bias"
        )
    with torch.no_grad():
        cls_conv.bias += shift
    return loaded


def count_candidates(model: GFL, images: Tensor, targets: list[dict], test_cfg: Any) -> int:
    """(box, class) pairs that enter gfldet's NMS for these images."""
    cls, sizes = head_outputs(model, images, targets)
    kept = kept_logits(cls, sizes, test_cfg.nms_pre)
    return int((kept.sigmoid() > test_cfg.score_thr).sum())
