"""The data options: every `data.*` config key, its default, type and allowed values
(see docs/configs.md). Pure Python (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import option, section

# Annotation formats (gfldet.data.loader.read_annotations): COCO json, Pascal VOC, YOLO.
FORMATS = ("coco", "voc", "yolo")


@dataclass
class TrainSplitOptions:
    """The training split and its augmentation."""

    format: str = option(
        "coco",
        choices=FORMATS,
        help="annotation format: coco (a json file), voc (ann_file: ImageSets/Main/<split>.txt, "
        "img_dir: the VOC root) or yolo (ann_file: data.yaml, img_dir: the split's images)",
    )
    ann_file: str = option(
        "data/coco/annotations/instances_train2017.json",
        help="annotation file of the training split (see format)",
    )
    img_dir: str = option(
        "data/coco/train2017", help="folder that the annotations' image file names are relative to"
    )
    batch_size: int = option(
        2, ge=1, help="images per process (per GPU); the total batch is batch_size x processes"
    )
    num_workers: int = option(2, ge=0, help="DataLoader worker processes per training process")
    img_scale: list[int] = option(
        [1333, 800],
        ge=1,
        length=2,
        help="keep-ratio resize: long side <= max and short side <= min of the two values",
    )
    flip_prob: float = option(0.5, ge=0, le=1, help="probability of a horizontal flip")
    ms_short_range: list[int] | None = option(
        None,
        ge=1,
        length=2,
        help="[min, max]: multi-scale training, the short-side target drawn from min..max "
        "(long side still <= max of img_scale); null: single scale",
    )
    brightness: float = option(
        0.0, ge=0, help="photometric distortion: brightness factor drawn in [1-x, 1+x] (0: off)"
    )
    contrast: float = option(
        0.0, ge=0, help="photometric distortion: contrast factor drawn in [1-x, 1+x] (0: off)"
    )
    saturation: float = option(
        0.0, ge=0, help="photometric distortion: saturation factor drawn in [1-x, 1+x] (0: off)"
    )
    hue: float = option(
        0.0, ge=0, le=0.5, help="photometric distortion: hue shift drawn in [-x, x] turns (0: off)"
    )
    affine_scale: list[float] | None = option(
        None, gt=0, length=2, help="random zoom: factor drawn in [min, max] (null: off)"
    )
    affine_translate: float = option(
        0.0, ge=0, le=0.5, help="random shift: up to this fraction of the width/height (0: off)"
    )
    mosaic_prob: float = option(
        0.0, ge=0, le=1, help="probability of a 2x2 mosaic of the image and 3 random others"
    )
    mosaic_close_epochs: int = option(
        0, ge=0, help="the last N epochs of training are without mosaic and mixup"
    )
    mixup_prob: float = option(
        0.0, ge=0, le=1, help="probability of blending the image with a second one (both boxes)"
    )
    filter_empty: bool = option(
        True, help="leave images without boxes out (false: train on them as background)"
    )


@dataclass
class ValSplitOptions:
    """The validation split: `gfldet eval` and the evaluation during training."""

    format: str = option("coco", choices=FORMATS, help="as data.train.format, for the val split")
    ann_file: str = option(
        "data/coco/annotations/instances_val2017.json",
        help="annotation file for evaluation; must have the training set's categories",
    )
    img_dir: str = option(
        "data/coco/val2017", help="folder that the annotations' image file names are relative to"
    )
    batch_size: int = option(1, ge=1, help="images per process and batch in evaluation")
    num_workers: int = option(2, ge=0, help="DataLoader worker processes for evaluation")
    img_scale: list[int] = option(
        [1333, 800],
        ge=1,
        length=2,
        help="test-time keep-ratio resize (also used by infer, Predictor and export)",
    )


@dataclass
class DataOptions:
    """Datasets and loading."""

    train: TrainSplitOptions = section(TrainSplitOptions)
    skip_bad_images: bool = option(
        False,
        help="skip unreadable images and NaN/infinite/negative-size boxes with a warning "
        "instead of failing (structural faults of an annotation file are always errors)",
    )
    val: ValSplitOptions = section(ValSplitOptions)
    size_divisor: int = option(
        32,
        ge=1,
        help="batches are zero-padded to a multiple of this (export --img-size must be one)",
    )
    classes: list[str] | None = option(
        None,
        help="format voc: the class names in label order; null: the sorted <name>s of the "
        "train split (COCO files and YOLO's data.yaml name their own classes)",
    )
