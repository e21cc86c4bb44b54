"""COCO-format detection dataset.

Annotations are checked and parsed once into per-image numpy arrays (xyxy boxes, contiguous
labels) so that `__getitem__` only reads and transforms the image. Box filtering follows
MMDetection v2's `CocoDataset._parse_ann_info`; crowd boxes are dropped rather than kept as
"ignore" boxes because the GFL head does not use them.

Bad input is an error naming the file, key and value, except where `skip_bad=True`
(`data.skip_bad_images`) turns it into a skip with a warning: unreadable image files (skipped
when loaded) and annotations with a NaN / infinite / negative-size box (left out of the index).
Structural faults of the annotation file (not JSON, missing keys, unknown ids) are always errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

from gfldet.core.options import short_repr

log = logging.getLogger("gfldet")

# transform(image [H, W, 3] uint8 RGB, boxes [N, 4] float32 xyxy, rng random.Random | None)
#   -> (image [H', W', 3] uint8, boxes [N, 4] float32, info {"img_size", "scale_factor", "flipped"})
Transform = Callable[
    [np.ndarray, np.ndarray, random.Random | None], tuple[np.ndarray, np.ndarray, dict]
]

# Largest image (width * height) we decode: OpenCV's own default limit
# (OPENCV_IO_MAX_IMAGE_PIXELS). Over it, cv2 returns nothing; we say why instead.
MAX_IMAGE_PIXELS = 1 << 30
# Files taken as images where a folder is read (infer inputs, YOLO image folders).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class BadImageError(ValueError):
    """An image file that cannot be used: missing, empty, truncated, not an image, too large,
    or not the size that the annotation file gives."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception is re-raised in the main process as
        # type(e)("Caught ... Original Traceback ...\n...BadImageError: <message>\n"); keep the
        # original one-line message so the command line can print it as it is.
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rstrip().rsplit(marker, 1)[1]
        super().__init__(message)


def _jpeg_truncated(data: bytes) -> bool:
    """True for a JPEG cut short: no end-of-image marker (FFD9) after its last scan (FFDA).

    OpenCV decodes such a file without error (the missing rows come out grey; libjpeg only
    prints a warning), so it has to be checked here. Inside scan data 0xFF is always followed
    by 0x00 or a restart marker, so neither marker can occur there by chance.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image as uint8 RGB `[H, W, 3]`; raises BadImageError naming the file.

    `IMREAD_COLOR` turns grayscale, RGBA and 16-bit files into 8-bit 3-channel BGR (and applies
    EXIF orientation), matching mmcv's default `color_type='color'`.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"image file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadImageError(f"cannot read image file {path}: {e.strerror}") from None
    if not data:
        raise BadImageError(f"image file is empty: {path}")
    if _jpeg_truncated(data):
        raise BadImageError(f"truncated JPEG file (no end-of-image marker): {path}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadImageError(f"not a readable image (unknown format, corrupt or truncated): {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_coco_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ann_file}: not a valid JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{ann_file}: top level must be a JSON object with images, annotations and "
            f"categories, got a {type(data).__name__}"
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{ann_file}: missing required key(s) {missing}")
    for k in ("images", "annotations", "categories"):
        if not isinstance(data[k], list):
            raise ValueError(f"{ann_file}: '{k}' must be a list, got {type(data[k]).__name__}")
    return data


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_images_and_categories(ann_file: Path, data: dict) -> None:
    ids: set = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise ValueError(f"{ann_file}: images[{i}] is not an object: {short_repr(im)}")
        for key in ("id", "file_name", "width", "height"):
            if key not in im:
                raise ValueError(
                    f"{ann_file}: images[{i}] (id {short_repr(im.get('id'))}) has no '{key}'"
                )
        if not _is_id(im["id"]):
            raise ValueError(
                f"{ann_file}: images[{i}]: image id {short_repr(im['id'])} must be an integer "
                "(COCO ids are)"
            )
        w, h = im["width"], im["height"]
        if not all(_is_number(v) and v >= 1 and float(v).is_integer() for v in (w, h)):
            raise ValueError(
                f"{ann_file}: image {short_repr(im['id'])} has an invalid size: width "
                f"{short_repr(w)}, height {short_repr(h)}"
            )
        if im["id"] in ids:
            raise ValueError(f"{ann_file}: image id {short_repr(im['id'])} appears more than once")
        ids.add(im["id"])
    cat_ids: set = set()
    names: dict[str, int] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise ValueError(
                f"{ann_file}: categories[{i}] needs an 'id' and a 'name': {short_repr(cat)}"
            )
        if not _is_id(cat["id"]):
            raise ValueError(
                f"{ann_file}: categories[{i}]: category id {short_repr(cat['id'])} must be an "
                "integer"
            )
        if cat["id"] in cat_ids:
            raise ValueError(
                f"{ann_file}: category id {short_repr(cat['id'])} appears more than once"
            )
        cat_ids.add(cat["id"])
        name = str(cat["name"])
        if name in names:
            raise ValueError(
                f"{ann_file}: category name {short_repr(name)} is given twice (category ids "
                f"{names[name]} and {cat['id']}): per-class results would merge the two"
            )
        names[name] = cat["id"]


def _bbox_problem(ann: dict) -> str | None:
    """Why an annotation's bbox is unusable (not 4 numbers, NaN / inf, negative size), or None."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        return f"bbox must be 4 numbers [x, y, w, h], got {short_repr(bbox)}"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox has a non-finite value: {short_repr(bbox)}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox has a negative width or height: {short_repr(bbox)}"
    return None


def _check_annotation(ann_file: Path, i: int, ann: object, image_ids: set, cat_ids: set) -> None:
    """Raises ValueError for an annotation that no setting can use: not an object, an id that
    is not an integer, an image or category id that the file does not have."""
    if not isinstance(ann, dict) or "id" not in ann:
        raise ValueError(f"{ann_file}: annotations[{i}] has no 'id': {short_repr(ann)}")
    if not _is_id(ann["id"]):
        raise ValueError(
            f"{ann_file}: annotations[{i}]: annotation id {short_repr(ann['id'])} must be an "
            "integer"
        )
    if ann.get("image_id") not in image_ids:
        raise ValueError(
            f"{ann_file}: annotation {ann['id']} references unknown "
            f"image_id {short_repr(ann.get('image_id'))}"
        )
    if ann.get("category_id") not in cat_ids:
        raise ValueError(
            f"{ann_file}: annotation {ann['id']} references unknown "
            f"category_id {short_repr(ann.get('category_id'))}"
        )


def _renumber(anns: list[dict], duplicates: list[dict], used: set[int]) -> list[dict]:
    """`anns` with each annotation of `duplicates` (an id seen before it) given a new id above
    every id in `used`."""
    next_id = max(used) + 1
    renumbered = {id(a): next_id + k for k, a in enumerate(duplicates)}
    return [{**a, "id": renumbered[id(a)]} if id(a) in renumbered else a for a in anns]


def clean_annotations(ann_file: Path, data: dict, skip_bad: bool) -> tuple[list[dict], int]:
    """(the annotations that evaluation and training can use, how many were left out).

    Each annotation is checked (_check_annotation: always an error). With skip_bad, one with an
    unusable bbox (_bbox_problem) is left out and a repeated id renumbered (pycocotools would
    evaluate one of the two boxes twice and drop the other), each with one warning; without, either
    is a ValueError naming the file and the annotation. A missing `iscrowd` / `area`, which
    pycocotools' evaluation reads for every ground-truth box, becomes 0 / the box's w x h.
    """
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    anns, ann_ids, duplicates, filled, invalid = [], set(), [], 0, 0
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(ann_file, i, ann, image_ids, cat_ids)
        problem = _bbox_problem(ann)
        if problem is not None:
            if not skip_bad:
                raise ValueError(
                    f"{ann_file}: annotation {ann['id']} (image {ann['image_id']}): "
                    f"{problem} (data.skip_bad_images: true leaves such boxes out)"
                )
            if invalid == 0:
                log.warning("%s: left out annotation %s: %s", ann_file, ann["id"], problem)
            log.debug("%s: annotation %s: %s", ann_file, ann["id"], problem)
            invalid += 1
            continue
        if ann["id"] in ann_ids:
            if not skip_bad:
                raise ValueError(
                    f"{ann_file}: annotation id {ann['id']} appears more than once "
                    "(data.skip_bad_images: true renumbers duplicates)"
                )
            duplicates.append(ann)
            log.debug("%s: annotation id %s appears more than once", ann_file, ann["id"])
        ann_ids.add(ann["id"])
        if "iscrowd" not in ann or "area" not in ann:
            w, h = ann["bbox"][2:]
            ann = {"iscrowd": 0, "area": float(w * h), **ann}
            filled += 1
        anns.append(ann)
    if duplicates:
        anns = _renumber(anns, duplicates, ann_ids)
        log.warning(
            "%s: renumbered %d duplicate annotation id(s), e.g. %s (data.skip_bad_images)",
            ann_file,
            len(duplicates),
            duplicates[0]["id"],
        )
    if filled:
        log.info(
            "%s: %d annotation(s) without 'iscrowd' / 'area' taken as iscrowd 0 and area "
            "w x h of their box",
            ann_file,
            filled,
        )
    if invalid:
        log.warning(
            "%s: left out %d annotation(s) with an invalid box (data.skip_bad_images)",
            ann_file,
            invalid,
        )
    return anns, invalid


def coco_index(data: dict) -> COCO:
    """pycocotools' index of a checked COCO dict (the evaluator's ground truth too)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def category_mapping(coco: COCO) -> tuple[list[int], list[str], dict[int, int]]:
    """(category ids sorted, their names, {category id: label}): label k is the k-th smallest
    id, so the labels 0..C-1 do not depend on the order of the file's categories."""
    cat_ids = sorted(coco.cats)
    names = [coco.cats[c]["name"] for c in cat_ids]
    return cat_ids, names, {c: i for i, c in enumerate(cat_ids)}


def usable_boxes(
    info: dict, anns: list[dict], cat_id_to_label: dict[int, int], box_stats: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The training targets of one image (`info`: its entry in the file): float32 `[N, 4]`
    xyxy boxes clipped to the image and int64 `[N]` labels.

    Same rules as MMDetection v2: crowd boxes are not targets; a box with no overlap with the
    image, an area <= 0 or a side below one pixel is dropped; `box_stats` counts the boxes
    "dropped" and "clipped".
    """
    img_w, img_h = info["width"], info["height"]
    boxes, labels = [], []
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        inter_w = max(0.0, min(x + w, img_w) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, img_h) - max(y, 0.0))
        area = ann.get("area", 1)
        if inter_w * inter_h == 0 or not (_is_number(area) and area > 0) or w < 1 or h < 1:
            box_stats["dropped"] += 1
            continue
        box = [max(x, 0.0), max(y, 0.0), min(x + w, img_w), min(y + h, img_h)]
        if box != [x, y, x + w, y + h]:
            box_stats["clipped"] += 1
        boxes.append(box)
        labels.append(cat_id_to_label[ann["category_id"]])
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


class CocoDetection(torch.utils.data.Dataset):
    """COCO detection dataset returning `(image, target)`.

    image: uint8 `[3, H, W]` RGB after `transform` (not normalised; the model does that).
    target: `boxes` float32 `[N, 4]` xyxy in transformed-image pixels, `labels` int64 `[N]` in
    0..C-1, `image_id` (original COCO id), `orig_size` (h, w), `img_size` (h, w) after resize and
    before padding, `scale_factor` (w_scale, h_scale) with transformed = original * scale,
    `flipped` bool.

    With `train=True` and `filter_empty=True` (MMDetection's filtering, the COCO recipes')
    images without any usable box are skipped; with `filter_empty=False` they are kept as
    background images (negatives, N = 0). With `train=False` every image in the file is kept so
    evaluation sees the whole split. A training split without a single usable box is an error.

    skip_bad: an unreadable image makes `__getitem__` return None (with a warning) instead of
    raising, and an annotation with an invalid box is left out (counted in `box_stats`).
    data: the annotations as a COCO dict already in memory (a VOC or YOLO set read by
    gfldet.data.loader.read_annotations) instead of the json file `ann_file`.
    `box_stats` also counts boxes clipped to the image and boxes dropped as unusable.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transform: Transform,
        train: bool,
        skip_bad: bool = False,
        data: dict | None = None,
        filter_empty: bool = True,
    ) -> None:
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.transform, self.train, self.skip_bad = transform, train, skip_bad
        # A dict read from another format (gfldet.data.loader.read_annotations) goes through
        # the same checks as a COCO file; errors name `ann_file` either way.
        data = read_coco_json(self.ann_file) if data is None else data
        _check_images_and_categories(self.ann_file, data)
        anns, invalid = clean_annotations(self.ann_file, data, skip_bad)
        self.box_stats = {"clipped": 0, "dropped": 0, "invalid": invalid}
        self.coco = coco_index({**data, "annotations": anns})
        self.cat_ids, self.class_names, self.cat_id_to_label = category_mapping(self.coco)
        self.num_classes = len(self.cat_ids)

        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for img_id in sorted(self.coco.imgs):  # sorted: a stable order whatever the file order
            self._targets[img_id] = usable_boxes(
                self.coco.imgs[img_id],
                self.coco.imgToAnns[img_id],
                self.cat_id_to_label,
                self.box_stats,
            )
        self.img_ids: list[int] = [
            i
            for i, (boxes, _) in self._targets.items()
            if not (train and filter_empty) or len(boxes)
        ]
        self._targets = {i: self._targets[i] for i in self.img_ids}
        s = self.box_stats
        if s["clipped"] or s["dropped"]:
            log.info(
                "%s: %d box(es) clipped to their image; %d dropped (no overlap with the image, "
                "a side under 1 pixel, or area <= 0)",
                self.ann_file,
                s["clipped"],
                s["dropped"],
            )
        if train and not any(len(b) for b, _ in self._targets.values()):
            raise ValueError(
                f"{self.ann_file}: no image has a usable box ({len(data['images'])} images, "
                f"{len(anns)} annotations, {s['dropped']} boxes dropped as unusable)"
            )

    def __len__(self) -> int:
        return len(self.img_ids)

    def missing_images(self) -> list[Path]:
        """The image files of this split that do not exist (a stat per image: about a second
        for COCO's 118k training images)."""
        imgs = self.coco.imgs
        paths = (self.img_dir / imgs[i]["file_name"] for i in self.img_ids)
        return [p for p in paths if not p.is_file()]

    def group_ids(self) -> np.ndarray:
        """uint8 `[len(self)]`: 1 for landscape (width / height > 1) images, else 0.

        Uses the sizes in the annotation file, so no image is read.
        """
        imgs = self.coco.imgs
        return np.array(
            [imgs[i]["width"] / imgs[i]["height"] > 1 for i in self.img_ids], dtype=np.uint8
        )

    def read_image(self, img_id: int) -> np.ndarray:
        """The image of `img_id` as uint8 RGB `[H, W, 3]`, checked against the annotation file's
        width and height (boxes are in those pixels); raises BadImageError."""
        info = self.coco.imgs[img_id]
        path = self.img_dir / info["file_name"]
        w, h = int(info["width"]), int(info["height"])
        if w * h > MAX_IMAGE_PIXELS:
            raise BadImageError(
                f"image too large: {path} is {w}x{h} = {w * h} pixels, over the limit of "
                f"{MAX_IMAGE_PIXELS}; downscale it (and its boxes) beforehand"
            )
        image = load_image(path)
        if image.shape[:2] != (h, w):
            raise BadImageError(
                f"{path} is {image.shape[1]}x{image.shape[0]} (width x height) but "
                f"{self.ann_file} says {w}x{h}, so its boxes would be misplaced (EXIF rotation? "
                "fix the image or its width/height)"
            )
        return image

    def read_image_or_skip(self, img_id: int) -> np.ndarray | None:
        """read_image, or None for an unreadable image under skip_bad (with a warning)."""
        try:
            return self.read_image(img_id)
        except BadImageError as e:
            if not self.skip_bad:
                raise
            log.warning("skipped an unreadable image (data.skip_bad_images): %s", e)
            return None

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict] | None:
        """key: an index, or (index, augmentation seed) as `GroupedBatchSampler` yields them.

        Returns None for an unreadable image when `skip_bad` is set (see `collate_batch`).
        """
        index, seed = key if isinstance(key, tuple) else (key, None)
        img_id = self.img_ids[index]
        image = self.read_image_or_skip(img_id)
        if image is None:
            return None
        boxes, labels = self._targets[img_id]
        orig_size = image.shape[:2]
        rng = random.Random(seed) if seed is not None else None
        # The transform gets a copy of the boxes: they are cached and must stay untouched.
        image, boxes, info = self.transform(image, boxes.copy(), rng)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": int(img_id),
            "orig_size": (int(orig_size[0]), int(orig_size[1])),
            "img_size": tuple(int(s) for s in info["img_size"]),
            "scale_factor": tuple(float(s) for s in info["scale_factor"]),
            "flipped": bool(info["flipped"]),
        }
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target
