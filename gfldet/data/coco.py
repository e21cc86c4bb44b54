"""COCO-format detection dataset.

Annotations are parsed once into per-image numpy arrays (xyxy boxes, contiguous labels) so that
`__getitem__` only reads and transforms the image. Box filtering follows MMDetection v2's
`CocoDataset._parse_ann_info`; crowd boxes are dropped rather than kept as "ignore" boxes
because the GFL head does not use them.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

# transform(image [H, W, 3] uint8 RGB, boxes [N, 4] float32 xyxy)
#   -> (image [H', W', 3] uint8, boxes [N, 4] float32, info {"img_size", "scale_factor", "flipped"})
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, dict]]


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image as uint8 RGB `[H, W, 3]`.

    `IMREAD_COLOR` turns grayscale, RGBA and 16-bit files into 8-bit 3-channel BGR (and applies
    EXIF orientation), matching mmcv's default `color_type='color'`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"could not decode image file: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_coco_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ann_file}: not a valid JSON file: {e}") from None
    keys = data.keys() if isinstance(data, dict) else ()  # e.g. a top-level list: nothing found
    missing = [k for k in ("images", "annotations", "categories") if k not in keys]
    if missing:
        raise ValueError(f"{ann_file}: missing required key(s) {missing}")
    return data


class CocoDetection(torch.utils.data.Dataset):
    """COCO detection dataset returning `(image, target)`.

    image: uint8 `[3, H, W]` RGB after `transform` (not normalised; the model does that).
    target: `boxes` float32 `[N, 4]` xyxy in transformed-image pixels, `labels` int64 `[N]` in
    0..C-1, `image_id` (original COCO id), `orig_size` (h, w), `img_size` (h, w) after resize and
    before padding, `scale_factor` (w_scale, h_scale) with transformed = original * scale,
    `flipped` bool.

    With `train=True` images without any usable box are skipped; with `train=False` every image
    in the file is kept so evaluation sees the whole split.
    """

    def __init__(
        self, ann_file: str | Path, img_dir: str | Path, transform: Transform, train: bool
    ) -> None:
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.transform, self.train = transform, train
        data = _read_coco_json(self.ann_file)

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)

        for ann in data["annotations"]:
            if ann.get("image_id") not in self.coco.imgs:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann.get('id')} references unknown "
                    f"image_id {ann.get('image_id')}"
                )
            if ann.get("category_id") not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann.get('id')} references unknown "
                    f"category_id {ann.get('category_id')}"
                )

        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.img_ids: list[int] = []
        for img_id in sorted(self.coco.imgs):  # sorted: a stable order whatever the file order
            boxes, labels = self._parse_anns(img_id)
            if train and len(boxes) == 0:
                continue
            self._targets[img_id] = (boxes, labels)
            self.img_ids.append(img_id)

    def _parse_anns(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Usable boxes of one image: float32 `[N, 4]` xyxy clipped to the image, int64 `[N]`."""
        info = self.coco.imgs[img_id]
        img_w, img_h = info["width"], info["height"]
        boxes, labels = [], []
        for ann in self.coco.imgToAnns[img_id]:
            if ann.get("iscrowd", 0):
                continue
            bbox = ann.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} has no valid bbox")
            x, y, w, h = bbox
            # Same rules as MMDetection v2: no overlap with the image, empty area or a side
            # below one pixel means the box is not a usable target.
            inter_w = max(0.0, min(x + w, img_w) - max(x, 0.0))
            inter_h = max(0.0, min(y + h, img_h) - max(y, 0.0))
            if inter_w * inter_h == 0 or ann.get("area", 1) <= 0 or w < 1 or h < 1:
                continue
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, img_w), min(y + h, img_h)])
            labels.append(self.cat_id_to_label[ann["category_id"]])
        return (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.img_ids)

    def group_ids(self) -> np.ndarray:
        """uint8 `[len(self)]`: 1 for landscape (width / height > 1) images, else 0.

        Uses the sizes in the annotation file, so no image is read.
        """
        imgs = self.coco.imgs
        return np.array(
            [imgs[i]["width"] / imgs[i]["height"] > 1 for i in self.img_ids], dtype=np.uint8
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        img_id = self.img_ids[index]
        image = load_image(self.img_dir / self.coco.imgs[img_id]["file_name"])
        boxes, labels = self._targets[img_id]
        orig_size = image.shape[:2]
        # The transform gets a copy of the boxes: they are cached and must stay untouched.
        image, boxes, info = self.transform(image, boxes.copy())
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
