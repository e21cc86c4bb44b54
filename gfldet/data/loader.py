"""Dataset and DataLoader construction from config sections."""

from __future__ import annotations

import random
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from gfldet.data.coco import CocoDetection
from gfldet.data.sampler import GroupedBatchSampler
from gfldet.data.transforms import TestTransform, TrainTransform, collate_batch


def build_dataset(split_cfg: dict, train: bool) -> CocoDetection:
    """Builds a CocoDetection from a `data.train` / `data.val` config section.

    Keys used: ann_file, img_dir, img_scale ([long, short]); for training also flip_prob and
    ms_short_range (null or [min, max]). Other keys (batch_size, ...) are ignored.
    """
    img_scale = tuple(split_cfg["img_scale"])
    if len(img_scale) != 2:
        raise ValueError(f"img_scale must be [long, short], got {split_cfg['img_scale']}")
    if train:
        ms = split_cfg.get("ms_short_range")
        transform = TrainTransform(
            img_scale=img_scale,
            flip_prob=split_cfg.get("flip_prob", 0.5),
            ms_short_range=tuple(ms) if ms is not None else None,
        )
    else:
        transform = TestTransform(img_scale=img_scale)
    return CocoDetection(split_cfg["ann_file"], split_cfg["img_dir"], transform, train=train)


def worker_init_fn(worker_id: int) -> None:
    """Per-worker setup: single-threaded OpenCV and python/numpy RNG seeded from torch.

    OpenCV's own thread pool would oversubscribe the CPU with many workers. torch gives every
    worker the seed `base_seed + worker_id`, where base_seed comes from the loader's generator;
    reusing it for `random` / `numpy` (which the transforms use) makes flips and scales
    reproducible for a given seed and worker count, and different across workers.
    """
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


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
        `num_replicas`); call `loader.batch_sampler.set_epoch(epoch)` before every epoch.
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
