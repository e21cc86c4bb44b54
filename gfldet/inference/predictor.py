"""Inference on images with a trained checkpoint: the Python API behind `gfldet infer`."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint, load_model_weights
from ..core.runtime import resolve_device, resolve_num_classes
from ..data.coco import load_image
from ..data.transforms import TestTransform, collate_batch
from ..model.build import build_model
from ..model.detector import GFL
from ..model.fuse import prepare_for_inference
from .uncertainty import edge_uncertainty

log = logging.getLogger("gfldet")


def load_trained_model(
    cfg: dict,
    checkpoint: str | Path,
    device: torch.device,
    use_ema: bool = True,
    fast: bool = False,
) -> tuple[GFL, dict]:
    """Builds the config's model and loads a checkpoint into it (eval mode).

    fast: return prepare_for_inference(model) instead (BatchNorm folded into the convs,
    channels_last; same detections up to float rounding; inference only, not a checkpoint).

    Returns (model, checkpoint state). model.num_classes is taken from the checkpoint's class
    list when the config leaves it unset. A checkpoint of a run with train.ema holds the
    averaged weights under "ema" beside the raw ones under "model"; they are used unless
    `use_ema` is False (they are what the run evaluated).
    """
    state = load_checkpoint(checkpoint)
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.pretrained = None  # the checkpoint holds every weight
    if state.get("classes"):
        resolve_num_classes(cfg, state["classes"], str(checkpoint))
    elif cfg.model.num_classes is None:
        head_bias = state["model"].get("head.gfl_cls.bias")
        if head_bias is None:
            raise ValueError(f"{checkpoint}: no class list and no head.gfl_cls.bias")
        cfg.model.num_classes = int(head_bias.shape[0])
    model = build_model(cfg.model)
    key = "ema" if use_ema and "ema" in state else "model"
    load_model_weights(model, state, checkpoint, key=key)
    if key == "ema":
        log.info("%s: using the EMA weights", checkpoint)
    model = model.to(device).eval()
    return (prepare_for_inference(model) if fast else model), state


def check_rgb_image(image: object, index: int = 0) -> None:
    """Raises ValueError unless `image` is a numpy uint8 RGB array [H, W, 3] (what cv2 and PIL
    give, converted to RGB): a float image in 0..1 would otherwise be read as nearly black."""
    where = f"Predictor input {index}"
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{where} is a {type(image).__name__}: give a file path or a numpy uint8 RGB array "
            "[H, W, 3] (e.g. tensor.permute(1, 2, 0).numpy() for a CHW uint8 tensor)"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"{where} has dtype {image.dtype}: give uint8 RGB pixels 0..255 (for a float image "
            "in 0..1: (image * 255).round().astype(np.uint8))"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{where} has shape {list(image.shape)}: give a uint8 RGB array [H, W, 3] (gray: "
            "np.repeat(img[..., None], 3, 2); RGBA: img[..., :3]; CHW: img.transpose(1, 2, 0))"
        )


class Predictor:
    """A detector ready for images.

    >>> cfg = gfldet.load_config("configs/shapes_demo.yaml")
    >>> p = Predictor(cfg, "work_dirs/shapes_demo/latest.pth")
    >>> dets = p(["a.jpg", rgb_array])  # one dict per image

    Each result holds `boxes` [K, 4] xyxy in original pixels, `scores` [K], `labels` [K]
    (0..C-1), `category_ids` [K] (the dataset's ids) and `names` (list of class names). Models
    with edge distributions (model.head.box general) add `dists` [K, 4, n+1], `strides` [K],
    and their summaries `edge_std` [K, 4] (original pixels, as the boxes) and `edge_top2`
    [K, 4] (see gfldet.inference.uncertainty).
    """

    def __init__(
        self, cfg: dict, checkpoint: str | Path, device: str = "auto", use_ema: bool = True
    ) -> None:
        self.device = resolve_device(device)
        self.model, state = load_trained_model(cfg, checkpoint, self.device, use_ema, fast=True)
        n = self.model.num_classes
        self.class_names: list[str] = list(state.get("classes") or [f"class_{i}" for i in range(n)])
        self.cat_ids: list[int] = [int(c) for c in state.get("cat_ids") or range(n)]
        self.transform = TestTransform(tuple(cfg.data.val.img_scale))
        self.size_divisor = cfg.data.size_divisor

    def __call__(self, images: list[str | Path | np.ndarray]) -> list[dict]:
        """images: file paths or RGB uint8 arrays [H, W, 3]. Returns one dict per image."""
        samples = []
        for k, im in enumerate(images):
            rgb = load_image(im) if isinstance(im, (str, Path)) else im
            check_rgb_image(rgb, k)
            out, _, info = self.transform(rgb, np.zeros((0, 4), np.float32))
            tensor = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
            samples.append((tensor, info))
        batch, targets = collate_batch(samples, self.size_divisor)
        dets = self.model.predict(batch.to(self.device), targets)
        for d, t in zip(dets, targets, strict=True):
            for k in ("boxes", "scores", "labels", "dists", "strides"):
                if k in d:
                    d[k] = d[k].cpu()
            if "dists" in d:
                # scale_factor is this image's resize: spreads come out in original pixels.
                bin_width = self.model.head.box.bin_width
                d.update(edge_uncertainty(d["dists"], d["strides"], bin_width, t["scale_factor"]))
            d["category_ids"] = torch.tensor([self.cat_ids[i] for i in d["labels"].tolist()])
            d["names"] = [self.class_names[i] for i in d["labels"].tolist()]
        return dets
