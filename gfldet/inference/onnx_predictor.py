"""A detector from an exported ONNX file alone: the file's metadata (gfldet.deploy.metadata) says
how to resize, pad and read it, so no config or checkpoint is needed.

    predictor = OnnxPredictor("model.onnx")              # or runtime="openvino"
    dets = predictor(["a.jpg", rgb_array])               # as gfldet.Predictor returns them

The pre- and post-processing are the PyTorch predictor's: the config's keep-ratio bilinear
resize (shrunk further only where the image would not fit the file's fixed input), top-left
placement, and for files exported without NMS the model's own selection (top nms_pre per
level, score_thr, class-wise NMS at nms_iou, max_per_img) with torchvision's NMS. The padding
is the mean colour, so that it is (about) 0 after normalisation as in PyTorch. What can differ
from PyTorch: PyTorch pads each image only to a multiple of data.size_divisor, the file to its
fixed input size, and a larger padded area changes the features near the padding (and the
GroupNorm statistics of GN heads) a little; files with NMS inside clip the boxes to the image
after NMS, PyTorch before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from ..data.coco import load_image
from ..deploy.metadata import DeployInfo, letterbox, read_metadata
from ..deploy.sessions import open_session
from .results import check_rgb_image, name_detections
from .uncertainty import edge_uncertainty


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    info: DeployInfo,
    img_size: tuple[int, int],
    scale_factor: tuple[float, float],
    dists: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The model's post-processing (GFL.postprocess) on decoded outputs of every location.

    boxes [A, 4] xyxy in input pixels, scores [A, C], dists [A, 4, n+1] or None. Per level the
    nms_pre locations of highest best-class score, boxes clipped to the resized image and
    divided by the resize factor, score_thr, class-wise NMS at nms_iou, the max_per_img best.
    Returns {"boxes", "scores", "labels"} (and "dists", "strides" with dists), in original
    pixels.
    """
    best = scores.amax(-1)
    idx, level_strides, start = [], [], 0
    for (h, w), stride in zip(info.feature_sizes, info.strides, strict=True):
        count = h * w
        if 0 < info.nms_pre < count:
            idx.append(best[start : start + count].topk(info.nms_pre).indices + start)
        else:
            idx.append(torch.arange(start, start + count))
        level_strides.append(torch.full((len(idx[-1]),), float(stride)))
        start += count
    idx, sel_strides = torch.cat(idx), torch.cat(level_strides)
    sel_boxes, sel_scores = boxes[idx], scores[idx]
    h, w = img_size
    upper = sel_boxes.new_tensor([w, h, w, h])
    sel_boxes = torch.minimum(sel_boxes.clamp(min=0), upper)
    sx, sy = scale_factor
    sel_boxes = sel_boxes / sel_boxes.new_tensor([sx, sy, sx, sy])
    ki, ci = (sel_scores > info.score_thr).nonzero(as_tuple=True)
    cand_boxes, cand_scores = sel_boxes[ki], sel_scores[ki, ci]
    keep = batched_nms(cand_boxes, cand_scores, ci, info.nms_iou)[: info.max_per_img]
    det = {"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": ci[keep]}
    if dists is not None:
        det["dists"] = dists[idx[ki[keep]]]
        det["strides"] = sel_strides[ki[keep]]
    return det


class OnnxPredictor:
    """A detector ready for images, from an ONNX file written by `gfldet export` (with or
    without --nms, fp32 or --int8), run in onnxruntime or OpenVINO.

    Calls and results are gfldet.Predictor's: file paths or uint8 RGB arrays [H, W, 3] in,
    one dict per image out with `boxes` [K, 4] (original pixels), `scores`, `labels`,
    `category_ids`, `names`; files with a `dists` output add the edge uncertainty as PyTorch
    does. `info` is the file's metadata.
    """

    def __init__(
        self,
        path: str | Path,
        runtime: str = "onnxruntime",
        threads: int | None = None,
        info: DeployInfo | None = None,
    ) -> None:
        """info: the file's metadata when the caller has read it already."""
        self.path = Path(path)
        self.info = info if info is not None else read_metadata(self.path)
        self.session = open_session(self.path, runtime, threads)
        self.runtime = runtime
        self.class_names: list[str] = list(self.info.classes)
        self.cat_ids: list[int] = [int(c) for c in self.info.category_ids]

    @property
    def has_distributions(self) -> bool:
        """Whether detections carry edge distributions (the file has a `dists` output)."""
        return "dists" in self.info.outputs

    box_name = "from the ONNX file"

    def __call__(self, images: list[str | Path | np.ndarray]) -> list[dict]:
        """images: file paths or RGB uint8 arrays [H, W, 3]. Returns one dict per image."""
        results = []
        for k, im in enumerate(images):
            rgb = load_image(im) if isinstance(im, (str, Path)) else im
            check_rgb_image(rgb, k)
            results.append(self.detect(rgb))
        return results

    def detect(self, rgb: np.ndarray) -> dict:
        """One checked uint8 RGB image -> its detections (see the class docstring)."""
        x, t = letterbox(rgb, self.info)
        outputs = [torch.from_numpy(np.asarray(o)) for o in self.session(x)]
        sx, sy = t["scale_factor"]
        if self.info.nms:
            boxes, scores, labels = outputs[:3]
            h, w = t["img_size"]
            boxes = torch.minimum(boxes.float().clamp(min=0), boxes.new_tensor([w, h, w, h]))
            boxes = boxes / boxes.new_tensor([sx, sy, sx, sy])
            det = {"boxes": boxes, "scores": scores.float(), "labels": labels.long()}
        else:
            dists = outputs[2][0] if self.has_distributions else None
            det = select_detections(
                outputs[0][0], outputs[1][0], self.info, t["img_size"], (sx, sy), dists
            )
            if dists is not None:
                bin_width = float(self.info.bin_width or 1.0)
                det.update(edge_uncertainty(det["dists"], det["strides"], bin_width, (sx, sy)))
        return name_detections(det, self.cat_ids, self.class_names)
