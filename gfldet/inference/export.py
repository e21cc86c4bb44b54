"""ONNX export: the detector with its box decoding as one graph (`gfldet export`).

The graph takes one image already resized and padded to the export size (H, W), RGB, as
uint8 [1, 3, H, W] (or float32 pixel values 0..255 with input_dtype="float32"); the
normalisation by the config's mean/std is inside the graph. Without NMS it returns, for all
A = sum_l H_l*W_l locations of the pyramid,

    boxes  [1, A, 4]  xyxy in input pixels, clipped to [0, W] x [0, H]
    scores [1, A, C]  the joint class-IoU scores (sigmoid), before any threshold or NMS
                      (for the ablations with a separate quality branch: class × quality)

With NMS (ONNX NonMaxSuppression, opset >= 11) it returns the model's own post-processing
(test.nms_pre per level, test.score_thr, class-wise NMS at test.nms_iou, test.max_per_img):

    boxes [K, 4], scores [K], labels [K] int64 (0..C-1; the checkpoint's cat_ids map them)

Boxes are in the pixels of the network input: divide by the resize factor to get back to the
original image. The graph has a fixed input size (the pyramid's location grid is a constant).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..model.box_ops import distance2bbox, grid_points
from ..model.detector import GFL

INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


class DecodedGFL(nn.Module):
    """A GFL detector for one fixed input size, with box decoding (and optionally NMS) inside.

    forward: images [1, 3, H, W] uint8 or float (0..255, RGB) -> (boxes [1, A, 4],
    scores [1, A, C]); with nms=True -> (boxes [K, 4], scores [K], labels [K]).
    """

    def __init__(self, model: GFL, img_size: tuple[int, int], nms: bool = False) -> None:
        super().__init__()
        self.model, self.img_size, self.nms = model.eval(), tuple(img_size), nms
        h, w = self.img_size
        with torch.no_grad():  # the feature sizes of this input size, from the network itself
            feats = model.features(torch.zeros(1, 3, h, w))
        self.sizes = [tuple(f.shape[-2:]) for f in feats]
        points, strides = grid_points(self.sizes, model.strides)
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("max_shape", torch.tensor([h, w]), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        x = m.preprocess(images, None)
        cls, reg, quality = m.head(m.features(x))
        if self.nms:
            det = m.postprocess(cls, reg, self.points, self.strides, self.sizes, self.img_size,
                                None, quality)[0]  # fmt: skip
            return det["boxes"], det["scores"], det["labels"]
        scores = m.head.quality.scores(cls, quality)
        dist = m.decode(reg) * self.strides[:, None]
        boxes = distance2bbox(self.points, dist, max_shape=self.max_shape)
        return boxes, scores


def onnx_opset_range() -> tuple[int, int]:
    """The ONNX opsets this torch's (TorchScript-based) exporter writes, (lowest, highest)."""
    try:  # a private module, but the only place torch states its range
        from torch.onnx import _constants as c

        return c.ONNX_MIN_OPSET, c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):
        return 7, 17  # what every torch since 1.13 writes


def export_onnx(
    model: GFL,
    out: str | Path,
    img_size: tuple[int, int],
    input_dtype: str = "uint8",
    nms: bool = False,
    opset: int = 17,
) -> Path:
    """Writes model (eval mode, CPU) to an ONNX file; returns its path.

    img_size: (H, W) of the network input. See the module docstring for inputs and outputs.
    """
    if input_dtype not in INPUT_DTYPES:
        choices = ", ".join(INPUT_DTYPES)
        raise ValueError(f"input dtype must be one of {choices}, got {input_dtype!r}")
    if nms and opset < 11:
        raise ValueError(f"NMS needs ONNX opset >= 11 (NonMaxSuppression), got {opset}")
    h, w = img_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h} x {w}")
    wrapper = DecodedGFL(model.cpu(), (h, w), nms)
    dummy = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8).to(INPUT_DTYPES[input_dtype])
    outputs = ["boxes", "scores", "labels"] if nms else ["boxes", "scores"]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False) needs no extra package (the dynamo one
        # needs onnxscript); its deprecation notice and tracer remarks are not the user's concern.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), buf, input_names=["images"], output_names=outputs,
            opset_version=opset, dynamo=False,
        )  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return out


def default_img_size(cfg: dict) -> tuple[int, int]:
    """(H, W) for the config's test scale, landscape, padded to size_divisor: e.g. 800 x 1344."""
    d = cfg.data
    div = d.size_divisor
    short, long = min(d.val.img_scale), max(d.val.img_scale)
    return -(-short // div) * div, -(-long // div) * div


def check_onnx(path: str | Path, model: GFL, img_size: tuple[int, int], nms: bool = False,
               input_dtype: str = "uint8", seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Runs the ONNX file with onnxruntime and the PyTorch model on the same random image.

    Returns the largest difference per output name, |onnx - torch| / max(1, |torch|): absolute
    for scores in [0, 1], relative for box coordinates in pixels (float32 keeps ~7 digits, so a
    box edge at 500 px agrees to ~1e-4 px at best). Needs the optional onnxruntime package
    (`pip install "gfldet[onnx]"`).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            "checking an ONNX export needs onnxruntime: pip install 'gfldet[onnx]'"
        ) from None
    gen = torch.Generator().manual_seed(seed)
    h, w = img_size
    images = torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8)
    images = images.to(INPUT_DTYPES[input_dtype])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        ref = DecodedGFL(model.cpu(), img_size, nms)(images)
    diffs = {}
    for out, a, b in zip(session.get_outputs(), got, ref, strict=True):
        b = b.numpy()
        if a.shape != b.shape:
            raise ValueError(f"{path}: output {out.name} has shape {a.shape}, PyTorch {b.shape}")
        err = abs(a.astype("float64") - b) / np.maximum(1.0, abs(b.astype("float64")))
        diffs[out.name] = float(err.max()) if a.size else 0.0
    return diffs
