"""Image/box transforms (MMDetection v2 `Resize(keep_ratio=True)` + `RandomFlip`) and collation.

Transforms take and return numpy arrays: image uint8 `[H, W, 3]`, boxes float32 `[N, 4]` xyxy,
and add an info dict `{"img_size": (h, w), "scale_factor": (w_scale, h_scale), "flipped": bool}`.

Random transforms take an optional `rng` (a `random.Random`). The training loader gives every
sample its own, seeded from (seed, epoch, position in the epoch), so augmentation does not depend
on worker processes and a resumed run draws exactly what the uninterrupted one would have. Without
an `rng` the global `random` module is used (each DataLoader worker reseeds it, see
`loader.worker_init_fn`).
"""

from __future__ import annotations

import random

import cv2
import numpy as np
import torch


def rescale_size(
    w: int, h: int, scale: tuple[int, int] = (1333, 800)
) -> tuple[int, int, float, float]:
    """Keep-ratio size fitting within `max(scale)` x `min(scale)` (long x short), as mmcv.

    Returns (new_w, new_h, w_scale, h_scale); the two scales differ slightly through rounding.
    E.g. 640x480 at (1333, 800) -> factor 5/3 -> (1067, 800). A side is never rounded to 0
    pixels: a 10000x10 strip at (128, 128) becomes 128x1.
    """
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))
    return new_w, new_h, new_w / w, new_h / h


def resize(
    image: np.ndarray, boxes: np.ndarray, scale: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Keep-ratio bilinear resize of image `[H, W, 3]` and boxes `[N, 4]` into `scale`.

    Boxes are clipped to the resized image (MMDetection's `bbox_clip_border=True`).
    """
    h, w = image.shape[:2]
    new_w, new_h, w_scale, h_scale = rescale_size(w, h, scale)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    boxes = boxes * np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, new_w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, new_h)
    return image, boxes, {"img_size": (new_h, new_w), "scale_factor": (w_scale, h_scale)}


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of image `[H, W, 3]` and xyxy boxes `[N, 4]` (x1' = W - x2, x2' = W - x1)."""
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


class TrainTransform:
    """Keep-ratio resize (optionally multi-scale) then random horizontal flip.

    img_scale: (long, short) target, e.g. (1333, 800).
    ms_short_range: (min, max) -> the short side is drawn uniformly from the integers in
        [min, max] while the long side stays capped at `max(img_scale)`; this is MMDetection's
        `img_scale=[(1333, min), (1333, max)], multiscale_mode='range'`.
    """

    def __init__(
        self,
        img_scale: tuple[int, int] = (1333, 800),
        flip_prob: float = 0.5,
        ms_short_range: tuple[int, int] | None = None,
    ) -> None:
        if ms_short_range is not None and ms_short_range[0] > ms_short_range[1]:
            raise ValueError(f"ms_short_range must be (min, max), got {ms_short_range}")
        self.img_scale = tuple(img_scale)
        self.flip_prob = flip_prob
        self.ms_short_range = tuple(ms_short_range) if ms_short_range is not None else None

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, rng: random.Random | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        rng = rng or random  # the module has the same methods as a Random instance
        scale = self.img_scale
        if self.ms_short_range is not None:
            scale = (max(self.img_scale), rng.randint(*self.ms_short_range))
        image, boxes, info = resize(image, boxes, scale)
        info["flipped"] = rng.random() < self.flip_prob
        if info["flipped"]:
            image, boxes = hflip(image, boxes)
        return image, boxes, info


class TestTransform:
    """Keep-ratio resize to `img_scale` (long, short) only."""

    __test__ = False  # the name starts with "Test"; keep pytest from collecting it

    def __init__(self, img_scale: tuple[int, int] = (1333, 800)) -> None:
        self.img_scale = tuple(img_scale)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, rng: random.Random | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """`rng` is accepted for a uniform interface and unused: nothing here is random."""
        image, boxes, info = resize(image, boxes, self.img_scale)
        info["flipped"] = False
        return image, boxes, info


def collate_batch(
    samples: list[tuple[torch.Tensor, dict] | None], size_divisor: int = 32
) -> tuple[torch.Tensor, list[dict]]:
    """Stacks uint8 images `[3, H_i, W_i]` into `[B, 3, Hp, Wp]`, zero-padded bottom/right.

    Hp, Wp are the batch maxima rounded up to a multiple of `size_divisor` so every FPN level
    divides evenly. Padding is 0 in *pixel* space; MMDetection pads after normalisation, so the
    model must zero the padded area again after normalising (each target's `img_size` gives the
    valid region). Each target gets `pad_size` (h, w): its own image's size rounded up to the
    divisor (MMDetection's pad_shape), the area where its anchors are valid in training,
    whatever else is in the batch. Returns (images, list of targets).

    `None` samples (unreadable images skipped under `data.skip_bad_images`) are left out, so B
    can be smaller than the number of samples; when all are `None` the result is
    `(uint8 [0, 3, d, d], [])` and the caller skips the batch.
    """
    d = max(int(size_divisor), 1)
    samples = [s for s in samples if s is not None]
    if not samples:
        return torch.zeros((0, 3, d, d), dtype=torch.uint8), []
    images, targets = zip(*samples)
    for im, t in zip(images, targets):
        t["pad_size"] = (-(-im.shape[1] // d) * d, -(-im.shape[2] // d) * d)
    hp = max(t["pad_size"][0] for t in targets)
    wp = max(t["pad_size"][1] for t in targets)
    batch = images[0].new_zeros((len(images), 3, hp, wp))
    for dst, im in zip(batch, images):
        dst[:, : im.shape[1], : im.shape[2]].copy_(im)
    return batch, list(targets)
