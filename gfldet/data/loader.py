"""Dataset and DataLoader construction from config sections."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from .coco import CocoDetection
from .options import TrainSplitOptions, ValSplitOptions
from .sampler import GroupedBatchSampler
from .transforms import Sample, TestTransform, TrainRecipe, collate_batch
from .voc import read_voc
from .yolo import read_yolo

log = logging.getLogger("gfldet")


def read_annotations(
    fmt: str,
    ann_file: str | Path,
    img_dir: str | Path,
    classes: list[str] | None = None,
    skip_bad: bool = False,
) -> dict | None:
    """A VOC or YOLO split as a COCO dict in memory (None for COCO: CocoDetection reads the
    json itself). voc: ann_file is the split's ImageSets list, img_dir the VOC root; yolo:
    ann_file is the data.yaml, img_dir the split's images (see gfldet.data.voc / .yolo)."""
    if fmt == "voc":
        return read_voc(ann_file, img_dir, classes, skip_bad)
    if fmt == "yolo":
        return read_yolo(ann_file, img_dir, skip_bad)
    return None


class TrainDataset(CocoDetection):
    """The training split: a CocoDetection whose items go through a `TrainRecipe`, which may
    combine several images (mosaic, mixup) and drop boxes (zoom, shift).

    Items are keyed `(index, augmentation seed, epoch)` as `GroupedBatchSampler(with_seeds=True,
    with_epoch=True)` yields them (`(index, seed)` and a bare index are read as epoch 0; a bare
    index draws from the global `random`). Returns `(image, target)` as CocoDetection, with the
    boxes and labels the recipe produced, or None when the item's image is unreadable under
    skip_bad. `transform` is the recipe's resize + flip part (TrainTransform).
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        recipe: TrainRecipe,
        skip_bad: bool = False,
        data: dict | None = None,
        **kwargs: object,
    ) -> None:
        """kwargs: further CocoDetection arguments (e.g. filter_empty)."""
        super().__init__(ann_file, img_dir, recipe.resize_flip, True, skip_bad, data, **kwargs)
        self.recipe = recipe

    def load(self, index: int) -> Sample | None:
        """Item `index` before augmentation: (image, copies of its boxes and labels), or None for
        an unreadable image under skip_bad (with a warning)."""
        img_id = self.img_ids[index]
        image = self.read_image_or_skip(img_id)
        if image is None:
            return None
        boxes, labels = self._targets[img_id]
        return image, boxes.copy(), labels.copy()

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, dict] | None:
        index, seed, epoch = (*key, 0)[:3] if isinstance(key, tuple) else (key, None, 0)
        rng = random.Random(seed) if seed is not None else None
        out = self.recipe(self.load, len(self), index, rng, epoch)
        if out is None:
            return None
        image, boxes, labels, info = out
        img_id = self.img_ids[index]
        meta = self.coco.imgs[img_id]
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "image_id": int(img_id),
            "orig_size": (int(meta["height"]), int(meta["width"])),
            "img_size": tuple(int(s) for s in info["img_size"]),
            "scale_factor": tuple(float(s) for s in info["scale_factor"]),
            "flipped": bool(info["flipped"]),
        }
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target


def train_recipe(split_cfg: TrainSplitOptions, epochs: int | None = None) -> TrainRecipe:
    """The TrainRecipe of a `data.train` section; epochs: the run's total (train.epochs), which
    places the switch-off of mosaic and mixup `mosaic_close_epochs` before the end (None: never
    switched off)."""
    c = split_cfg
    mix_epochs = None
    if epochs is not None and c.mosaic_close_epochs > 0:
        mix_epochs = max(epochs - c.mosaic_close_epochs, 0)
        if mix_epochs == 0 and (c.mosaic_prob > 0 or c.mixup_prob > 0):
            log.warning(
                "data.train.mosaic_close_epochs (%d) >= train.epochs (%d): no epoch uses "
                "mosaic or mixup",
                c.mosaic_close_epochs,
                epochs,
            )
    try:
        return TrainRecipe(
            tuple(c.img_scale),  # [long, short], checked by the config
            c.flip_prob,
            tuple(c.ms_short_range) if c.ms_short_range is not None else None,
            brightness=c.brightness,
            contrast=c.contrast,
            saturation=c.saturation,
            hue=c.hue,
            affine_scale=tuple(c.affine_scale) if c.affine_scale is not None else None,
            affine_translate=c.affine_translate,
            mosaic_prob=c.mosaic_prob,
            mixup_prob=c.mixup_prob,
            mix_epochs=mix_epochs,
        )
    except ValueError as e:
        raise ValueError(f"data.train.{e}") from None


def build_dataset(
    split_cfg: TrainSplitOptions | ValSplitOptions,
    train: bool,
    skip_bad: bool = False,
    classes: list[str] | None = None,
    epochs: int | None = None,
) -> CocoDetection:
    """Builds the dataset of a `data.train` / `data.val` config section.

    Uses its format, ann_file, img_dir, img_scale ([long, short]). For training (a
    TrainSplitOptions): a `TrainDataset` with the section's augmentation (`train_recipe`) and
    its filter_empty; epochs: the run's train.epochs, for mosaic_close_epochs. Otherwise a
    CocoDetection with every image (TestTransform). skip_bad: the config's
    `data.skip_bad_images` (see CocoDetection); classes: the class names of a VOC split, in
    label order (None: its sorted names).
    """
    data = read_annotations(
        split_cfg.format,
        split_cfg.ann_file,
        split_cfg.img_dir,
        classes,
        skip_bad,
    )
    if train:
        dataset: CocoDetection = TrainDataset(
            split_cfg.ann_file,
            split_cfg.img_dir,
            train_recipe(split_cfg, epochs),
            skip_bad,
            data,
            filter_empty=split_cfg.filter_empty,
        )
    else:
        transform = TestTransform(img_scale=tuple(split_cfg.img_scale))
        dataset = CocoDetection(
            split_cfg.ann_file, split_cfg.img_dir, transform, False, skip_bad, data
        )
    # Found now, not at the first evaluation after hours of training.
    missing = dataset.missing_images()
    if missing:
        key = "data.train" if train else "data.val"
        what = (
            f"{len(missing)} of {len(dataset)} image files of {split_cfg.ann_file} are "
            f"missing, e.g. {missing[0]} ({key}.img_dir is {split_cfg.img_dir})"
        )
        if not skip_bad:
            raise FileNotFoundError(f"{what}; data.skip_bad_images: true skips them")
        log.warning("%s: they will be skipped (data.skip_bad_images)", what)
        for path in missing:  # each one, for `gfldet data check`
            log.debug("image file not found: %s", path)
    return dataset


def worker_init_fn(worker_id: int) -> None:
    """Per-worker setup: single-threaded OpenCV, signals left to the main process, python/numpy
    RNG seeded.

    OpenCV's own thread pool would oversubscribe the CPU with many workers. Ctrl-C, torchrun and
    batch schedulers signal the whole process group; a worker dying of it would crash the main
    process (torch reports dead workers at once) before it could save. So workers ignore SIGINT
    and any SIGTERM but their parent's (see `_obey_sigterm_from_parent_only`): the main process
    finishes its step, saves a checkpoint and shuts them down. torch gives every worker the seed
    `base_seed + worker_id`; reusing it for `random` / `numpy` covers transforms called without
    their own `rng` (the training loader gives every sample one, see GroupedBatchSampler).
    """
    cv2.setNumThreads(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _obey_sigterm_from_parent_only()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _obey_sigterm_from_parent_only() -> None:
    """In a worker: SIGTERM from the parent (the DataLoader's or multiprocessing's last-resort
    `terminate()`, e.g. at exit) ends the worker; SIGTERM from anyone else is ignored.

    Ignoring every SIGTERM would make such a `terminate()` + `join()` wait forever. SIGTERM is
    blocked and a thread reads who sent it (sigwaitinfo). Where that is not available (macOS),
    SIGTERM keeps its default action.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    # Blocked before the thread starts: threads inherit the mask, so only sigwaitinfo gets it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)  # as torch's own worker handler does for its parent's SIGTERM

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()


def eval_shard(num_items: int, num_replicas: int, rank: int) -> range:
    """Contiguous, non-overlapping slice of `range(num_items)` evaluated by `rank`.

    Sizes differ by at most one and nothing is padded, so every image is evaluated exactly once
    over all ranks (results must be gathered across ranks before scoring).
    """
    base, extra = divmod(num_items, num_replicas)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def build_dataloader(
    dataset: CocoDetection,
    batch_size: int,
    num_workers: int,
    train: bool,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    size_divisor: int = 32,
) -> DataLoader:
    """DataLoader yielding `(images uint8 [B, 3, Hp, Wp], list of target dicts)`.

    train: aspect-ratio grouped, shuffled batches (`GroupedBatchSampler`, sharded over
        `num_replicas`, each sample with its own augmentation seed, and the epoch for a
        TrainDataset); call
        `loader.batch_sampler.set_epoch(epoch)` before every epoch (or
        `set_epoch(epoch, start)` to continue an epoch from its batch `start`).
    eval: sequential batches over this rank's contiguous shard (`eval_shard`), no padding.
    """
    if train:
        batch_sampler = GroupedBatchSampler(
            dataset.group_ids(),
            batch_size,
            shuffle=True,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            with_seeds=True,
            with_epoch=isinstance(dataset, TrainDataset),
        )
    else:
        batch_sampler = BatchSampler(
            eval_shard(len(dataset), num_replicas, rank), batch_size, drop_last=False
        )
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=partial(collate_batch, size_divisor=size_divisor),
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=worker_init_fn,
        persistent_workers=num_workers > 0,
        # Seeds the workers' base seed, independent of the global torch RNG state; offset by
        # rank so ranks do not draw identical augmentations.
        generator=torch.Generator().manual_seed(seed + rank),
    )
