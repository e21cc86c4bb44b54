"""gfldet.data.loader: an epoch of batches, evaluation shards, augmentation that is reproducible
and independent of the DataLoader workers, and workers that leave signals to the trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from gfldet.data.loader import build_dataloader, build_dataset, eval_shard, worker_init_fn
from gfldet.data.options import TrainSplitOptions, ValSplitOptions

pytestmark = pytest.mark.usefixtures("one_thread")


class _WorkerInfo(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, bool]:
        return os.getpid(), signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_eval_shards_are_contiguous_and_cover_every_image():
    shards = [eval_shard(10, 3, r) for r in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert list(eval_shard(2, 3, 2)) == []


def test_an_epoch_covers_every_image_and_eval_shards_each_image_once(coco_files):
    ann_file, img_dir = coco_files
    split = dict(ann_file=str(ann_file), img_dir=str(img_dir), img_scale=[96, 64])
    ds = build_dataset(TrainSplitOptions(**split, ms_short_range=[48, 64], batch_size=2), True)
    loader = build_dataloader(ds, batch_size=2, num_workers=0, train=True, seed=0)
    loader.batch_sampler.set_epoch(0)
    seen = []
    for images, targets in loader:
        assert images.dtype == torch.uint8 and images.shape[0] == len(targets) == 2
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        for t in targets:
            h, w = t["img_size"]
            assert h <= images.shape[2] and w <= images.shape[3] and min(h, w) <= 64
            assert (t["boxes"][:, 2:] <= torch.tensor([w, h])).all()
            seen.append(t["image_id"])
    assert set(seen) == set(ds.img_ids)

    ev = build_dataset(ValSplitOptions(**split), train=False)
    ids = [
        [t["image_id"] for t in batch[1]]
        for r in (0, 1)
        for batch in build_dataloader(ev, 4, 0, train=False, num_replicas=2, rank=r)
    ]
    assert ids == [[7, 8, 9], [10, 100, 205]]  # contiguous shards, each image once


def test_augmentation_is_reproducible_for_a_seed(coco_files):
    ann_file, img_dir = coco_files
    cfg = TrainSplitOptions(
        ann_file=str(ann_file), img_dir=str(img_dir), img_scale=[96, 64], ms_short_range=[48, 64]
    )

    def augs(seed: int) -> list:
        loader = build_dataloader(build_dataset(cfg, train=True), 1, 1, train=True, seed=seed)
        return [(t["image_id"], t["flipped"], t["img_size"]) for _, ts in loader for t in ts]

    assert augs(0) == augs(0) != augs(1)


def test_augmentation_does_not_depend_on_workers(coco_files):
    ann_file, img_dir = coco_files
    cfg = TrainSplitOptions(
        ann_file=str(ann_file), img_dir=str(img_dir), img_scale=[96, 64], ms_short_range=[40, 64]
    )
    ds = build_dataset(cfg, train=True)

    def augs(workers: int, start: int = 0) -> list:
        loader = build_dataloader(ds, 1, workers, train=True, seed=3)
        loader.batch_sampler.set_epoch(2, start)
        return [(t["image_id"], t["flipped"], t["img_size"]) for _, ts in loader for t in ts]

    in_main = augs(0)
    assert in_main == augs(2) and augs(0, start=1) == in_main[1:]
    assert len({a[1:] for a in in_main}) > 1  # augmentation does vary


def test_workers_leave_signals_to_the_training_process():
    # Ctrl-C, torchrun and schedulers signal the whole process group; a worker killed by it
    # would crash the training process before it could save (see worker_init_fn). A SIGTERM
    # from the parent (terminate() at exit) must still end the worker, or exit would hang.
    loader = torch.utils.data.DataLoader(
        _WorkerInfo(), num_workers=1, worker_init_fn=worker_init_fn, collate_fn=list
    )
    it = iter(loader)
    [(pid, ignores_sigint)] = next(it)
    assert ignores_sigint
    subprocess.run(["kill", "-TERM", str(pid)], check=True)  # from another process
    subprocess.run(["kill", "-INT", str(pid)], check=True)
    time.sleep(0.3)
    assert os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None  # alive
    os.kill(pid, signal.SIGTERM)  # from the parent
    deadline = time.time() + 300  # minutes, not seconds: the machine may be busy
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.time() < deadline, "the worker ignored its parent's SIGTERM"
        time.sleep(0.05)
    del it
