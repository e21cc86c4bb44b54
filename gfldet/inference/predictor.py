"""Inference on images with a trained checkpoint: the Python API behind `gfldet infer`."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint, load_model_weights
from ..core.runtime import resolve_device, resolve_num_classes
from ..data.coco import load_image
from ..data.transforms import TestTransform, collate_batch
from ..model.build import build_model
from ..model.detector import GFL
from ..model.fuse import prepare_for_inference
from .results import check_rgb_image, name_detections
from .uncertainty import edge_uncertainty

if TYPE_CHECKING:
    from .onnx_predictor import OnnxPredictor

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

    bf16: run the network (backbone, neck, head) under bfloat16 autocast, the post-processing
    in float32; fast only on CPUs with AMX / AVX512-BF16 (gfldet.deploy.machine.has_bf16) and
    on GPUs. For an exported ONNX file, see Predictor.from_onnx.
    """

    def __init__(
        self,
        cfg: dict,
        checkpoint: str | Path,
        device: str = "auto",
        use_ema: bool = True,
        bf16: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.model, state = load_trained_model(cfg, checkpoint, self.device, use_ema, fast=True)
        n = self.model.num_classes
        self.class_names: list[str] = list(state.get("classes") or [f"class_{i}" for i in range(n)])
        self.cat_ids: list[int] = [int(c) for c in state.get("cat_ids") or range(n)]
        self.transform = TestTransform(tuple(cfg.data.val.img_scale))
        self.size_divisor = cfg.data.size_divisor
        self.bf16 = bf16

    @staticmethod
    def from_onnx(
        path: str | Path, runtime: str = "onnxruntime", threads: int | None = None
    ) -> OnnxPredictor:
        """A predictor for an ONNX file of `gfldet export`, needing no config: its metadata
        carries the classes, resize and post-processing (see gfldet.inference.onnx_predictor).
        """
        from .onnx_predictor import OnnxPredictor

        return OnnxPredictor(path, runtime, threads)

    @property
    def has_distributions(self) -> bool:
        """Whether detections carry edge distributions (model.head.box general)."""
        return bool(self.model.head.box.has_distributions)

    @property
    def box_name(self) -> str:
        """The model's box representation (model.head.box), for messages."""
        return str(self.model.head.box.name)

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
        batch = batch.to(self.device)
        predict = self._predict_bf16 if self.bf16 else self.model.predict
        dets = predict(batch, targets)
        for d, t in zip(dets, targets, strict=True):
            for k in ("boxes", "scores", "labels", "dists", "strides"):
                if k in d:
                    d[k] = d[k].cpu()
            if "dists" in d:
                # scale_factor is this image's resize: spreads come out in original pixels.
                bin_width = self.model.head.box.bin_width
                d.update(edge_uncertainty(d["dists"], d["strides"], bin_width, t["scale_factor"]))
            name_detections(d, self.cat_ids, self.class_names)
        return dets

    @torch.inference_mode()
    def _predict_bf16(self, images: torch.Tensor, targets: list[dict]) -> list[dict]:
        """GFL.forward in eval mode with the network under bfloat16 autocast and the box
        decoding, thresholds and NMS in float32 (bf16's 8-bit mantissa would move box edges
        by pixels)."""
        m = self.model
        x = m.preprocess(images, targets)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            feats = m.features(x)
            cls, reg, quality = m.head(feats)
        cls, reg = cls.float(), reg.float()
        quality = quality.float() if quality is not None else None
        sizes = [tuple(f.shape[-2:]) for f in feats]
        points, strides = m.grid(sizes, cls.device)
        return m.postprocess(cls, reg, points, strides, sizes, images.shape[-2:], targets, quality)
