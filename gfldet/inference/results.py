"""What every predictor shares, whatever runs the model: the check of an input image and the
naming of detections (PyTorch: gfldet.inference.predictor; ONNX files:
gfldet.inference.onnx_predictor)."""

from __future__ import annotations

import numpy as np
import torch


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


def name_detections(det: dict, cat_ids: list[int], class_names: list[str]) -> dict:
    """Adds `category_ids` [K] (the dataset's ids) and `names` (class names) to one image's
    detections, from its `labels` (0..C-1). Returns `det`."""
    labels = det["labels"].tolist()
    det["category_ids"] = torch.tensor([cat_ids[i] for i in labels], dtype=torch.int64)
    det["names"] = [class_names[i] for i in labels]
    return det
