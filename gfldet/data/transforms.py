"""Image/box transforms and collation.

Evaluation and the official COCO recipes: MMDetection v2's `Resize(keep_ratio=True)` (optionally
multi-scale) + `RandomFlip` (`TrainTransform`, `TestTransform`). For users' own, small datasets
`TrainRecipe` adds, each switched on by its own `data.train` option: photometric distortion,
random zoom + shift, mosaic and mixup (see `TrainRecipe`).

Transforms take and return numpy arrays: image uint8 `[H, W, 3]`, boxes float32 `[N, 4]` xyxy,
and add an info dict `{"img_size": (h, w), "scale_factor": (w_scale, h_scale), "flipped": bool}`.

Random transforms take an optional `rng` (a `random.Random`). The training loader gives every
sample its own, seeded from (seed, epoch, position in the epoch), so augmentation does not depend
on worker processes and a resumed run draws exactly what the uninterrupted one would have. Without
an `rng` the global `random` module is used (each DataLoader worker reseeds it, see
`loader.worker_init_fn`).

Pixels are moved with OpenCV (cv2.resize, cv2.warpAffine, lookup tables), which already decodes
and resizes the images: torchvision.transforms.v2's CPU kernels are far slower on uint8 images
(its hue adjustment goes through float HSV) and draw from torch's global generator, whereas here
every random draw comes from the sample's `rng`. Mosaic and mixup are written here: torchvision
has neither. Boxes follow exactly because the geometry is axis-aligned (scale, shift, flip,
crop): no rotation or shear, whose boxes (the hull of the rotated corners) would be loose around
any object that is not a rectangle.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import cv2
import numpy as np
import torch

# One training item as the recipe handles it: image uint8 [H, W, 3] RGB, boxes float32 [N, 4]
# xyxy, labels int64 [N].
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]

# Grey of the area that no image covers after a zoom-out, shift or mosaic (YOLOX's value).
FILL_VALUE = 114
# A box cut by the image border (zoom, shift, mosaic) is clipped to it, and kept only when at
# least this fraction of its area is still inside and both clipped sides are >= MIN_BOX_SIDE
# pixels (the reader's own rule for a usable box, see gfldet.data.coco).
MIN_VISIBLE = 0.25
MIN_BOX_SIDE = 1.0


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


def color_jitter(
    image: np.ndarray,
    rng: random.Random,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> np.ndarray:
    """Random photometric distortion of a uint8 RGB image, with torchvision ColorJitter's ranges.

    Factors are drawn uniformly: brightness b and saturation s in [1 - x, 1 + x] (floored at 0),
    contrast c likewise, the hue shift in [-hue, hue] of the colour circle (hue <= 0.5); a 0
    option draws nothing. All four act in HSV space through lookup tables (one colour conversion
    there and back): V' = b * (c * V + (1 - c) * mean(V)), S' = s * S, H' = H + shift. Scaling V
    is scaling R, G and B together; contrast pulls V towards the image's mean. The ranges match
    YOLO's HSV augmentation (hsv_v = brightness, hsv_s = saturation, hsv_h = hue). All four 0:
    the image itself.
    """

    def factor(x: float) -> float:
        return rng.uniform(max(0.0, 1.0 - x), 1.0 + x) if x > 0 else 1.0

    b, c, s = factor(brightness), factor(contrast), factor(saturation)
    shift = rng.uniform(-hue, hue) if hue > 0 else 0.0
    if (b, c, s, shift) == (1.0, 1.0, 1.0, 0.0):
        return image  # the HSV round trip alone would change some pixels by one level
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)  # hue in 0..255 for the whole circle
    x = np.arange(256, dtype=np.float32)
    mean_v = float(cv2.mean(hsv[..., 2])[0]) if c != 1.0 else 0.0
    lut_h = np.mod(x + round(shift * 256), 256).astype(np.uint8)
    lut_s = np.clip(np.rint(x * s), 0, 255).astype(np.uint8)
    lut_v = np.clip(np.rint(b * (c * x + (1 - c) * mean_v)), 0, 255).astype(np.uint8)
    h, s_, v = cv2.split(hsv)
    hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s_, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def zoom_shift(
    image: np.ndarray,
    boxes: np.ndarray,
    out_size: tuple[int, int],
    zoom: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Puts `image` `[H, W, 3]` zoomed by `zoom` onto an `out_size` (w, h) canvas, its centre
    on the canvas centre moved by `shift` (dx, dy) pixels; uncovered area is FILL_VALUE grey.

    The mapping is x' = zoom * x + offset in continuous pixel coordinates (a pixel spans
    [i, i + 1], as boxes do); at zoom 1 the offset is rounded to whole pixels so the image is
    copied, not resampled. Returns the image and the boxes `[N, 4]` mapped the same way, NOT
    clipped: `clip_boxes` does that and drops the boxes left mostly outside.
    """
    h, w = image.shape[:2]
    ow, oh = out_size
    ox = ow / 2 + shift[0] - zoom * w / 2
    oy = oh / 2 + shift[1] - zoom * h / 2
    if zoom == 1.0:
        ox, oy = float(round(ox)), float(round(oy))
    boxes = boxes * np.float32(zoom) + np.array([ox, oy, ox, oy], dtype=np.float32)
    if zoom == 1.0 and (ox, oy) == (0.0, 0.0) and (w, h) == (ow, oh):
        return image, boxes
    # cv2 addresses pixels by their centres (i, not i + 0.5): the same mapping in its terms.
    half = 0.5 * (zoom - 1.0)
    m = np.array([[zoom, 0.0, ox + half], [0.0, zoom, oy + half]], dtype=np.float64)
    image = cv2.warpAffine(
        image,
        m,
        (ow, oh),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(FILL_VALUE,) * 3,
    )
    return image, boxes


def clip_boxes(
    boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int], full: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clips xyxy boxes `[N, 4]` to an image of `size` (w, h) and drops those left with less than
    MIN_VISIBLE of their area inside or a side under MIN_BOX_SIDE pixels.

    full: the boxes before any clipping, if `boxes` were clipped already (a mosaic clips each
    tile's boxes to its canvas); the visible fraction is measured against them.
    """
    full = boxes if full is None else full
    w, h = size
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, h)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    keep = (cw >= MIN_BOX_SIDE) & (ch >= MIN_BOX_SIDE) & (cw * ch >= MIN_VISIBLE * area)
    return clipped[keep], labels[keep]


def mosaic(
    tiles: list[Sample | None], out_size: tuple[int, int], centre: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Four images on a 2x2 grid (YOLOX / YOLOv5 mosaic) on a grey canvas of twice `out_size`
    (w, h), meeting at `centre` (x, y) on the canvas.

    Each tile is first resized keep-ratio to fit `out_size` (as `resize`); tile k has its
    bottom-right (k=0), bottom-left (1), top-right (2) or top-left (3) corner at the centre and
    is cut at the canvas border. A None tile (an unreadable image skipped under
    data.skip_bad_images) stays grey. Returns (canvas, boxes clipped to the canvas, the same
    boxes unclipped, labels): the canvas still has to be brought to `out_size` (`zoom_shift`,
    then `clip_boxes(boxes, labels, out_size, full)`).
    """
    ow, oh = out_size
    cw, ch = 2 * ow, 2 * oh
    xc, yc = centre
    canvas = np.full((ch, cw, 3), FILL_VALUE, dtype=np.uint8)
    all_boxes, all_labels = [], []
    for k, tile in enumerate(tiles):
        if tile is None:
            continue
        image, boxes, labels = tile
        image, boxes, _ = resize(image, boxes, (max(ow, oh), min(ow, oh)))
        th, tw = image.shape[:2]
        x0 = xc - tw if k in (0, 2) else xc
        y0 = yc - th if k in (0, 1) else yc
        x1, y1, x2, y2 = max(x0, 0), max(y0, 0), min(x0 + tw, cw), min(y0 + th, ch)
        if x2 > x1 and y2 > y1:
            canvas[y1:y2, x1:x2] = image[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
        all_boxes.append(boxes + np.array([x0, y0, x0, y0], dtype=np.float32))
        all_labels.append(labels)
    full = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    boxes = full.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, cw)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, ch)
    return canvas, boxes, full, labels


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

    def draw_scale(self, rng: random.Random) -> tuple[int, int]:
        """The (long, short) resize target of one sample (a draw only with ms_short_range)."""
        if self.ms_short_range is None:
            return self.img_scale
        return (max(self.img_scale), rng.randint(*self.ms_short_range))

    def random_flip(
        self, image: np.ndarray, boxes: np.ndarray, rng: random.Random
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Flips with probability flip_prob (one draw); returns (image, boxes, flipped)."""
        flipped = rng.random() < self.flip_prob
        if flipped:
            image, boxes = hflip(image, boxes)
        return image, boxes, flipped

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, rng: random.Random | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        rng = rng or random  # the module has the same methods as a Random instance
        image, boxes, info = resize(image, boxes, self.draw_scale(rng))
        image, boxes, info["flipped"] = self.random_flip(image, boxes, rng)
        return image, boxes, info


class TrainRecipe:
    """The training augmentation of one sample, drawing other samples for mosaic and mixup.

    Steps, each drawing from the sample's `rng` only when its option is on (so with every new
    option off the draws, and the output, are TrainTransform's):
      1. mosaic, with probability mosaic_prob: the sample and 3 random others on a 2x2 canvas
         around a centre drawn uniformly in its middle half (`mosaic`); the canvas is brought to
         the output size by step 2 (at zoom 1 with no shift: the centre crop). Otherwise the
         keep-ratio resize of TrainTransform. Either way the output has the size that the
         resize gives the sample (multi-scale included), so aspect-ratio grouping still holds.
      2. random zoom + shift (affine_scale [min, max], affine_translate t): the image zoomed by
         a factor drawn uniformly in [min, max] and shifted by up to t of its width / height,
         drawn uniformly, around its centre (`zoom_shift`); uncovered area is grey.
      3. mixup, with probability mixup_prob: blended with a second sample made the same way
         (mosaic or not, same size), weight r ~ Beta(32, 32) (mean 0.5) on the first; both box
         sets are kept.
      4. photometric distortion (`color_jitter`: brightness, contrast, saturation, hue).
      5. horizontal flip (flip_prob), as TrainTransform.
    Boxes moved by steps 1-3 are clipped to the output and dropped when mostly outside
    (`clip_boxes`). `mix_epochs`: mosaic and mixup happen only in epochs (0-based) below it
    (None: every epoch); YOLOX and YOLOv8 train the last epochs on plain images.
    """

    def __init__(
        self,
        img_scale: tuple[int, int] = (1333, 800),
        flip_prob: float = 0.5,
        ms_short_range: tuple[int, int] | None = None,
        *,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        affine_scale: tuple[float, float] | None = None,
        affine_translate: float = 0.0,
        mosaic_prob: float = 0.0,
        mixup_prob: float = 0.0,
        mix_epochs: int | None = None,
    ) -> None:
        if affine_scale is not None and not 0 < affine_scale[0] <= affine_scale[1]:
            raise ValueError(
                f"affine_scale must be (min, max) with 0 < min <= max, got {affine_scale}"
            )
        self.resize_flip = TrainTransform(img_scale, flip_prob, ms_short_range)
        self.jitter = {
            "brightness": brightness,
            "contrast": contrast,
            "saturation": saturation,
            "hue": hue,
        }
        self.affine_scale = tuple(affine_scale) if affine_scale is not None else None
        self.affine_translate = affine_translate
        self.mosaic_prob, self.mixup_prob, self.mix_epochs = mosaic_prob, mixup_prob, mix_epochs

    @property
    def affine(self) -> bool:
        return self.affine_scale is not None or self.affine_translate > 0

    def _compose(
        self,
        load: Callable[[int], Sample | None],
        num_items: int,
        sample: Sample,
        scale: tuple[int, int],
        out_size: tuple[int, int],
        use_mosaic: bool,
        rng: random.Random,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Steps 1-2: `sample` resized to `scale` (long, short), or a mosaic of it and 3 random
        others, brought to `out_size` (w, h). Returns (image, boxes, labels, zoom)."""
        if use_mosaic:
            ow, oh = out_size
            centre = (int(rng.uniform(0.5, 1.5) * ow), int(rng.uniform(0.5, 1.5) * oh))
            others = [load(rng.randrange(num_items)) for _ in range(3)]
            image, boxes, full, labels = mosaic([sample, *others], out_size, centre)
        else:
            image, boxes, labels = sample
            image, boxes, _ = resize(image, boxes, scale)
            full = boxes
            if not self.affine and image.shape[1::-1] == tuple(out_size):
                return image, boxes, labels, 1.0
        zoom, shift = 1.0, (0.0, 0.0)
        if self.affine_scale is not None:
            zoom = rng.uniform(*self.affine_scale)
        if self.affine_translate > 0:
            t = self.affine_translate
            shift = (rng.uniform(-t, t) * out_size[0], rng.uniform(-t, t) * out_size[1])
        image, mapped = zoom_shift(image, np.concatenate([boxes, full]), out_size, zoom, shift)
        boxes, labels = clip_boxes(mapped[: len(boxes)], labels, out_size, mapped[len(boxes) :])
        return image, boxes, labels, zoom

    def __call__(
        self,
        load: Callable[[int], Sample | None],
        num_items: int,
        index: int,
        rng: random.Random | None = None,
        epoch: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict] | None:
        """The augmented sample `index` of `epoch` (0-based): (image, boxes, labels, info).

        load(i): item i of the dataset as a Sample (its boxes and labels copies the recipe may
        change), or None when unreadable (skipped under data.skip_bad_images); num_items: the
        number of items, for drawing mosaic tiles and mixup partners. Returns None when item
        `index` itself is unreadable. info: img_size (h, w); scale_factor, the resize of item
        `index` times the zoom (the shift and the other mosaic tiles are not in it); flipped.
        """
        rng = rng or random  # the module has the same methods as a Random instance
        mixing = self.mix_epochs is None or epoch < self.mix_epochs
        use_mosaic = mixing and self.mosaic_prob > 0 and rng.random() < self.mosaic_prob
        scale = self.resize_flip.draw_scale(rng)
        first = load(index)
        if first is None:
            return None
        h, w = first[0].shape[:2]
        out_w, out_h, w_scale, h_scale = rescale_size(w, h, scale)
        out_size = (out_w, out_h)
        image, boxes, labels, zoom = self._compose(
            load, num_items, first, scale, out_size, use_mosaic, rng
        )
        if mixing and self.mixup_prob > 0 and rng.random() < self.mixup_prob:
            second = load(rng.randrange(num_items))
            if second is not None:
                fit = (max(out_size), min(out_size))
                image2, boxes2, labels2, _ = self._compose(
                    load, num_items, second, fit, out_size, use_mosaic, rng
                )
                r = rng.betavariate(32.0, 32.0)
                image = cv2.addWeighted(image, r, image2, 1.0 - r, 0.0)
                boxes, labels = np.concatenate([boxes, boxes2]), np.concatenate([labels, labels2])
        if any(self.jitter.values()):
            image = color_jitter(image, rng, **self.jitter)
        image, boxes, flipped = self.resize_flip.random_flip(image, boxes, rng)
        info = {
            "img_size": (out_h, out_w),
            "scale_factor": (w_scale * zoom, h_scale * zoom),
            "flipped": flipped,
        }
        return image, boxes, labels, info


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
