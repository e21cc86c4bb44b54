"""The data options: every `data.*` config key, its default, type and allowed values
(see docs/configs.md). Pure Python (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import option, section

# Annotation formats (gfldet.data.loader.read_annotations): COCO json, Pascal VOC, YOLO.
FORMATS = ("coco", "voc", "yolo")


@dataclass
class TrainSplitOptions:
    format: str = option("coco", choices=FORMATS)
    ann_file: str = option("data/coco/annotations/instances_train2017.json")
    img_dir: str = option("data/coco/train2017")
    batch_size: int = option(2, ge=1)  # per process
    num_workers: int = option(2, ge=0)
    img_scale: list[int] = option([1333, 800], ge=1, length=2)  # keep-ratio target (long, short)
    flip_prob: float = option(0.5, ge=0, le=1)
    # [min, max] short side for multi-scale training
    ms_short_range: list[int] | None = option(None, ge=1, length=2)


@dataclass
class ValSplitOptions:
    format: str = option("coco", choices=FORMATS)
    ann_file: str = option("data/coco/annotations/instances_val2017.json")
    img_dir: str = option("data/coco/val2017")
    batch_size: int = option(1, ge=1)
    num_workers: int = option(2, ge=0)
    img_scale: list[int] = option([1333, 800], ge=1, length=2)


@dataclass
class DataOptions:
    train: TrainSplitOptions = section(TrainSplitOptions)
    # Unreadable images and invalid boxes: skip with a warning instead of failing.
    skip_bad_images: bool = option(False)
    val: ValSplitOptions = section(ValSplitOptions)
    size_divisor: int = option(32, ge=1)
    # Format voc: the class names in label order (default: the sorted <name>s of the train split).
    classes: list[str] | None = option(None)
