"""`gfldet data show`: the ground truth of a few images of a split, drawn, to check what the
model is taught (class names right, boxes on their objects) before spending hours on it.

Each image is written as OUT/<split>_<image id>_<file stem>.jpg with its boxes in their class
colors and their class names (labels laid out so none hides another). With `augmented`, the
training pipeline's output is drawn instead (resize, flip, color, affine, mosaic, mixup: what
the model is fed), each image with its own seeded augmentation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.draw import draw_boxes, write_jpeg
from ..core.files import write_json_atomic
from .coco import CocoDetection
from .loader import build_dataset

if TYPE_CHECKING:  # the config layer sits above the jobs: a type only, never imported here
    from ..config import Config

SPLITS = ("train", "val")
MANIFEST = "data_show.json"  # the files `data show` wrote into its folder


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_out_dir(cfg: Config, out_dir: Path) -> None:
    """Refuses an output folder inside a split's image folder (its drawings would be read as
    images of the split by the YOLO reader, `data check` and `infer` globs) or that is a file."""
    for name in SPLITS:
        img_dir = Path(getattr(cfg.data, name).img_dir)
        if _inside(out_dir, img_dir):
            raise ValueError(
                f"--out {out_dir} is inside the image folder of data.{name} ({img_dir}): the "
                "drawings would become images of the dataset; choose a folder outside it"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} is a file, not a folder")


def _safe_stem(file_name: str) -> str:
    stem = Path(str(file_name)).stem
    return re.sub(r"[^\w.-]+", "_", stem)[:60] or "image"


def _written_before(out_dir: Path) -> set[str]:
    try:
        files = json.loads((out_dir / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def show_ground_truth(
    cfg: Config,
    split: str,
    num: int,
    out_dir: str | Path,
    seed: int = 0,
    augmented: bool = False,
) -> list[Path]:
    """Draws the ground truth of `num` images of `split` ("train" or "val"), chosen at random
    with `seed`, into `out_dir`; returns the files written (fewer when the split is smaller).

    Without `augmented`: each image as it is on disk, with every box of the annotations the
    evaluation uses (crowd regions labelled "name (crowd)"), background images included. With
    `augmented` (train only): the training pipeline's output and the boxes it produced.
    Files that `data show` wrote earlier are replaced; any other file of the same name is not
    (a ValueError names it). The folder may not lie inside a split's image folder.
    """
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    if augmented and split != "train":
        raise ValueError("--augmented draws the training pipeline's output: use --split train")
    out_dir = Path(out_dir)
    check_out_dir(cfg, out_dir)
    d = cfg.data
    split_cfg = getattr(d, split)
    epochs = cfg.train.epochs if augmented else None
    ds = build_dataset(split_cfg, augmented, d.skip_bad_images, d.classes, epochs)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(ds), size=min(num, len(ds)), replace=False).tolist())
    aug_seeds = rng.integers(0, 2**31, size=len(picks)).tolist()

    names = {}
    for index in picks:
        img_id = ds.img_ids[index]
        stem = _safe_stem(ds.coco.imgs[img_id].get("file_name", img_id))
        names[index] = f"{split}_{img_id}_{stem}.jpg"
    ours = _written_before(out_dir)
    for name in names.values():
        if (out_dir / name).exists() and name not in ours:
            raise ValueError(
                f"{out_dir / name} exists and was not written by gfldet data show: not "
                "overwritten; choose another --out"
            )

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, aug_seed in zip(picks, aug_seeds, strict=True):
        img_id = ds.img_ids[index]
        if augmented:
            sample = ds[(index, aug_seed, 0)]
            if sample is None:  # unreadable, skipped under data.skip_bad_images
                continue
            image, target = sample
            rgb = image.numpy().transpose(1, 2, 0)
            boxes, labels = target["boxes"], target["labels"]
            texts = None
        else:
            rgb = ds.read_image(img_id)
            boxes, labels, texts = _annotations(ds, img_id)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        drawn = draw_boxes(bgr, boxes, labels, ds.class_names, texts=texts)
        written.append(write_jpeg(drawn, out_dir / names[index]))
        record = {"files": sorted(ours | {p.name for p in written})}
        write_json_atomic(record, out_dir / MANIFEST, indent=2)
    return written


def _annotations(ds: CocoDetection, img_id: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Boxes (xyxy), labels and label texts ("name", or "name (crowd)" for a crowd region) of
    every annotation of an image in the dataset's COCO index (the evaluation's ground truth)."""
    coco = ds.coco
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
    boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    labels = np.asarray([ds.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
    texts = [
        ds.class_names[k] + (" (crowd)" if a.get("iscrowd") else "")
        for k, a in zip(labels, anns, strict=True)
    ]
    return boxes, labels, texts
