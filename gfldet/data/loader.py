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
from .transforms import TestTransform, TrainTransform, collate_batch
from .voc import read_voc
from .yolo import read_yolo

log = logging.getLogger("gfldet")


def read_annotations(
    fmt: str, ann_file: str | Path, img_dir: str | Path, classes: list[str] | None = None,
    skip_bad: bool = False,
) -> dict | None:  # fmt: skip
    """A VOC or YOLO split as a COCO dict in memory (None for COCO: CocoDetection reads the
    json itself). voc: ann_file is the split's ImageSets list, img_dir the VOC root; yolo:
    ann_file is the data.yaml, img_dir the split's images (see gfldet.data.voc / .yolo)."""
    if fmt == "voc":
        return read_voc(ann_file, img_dir, classes, skip_bad)
    if fmt == "yolo":
        return read_yolo(ann_file, img_dir, skip_bad)
    return None


def build_dataset(
    split_cfg: TrainSplitOptions | ValSplitOptions,
    train: bool,
    skip_bad: bool = False,
    classes: list[str] | None = None,
) -> CocoDetection:
    """Builds a CocoDetection from a `data.train` / `data.val` config section.

    Uses its format, ann_file, img_dir, img_scale ([long, short]); for training (a
    TrainSplitOptions) also flip_prob and ms_short_range (null or [min, max]). skip_bad: the
    config's `data.skip_bad_images` (see CocoDetection); classes: the class names of a VOC
    split, in label order (None: its sorted names).
    """
    img_scale = tuple(split_cfg.img_scale)  # [long, short], checked by the config
    if train:
        ms = split_cfg.ms_short_range
        transform = TrainTransform(
            img_scale=img_scale,
            flip_prob=split_cfg.flip_prob,
            ms_short_range=tuple(ms) if ms is not None else None,
        )
    else:
        transform = TestTransform(img_scale=img_scale)
    data = read_annotations(
        split_cfg.format, split_cfg.ann_file, split_cfg.img_dir, classes,
        skip_bad,
    )  # fmt: skip
    dataset = CocoDetection(split_cfg.ann_file, split_cfg.img_dir, transform, train, skip_bad, data)
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
        `num_replicas`, each sample with its own augmentation seed); call
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
