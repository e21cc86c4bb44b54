"""gfldet.data.transforms: MMDetection's resize, flip and multi-scale sizes, padding in collate,
and extreme aspect ratios."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gfldet.data.coco import CocoDetection
from gfldet.data.transforms import (
    TestTransform,
    TrainTransform,
    collate_batch,
    hflip,
    rescale_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_extreme_aspect_ratios_never_resize_a_side_to_zero(tmp_path):
    for w, h in ((10000, 10), (10, 10000), (1, 1), (3, 2000)):
        new_w, new_h, _, _ = rescale_size(w, h, (128, 128))
        assert new_w >= 1 and new_h >= 1 and max(new_w, new_h) <= 128
    image = np.zeros((10, 10000, 3), np.uint8)
    out, boxes, info = TestTransform((128, 128))(image, np.array([[0, 2, 5000, 8]], np.float32))
    assert out.shape[:2] == info["img_size"] == (1, 128)


def test_resizing_scales_the_boxes_with_the_image(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoDetection(ann_file, img_dir, TestTransform((128, 96)), train=True)
    image, t = ds[ds.img_ids.index(100)]  # 64x48 -> factor 2
    assert image.shape == (3, 96, 128) and t["img_size"] == (96, 128)
    assert t["scale_factor"] == (2.0, 2.0) and t["orig_size"] == (48, 64)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([8.0, 12, 48, 32]))


def test_rescale_size_rounds_as_mmdetection_does():
    # MMDetection: factor = min(1333/640, 800/480) = 5/3; int(640 * 5/3 + 0.5) = 1067.
    assert rescale_size(640, 480) == (1067, 800, 1067 / 640, 800 / 480)
    assert rescale_size(480, 640)[:2] == (800, 1067)  # portrait
    assert rescale_size(427, 640)[:2] == (800, 1199)  # portrait, COCO-typical
    assert rescale_size(1000, 200)[:2] == (1333, 267)  # long side binds
    assert rescale_size(2666, 1600)[:2] == (1333, 800)  # downscale


def test_horizontal_flip_mirrors_pixels_and_boxes():
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


def test_multi_scale_sizes_stay_in_the_short_side_range_and_the_long_cap():
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


def test_collate_pads_a_batch_to_a_multiple_of_the_size_divisor():
    a = torch.full((3, 33, 50), 7, dtype=torch.uint8)
    b = torch.full((3, 20, 70), 9, dtype=torch.uint8)
    batch, targets = collate_batch([(a, {"i": 0}), (b, {"i": 1})], size_divisor=32)
    assert batch.shape == (2, 3, 64, 96) and batch.dtype == torch.uint8
    assert (batch[0, :, :33, :50] == 7).all() and batch[0, :, 33:].sum() == 0
    assert batch[0, :, :, 50:].sum() == 0 and (batch[1, :, :20, :70] == 9).all()
    assert [t["i"] for t in targets] == [0, 1]
