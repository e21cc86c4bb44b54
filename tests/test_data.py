"""Data pipeline tests on a tiny synthetic COCO file (cv2-written images in tmp_path)."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfldet.data.coco import BadImageError, CocoDetection
from gfldet.data.loader import build_dataloader, build_dataset, eval_shard, worker_init_fn
from gfldet.data.options import TrainSplitOptions, ValSplitOptions
from gfldet.data.sampler import GroupedBatchSampler
from gfldet.data.transforms import (
    TestTransform,
    TrainTransform,
    collate_batch,
    hflip,
    rescale_size,
)

CATS = [{"id": 12, "name": "cup"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]


def _ann(ann_id: int, img_id: int, cat: int, bbox: list[float], crowd: int = 0) -> dict:
    area = bbox[2] * bbox[3]
    return {
        "id": ann_id,
        "image_id": img_id,
        "category_id": cat,
        "bbox": bbox,
        "area": area,
        "iscrowd": crowd,
    }


def _write_coco(root: Path, **overrides) -> Path:
    """Writes images + annotations under root; returns the annotation file path."""
    img_dir = root / "images"
    (img_dir / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(img_dir / "color.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(img_dir / "sub" / "gray.png"), np.full((64, 40), 90, np.uint8))
    rgba = np.zeros((30, 50, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 255, 128  # red in BGRA
    cv2.imwrite(str(img_dir / "rgba.png"), rgba)
    cv2.imwrite(str(img_dir / "deep.png"), np.full((20, 20), 65535, np.uint16))
    cv2.imwrite(str(img_dir / "empty.jpg"), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(img_dir / "crowd.jpg"), np.zeros((32, 48, 3), np.uint8))
    images = [
        {"id": 100, "file_name": "color.jpg", "width": 64, "height": 48},
        {"id": 205, "file_name": "sub/gray.png", "width": 40, "height": 64},
        {"id": 7, "file_name": "rgba.png", "width": 50, "height": 30},
        {"id": 8, "file_name": "deep.png", "width": 20, "height": 20},
        {"id": 9, "file_name": "empty.jpg", "width": 32, "height": 32},
        {"id": 10, "file_name": "crowd.jpg", "width": 48, "height": 32},
    ]
    anns = [
        _ann(1, 100, 3, [4, 6, 20, 10]),
        _ann(2, 100, 7, [0, 0, 30, 30], crowd=1),  # crowd: dropped
        _ann(3, 100, 12, [10, 10, 0.5, 8]),  # w < 1: dropped
        _ann(4, 100, 12, [50, 40, 30, 20]),  # partly outside: clipped to (50, 40, 64, 48)
        _ann(5, 205, 12, [2, 3, 10, 20]),
        _ann(6, 7, 7, [5, 5, 10, 10]),
        _ann(7, 8, 3, [1, 1, 5, 5]),
        _ann(8, 10, 3, [1, 1, 5, 5], crowd=1),  # only a crowd box: no usable target
    ]
    data = {"images": images, "annotations": anns, "categories": CATS, **overrides}
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


@pytest.fixture
def coco_files(tmp_path: Path) -> tuple[Path, Path]:
    return _write_coco(tmp_path), tmp_path / "images"


def _identity(
    image: np.ndarray, boxes: np.ndarray, rng=None
) -> tuple[np.ndarray, np.ndarray, dict]:
    h, w = image.shape[:2]
    return image, boxes, {"img_size": (h, w), "scale_factor": (1.0, 1.0), "flipped": False}


def test_id_mappings_and_filtering(coco_files):
    ann_file, img_dir = coco_files
    train = CocoDetection(ann_file, img_dir, _identity, train=True)
    assert train.cat_ids == [3, 7, 12]
    assert train.class_names == ["car", "dog", "cup"]
    assert train.cat_id_to_label == {3: 0, 7: 1, 12: 2}
    assert train.num_classes == 3
    assert train.img_ids == [7, 8, 100, 205]  # empty (9) and crowd-only (10) skipped
    ev = CocoDetection(ann_file, img_dir, _identity, train=False)
    assert ev.img_ids == [7, 8, 9, 10, 100, 205]
    assert ev.coco.getImgIds() and len(ev) == 6
    np.testing.assert_array_equal(ev.group_ids(), [1, 0, 0, 1, 1, 0])


def test_item_contents(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoDetection(ann_file, img_dir, _identity, train=False)
    image, t = ds[ds.img_ids.index(100)]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    torch.testing.assert_close(t["boxes"], torch.tensor([[4.0, 6, 24, 16], [50, 40, 64, 48]]))
    assert t["labels"].tolist() == [0, 2]
    assert t["image_id"] == 100 and t["orig_size"] == (48, 64) and t["img_size"] == (48, 64)
    assert t["scale_factor"] == (1.0, 1.0) and t["flipped"] is False

    gray, t = ds[ds.img_ids.index(205)]  # grayscale in a sub-folder -> 3 equal channels
    assert gray.shape == (3, 64, 40) and (gray == 90).all()
    assert t["labels"].tolist() == [2]
    rgba, _ = ds[ds.img_ids.index(7)]  # RGBA -> RGB (alpha dropped), red first
    assert rgba.shape == (3, 30, 50) and rgba[:, 0, 0].tolist() == [255, 0, 0]
    deep, _ = ds[ds.img_ids.index(8)]  # 16-bit -> 8-bit
    assert deep.dtype == torch.uint8 and (deep == 255).all()
    _, t = ds[ds.img_ids.index(9)]  # no annotations
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_dataset_with_resize(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoDetection(ann_file, img_dir, TestTransform((128, 96)), train=True)
    image, t = ds[ds.img_ids.index(100)]  # 64x48 -> factor 2
    assert image.shape == (3, 96, 128) and t["img_size"] == (96, 128)
    assert t["scale_factor"] == (2.0, 2.0) and t["orig_size"] == (48, 64)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([8.0, 12, 48, 32]))


def test_rescale_size():
    # MMDetection: factor = min(1333/640, 800/480) = 5/3; int(640 * 5/3 + 0.5) = 1067.
    assert rescale_size(640, 480) == (1067, 800, 1067 / 640, 800 / 480)
    assert rescale_size(480, 640)[:2] == (800, 1067)  # portrait
    assert rescale_size(427, 640)[:2] == (800, 1199)  # portrait, COCO-typical
    assert rescale_size(1000, 200)[:2] == (1333, 267)  # long side binds
    assert rescale_size(2666, 1600)[:2] == (1333, 800)  # downscale


def test_flip():
    image = np.arange(2 * 40 * 3, dtype=np.uint8).reshape(2, 40, 3)
    boxes = np.array([[1, 0, 11, 2], [0, 0, 40, 1]], np.float32)
    out, fb = hflip(image, boxes)
    np.testing.assert_array_equal(fb, [[29, 0, 39, 2], [0, 0, 40, 1]])
    np.testing.assert_array_equal(out[:, 0], image[:, -1])
    t = TrainTransform(img_scale=(40, 2), flip_prob=1.0)  # scale 1: flip only
    img2, fb2, info = t(image, boxes)
    assert info["flipped"] and info["scale_factor"] == (1.0, 1.0)
    np.testing.assert_array_equal(fb2, fb)
    np.testing.assert_array_equal(img2, out)
    assert not TrainTransform(img_scale=(40, 2), flip_prob=0.0)(image, boxes)[2]["flipped"]


def test_multiscale_range():
    random.seed(0)
    t = TrainTransform(img_scale=(1333, 800), flip_prob=0.5, ms_short_range=(480, 960))
    image, boxes = np.zeros((30, 40, 3), np.uint8), np.zeros((0, 4), np.float32)
    shorts, flips = set(), set()
    for _ in range(20):
        out, _, info = t(image, boxes)
        assert out.shape[:2] == info["img_size"]
        assert 480 <= out.shape[0] <= 960 and out.shape[1] <= 1333
        shorts.add(out.shape[0])
        flips.add(info["flipped"])
    assert len(shorts) > 5 and flips == {True, False}
    wide = t(np.zeros((10, 100, 3), np.uint8), boxes)[0]  # long side capped at 1333
    assert wide.shape[:2] == (133, 1333)


def test_collate_pads_to_multiple():
    a = torch.full((3, 33, 50), 7, dtype=torch.uint8)
    b = torch.full((3, 20, 70), 9, dtype=torch.uint8)
    batch, targets = collate_batch([(a, {"i": 0}), (b, {"i": 1})], size_divisor=32)
    assert batch.shape == (2, 3, 64, 96) and batch.dtype == torch.uint8
    assert (batch[0, :, :33, :50] == 7).all() and batch[0, :, 33:].sum() == 0
    assert batch[0, :, :, 50:].sum() == 0 and (batch[1, :, :20, :70] == 9).all()
    assert [t["i"] for t in targets] == [0, 1]


def _flat(batches: list[list[int]]) -> list[int]:
    return list(itertools.chain.from_iterable(batches))


def _check_batches(batches, groups, batch_size):
    for b in batches:
        assert len(b) == batch_size and len({int(groups[i]) for i in b}) == 1


def test_grouped_sampler():
    groups = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1])  # 5 portrait, 6 landscape
    s = GroupedBatchSampler(groups, batch_size=2, seed=3)
    e0 = list(s)
    assert len(e0) == len(s) == 6  # ceil(5/2) + ceil(6/2)
    _check_batches(e0, groups, 2)
    assert set(_flat(e0)) == set(range(11))
    assert list(s) == e0  # deterministic for (seed, epoch)
    s.set_epoch(1)
    assert list(s) != e0
    assert list(GroupedBatchSampler(groups, 2, seed=3)) == e0

    ordered = list(GroupedBatchSampler(groups, 2, shuffle=False))
    assert ordered[:3] == [[0, 3], [1, 2], [4, 5]]
    assert all(b[0] <= c[0] for b, c in itertools.pairwise(ordered))
    assert len(GroupedBatchSampler(groups, 2, drop_last=True)) == 5

    # 8 + 12 items, 2 ranks x 2 per batch: no padding needed -> disjoint exact cover.
    groups = np.array([0] * 8 + [1] * 12)
    random.Random(0).shuffle(groups)
    shares = [list(GroupedBatchSampler(groups, 2, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 5
    flat = [_flat(sh) for sh in shares]
    assert not set(flat[0]) & set(flat[1]) and sorted(flat[0] + flat[1]) == list(range(20))
    # 5 + 6 items over 3 ranks: padded, equal length, still covering everything.
    groups = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1])
    shares = [list(GroupedBatchSampler(groups, 2, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(sh) for sh in shares}) == 1 and len(shares[0]) == 2
    for sh in shares:
        _check_batches(sh, groups, 2)
    assert set(_flat(_flat(shares))) == set(range(11))


def test_eval_shard():
    shards = [eval_shard(10, 3, r) for r in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert list(eval_shard(2, 3, 2)) == []


def test_errors_name_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(missing, tmp_path, _identity, train=True)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        CocoDetection(bad, tmp_path, _identity, train=True)
    nokey = tmp_path / "nokey.json"
    nokey.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="nokey.json.*categories"):
        CocoDetection(nokey, tmp_path, _identity, train=True)

    for name, ann in [
        ("img", _ann(1, 999, 3, [0, 0, 2, 2])),
        ("cat", _ann(1, 1, 42, [0, 0, 2, 2])),
    ]:
        f = tmp_path / f"{name}.json"
        f.write_text(
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}],
                    "annotations": [ann],
                    "categories": CATS,
                }
            )
        )
        with pytest.raises(ValueError, match=rf"{name}.json.*{999 if name == 'img' else 42}"):
            CocoDetection(f, tmp_path, _identity, train=True)


def test_missing_and_corrupt_image(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoDetection(ann_file, img_dir, _identity, train=False)
    (img_dir / "empty.jpg").unlink()
    with pytest.raises(BadImageError, match="not found.*empty.jpg"):
        ds[ds.img_ids.index(9)]
    (img_dir / "crowd.jpg").write_bytes(b"garbage")
    with pytest.raises(BadImageError, match="not a readable image.*crowd.jpg"):
        ds[ds.img_ids.index(10)]


def test_dataloader_epoch(coco_files):
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


def test_worker_augmentation_reproducible(coco_files):
    ann_file, img_dir = coco_files
    cfg = TrainSplitOptions(
        ann_file=str(ann_file), img_dir=str(img_dir), img_scale=[96, 64], ms_short_range=[48, 64]
    )

    def augs(seed: int) -> list:
        loader = build_dataloader(build_dataset(cfg, train=True), 1, 1, train=True, seed=seed)
        return [(t["image_id"], t["flipped"], t["img_size"]) for _, ts in loader for t in ts]

    assert augs(0) == augs(0) != augs(1)


def test_sampler_resumes_mid_epoch_and_seeds_every_sample():
    groups = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0])
    for replicas in (1, 2):
        for rank in range(replicas):
            s = GroupedBatchSampler(groups, 2, seed=5, num_replicas=replicas, rank=rank,
                                    with_seeds=True)  # fmt: skip
            s.set_epoch(3)
            full = list(s)
            assert all(isinstance(i, int) and isinstance(seed, int) for b in full for i, seed in b)
            s.set_epoch(3, start=2)  # continue after two batches: the same batches and seeds
            assert len(s) == len(full) - 2 and list(s) == full[2:]
            plain = GroupedBatchSampler(groups, 2, seed=5, num_replicas=replicas, rank=rank)
            plain.set_epoch(3)
            assert [[i for i, _ in b] for b in full] == list(plain)
    both = [GroupedBatchSampler(groups, 2, seed=5, num_replicas=2, rank=r, with_seeds=True)
            for r in (0, 1)]  # fmt: skip
    seeds = [seed for s in both for b in s for _, seed in b]
    assert len(set(seeds)) == len(seeds)  # every sample of the epoch has its own
    s = both[0]
    s.set_epoch(4)
    assert not {seed for b in s for _, seed in b} & set(seeds)  # and every epoch
    with pytest.raises(ValueError, match="start"):
        s.set_epoch(0, start=len(s) + 1)


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


class _WorkerInfo(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, bool]:
        return os.getpid(), signal.getsignal(signal.SIGINT) is signal.SIG_IGN


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
