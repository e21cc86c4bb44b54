"""lite: latency, batch 1, at Sizes.lite_hw, from a uint8 RGB image: gfldet-lite
(configs/gfl_lite_320_coco.yaml) through gfldet.Predictor (a checkpoint of random weights, as
users run it) vs torchvision's ssdlite320_mobilenet_v3_large and
fasterrcnn_mobilenet_v3_large_320_fpn."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from gfldet.config import load_config
from gfldet.core.checkpoint import save_checkpoint
from gfldet.inference.predictor import Predictor
from gfldet.model.build import build_model
from gfldet.model.fuse import prepare_for_inference

from ..models import LITE, PEER_CLASSES_LITE, count_candidates, head_outputs, loaded_copy
from ..timing import measure, median
from . import Settings


def measure_lite(s: Settings, out: dict[str, Any], tmp: Path) -> None:
    h, w = s.sizes.lite_hw
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    sets = ["model.num_classes=80", "model.backbone.pretrained=null"]
    cfg = load_config(LITE, [*sets, f"data.val.img_scale=[{max(h, w)},{min(h, w)}]"])
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
    fast = prepare_for_inference(model)
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
        times = measure(fns, s.repeats, s.warmup)
    m = {k: median(v) for k, v in times.items()}
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


def run(s: Settings, out: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        measure_lite(s, out, Path(tmp))


def report(out: dict[str, Any]) -> list[str]:
    h, w = out["settings"]["sizes"]["lite_hw"]
    m, p = out["medians"]["lite"], out["lite_params"]
    return [
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
