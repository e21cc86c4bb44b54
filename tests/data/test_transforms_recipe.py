"""The training recipe for small datasets (gfldet.data.transforms.TrainRecipe, loader.TrainDataset):
boxes follow the pixels through every transform, mosaic switches off for the last epochs,
augmentation is reproducible and independent of the DataLoader workers, background images are
trained on when filter_empty is false, and with the new options off nothing changes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfldet.config import Config
from gfldet.data.coco import CocoDetection
from gfldet.data.loader import TrainDataset, build_dataloader, build_dataset, train_recipe
from gfldet.data.options import TrainSplitOptions
from gfldet.data.transforms import (
    FILL_VALUE,
    MIN_BOX_SIDE,
    MIN_VISIBLE,
    TrainRecipe,
    TrainTransform,
    clip_boxes,
    collate_batch,
    color_jitter,
    zoom_shift,
)
from gfldet.model.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Every new option on (values of the YOLOX / YOLOv8 recipes), mixup at probability 1 so it shows.
FULL = dict(
    brightness=0.4,
    contrast=0.3,
    saturation=0.7,
    hue=0.015,
    affine_scale=[0.5, 1.5],
    affine_translate=0.1,
    mosaic_prob=1.0,
    mixup_prob=1.0,
)


def _samples(n: int = 6, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """n black images of various sizes (landscape and portrait), each with 3 integer boxes whose
    labels are unique over all images (so a label names one rectangle)."""
    rs = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (int(v) for v in rs.integers(90, 200, 2))
        boxes = []
        for _ in range(3):
            bw, bh = int(rs.integers(6, w // 2)), int(rs.integers(6, h // 2))
            x, y = int(rs.integers(0, w - bw + 1)), int(rs.integers(0, h - bh + 1))
            boxes.append([x, y, x + bw, y + bh])
        labels = np.arange(3 * i, 3 * i + 3, dtype=np.int64)
        out.append((np.zeros((h, w, 3), np.uint8), np.array(boxes, np.float32), labels))
    return out


def _loader(samples: list, only: int | None):
    """load(i) of the recipe: sample i with the rectangle of label `only` painted white (none
    for None). The k-th call adds 1000 * k to the labels, so that an image drawn twice (two
    mosaic tiles) has distinct labels in each place."""
    calls = []

    def load(i: int):
        image, boxes, labels = samples[i]
        image, labels = image.copy(), labels + 1000 * len(calls)
        calls.append(i)
        for box, label in zip(boxes.astype(int), labels):
            if label == only:
                image[box[1] : box[3], box[0] : box[2]] = 255
        return image, boxes.copy(), labels

    return load


def _painted_bounds(with_box: np.ndarray, without: np.ndarray) -> np.ndarray | None:
    """x1, y1, x2, y2 of the pixels where the two renders differ by at least half the most."""
    diff = np.abs(with_box.astype(np.int16) - without.astype(np.int16)).max(axis=2)
    if diff.max() == 0:
        return None
    ys, xs = np.nonzero(diff >= diff.max() / 2)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


RECIPES = {
    "resize_flip": {},
    "zoom_in": dict(affine_scale=(1.3, 1.8)),
    "zoom_out_shift": dict(affine_scale=(0.4, 0.8), affine_translate=0.3),
    "shift": dict(affine_translate=0.4),
    "mosaic": dict(mosaic_prob=1.0),
    "mosaic_zoom_shift": dict(mosaic_prob=1.0, affine_scale=(0.5, 1.5), affine_translate=0.1),
    "mixup": dict(mixup_prob=1.0, affine_translate=0.1),
    "mosaic_mixup": dict(mosaic_prob=1.0, mixup_prob=1.0, affine_scale=(0.6, 1.4)),
}


@pytest.mark.parametrize("name", RECIPES)
def test_boxes_tightly_bound_their_transformed_rectangles(name):
    # Each box is painted as a filled rectangle; the same draws (the same seed) move the
    # rectangle and the box, so every output box must bound its rectangle's pixels.
    samples = _samples()
    recipe = TrainRecipe((160, 120), 0.5, (96, 120), **RECIPES[name])
    checked = 0
    for seed in range(8):

        def run(only: int | None, seed: int = seed):
            load = _loader(samples, only)
            return recipe(load, len(samples), seed % len(samples), random.Random(seed))

        image, boxes, labels, info = run(None)
        assert image.shape[:2] == info["img_size"] and image.dtype == np.uint8
        assert len(boxes) == len(labels) and boxes.dtype == np.float32
        h, w = info["img_size"]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
        assert len(set(labels.tolist())) == len(labels)
        for label in labels:
            bounds = _painted_bounds(run(int(label))[0], image)
            assert bounds is not None, f"box of label {label} has no pixels"
            np.testing.assert_allclose(bounds, boxes[labels == label][0], atol=1.5)
            checked += 1
    assert checked >= 16


def test_boxes_cut_by_the_border_are_clipped_or_dropped():
    boxes = np.array(
        [
            [-10, 0, 30, 10],  # 3/4 inside: clipped
            [-30, 0, 10, 10],  # 1/4 inside: kept (MIN_VISIBLE)
            [-31, 0, 9, 10],  # under 1/4 inside: dropped
            [99.5, 0, 120, 10],  # half a pixel inside: dropped (MIN_BOX_SIDE)
            [200, 200, 210, 210],  # outside: dropped
        ],
        np.float32,
    )
    kept, labels = clip_boxes(boxes, np.arange(5), (100, 50))
    assert labels.tolist() == [0, 1] and kept.tolist() == [[0, 0, 30, 10], [0, 0, 10, 10]]
    assert MIN_VISIBLE == 0.25 and MIN_BOX_SIDE == 1.0
    # Boxes clipped before (to a mosaic canvas): the fraction counts against the full box.
    full = np.array([[-100, 0, 20, 10]], np.float32)
    assert (
        len(clip_boxes(np.array([[0, 0, 20, 10]], np.float32), np.arange(1), (100, 50), full)[0])
        == 0
    )


def test_zoom_shift_maps_boxes_in_continuous_pixels():
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 30:50] = 255
    box = np.array([[30, 10, 50, 20]], np.float32)
    out, moved = zoom_shift(image, box, (60, 40), 0.5, (0, 0))
    # The centre (30, 20) stays; everything halves its distance to it.
    np.testing.assert_allclose(moved, [[30, 15, 40, 20]])
    # The image lands on [15, 45] x [10, 30], the rest is grey; the rectangle's pixels are
    # exactly the box's, with no half-pixel smear (cv2 addresses pixel centres).
    assert (out[:10] == FILL_VALUE).all() and (out[:, :15] == FILL_VALUE).all()
    inner = out[10:30, 15:45, 0]
    ys, xs = np.nonzero(inner == 255)
    assert set(np.unique(inner).tolist()) == {0, 255}
    assert [xs.min() + 15, ys.min() + 10, xs.max() + 16, ys.max() + 11] == [30, 15, 40, 20]
    # Zoomed in, edge pixels blend: the box's left and right edges must blend alike.
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 20:30] = 255
    out, moved = zoom_shift(image, np.array([[20, 10, 30, 20]], np.float32), (60, 40), 2.0)
    np.testing.assert_allclose(moved, [[10, 0, 30, 20]])
    assert out[5, 9:11, 0].tolist() == out[5, 29:31, 0].tolist()[::-1]
    assert out[5, 9, 0] < 128 < out[5, 10, 0]
    same, unchanged = zoom_shift(image, box, (60, 40))
    assert same is image and np.array_equal(unchanged, box)


def test_color_jitter_changes_colours_only():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), (5, 5), 2)
    samples = [(image, np.array([[5, 6, 40, 50]], np.float32), np.array([0]))]
    recipe = TrainRecipe((96, 64), 0.0, brightness=0.4, contrast=0.3, saturation=0.7, hue=0.1)
    out, boxes, labels, _ = recipe(lambda i: samples[i], 1, 0, random.Random(0))
    assert out.shape == image.shape and not np.array_equal(out, image)
    assert np.array_equal(boxes, samples[0][1]) and labels.tolist() == [0]
    # Brightness alone scales every channel alike: a grey image stays grey, within its range.
    grey = np.full((8, 8, 3), 100, np.uint8)
    for seed in range(5):
        g = color_jitter(grey, random.Random(seed), brightness=0.4)
        assert (g == g[0, 0, 0]).all() and 60 <= g[0, 0, 0] <= 140
    # Hue turns red to green a third of the way round the colour circle.
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    green = color_jitter(red, _FixedDraw(1 / 3), hue=0.5)
    assert green[0, 0, 1] > 200 and green[0, 0, 0] < 40
    assert np.array_equal(color_jitter(image, random.Random(0)), image)  # all 0: identity


class _FixedDraw(random.Random):
    """A Random whose uniform() always returns `value`."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value


def test_new_options_off_is_the_official_resize_and_flip(shapes):
    # The COCO recipes must not change: with every new option at its default, TrainDataset
    # draws and returns exactly what CocoDetection + TrainTransform did.
    split = TrainSplitOptions(
        ann_file=str(shapes["train_ann"]),
        img_dir=str(shapes["train_img_dir"]),
        img_scale=[96, 80],
        ms_short_range=[48, 80],
    )
    ds = build_dataset(split, train=True, epochs=12)
    assert isinstance(ds, TrainDataset)
    plain = CocoDetection(
        split.ann_file, split.img_dir, TrainTransform((96, 80), 0.5, (48, 80)), train=True
    )
    for key in [(i, 1000 + i) for i in range(len(ds))]:
        (a, ta), (b, tb) = ds[(*key, 3)], plain[key]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
        assert ta.keys() == tb.keys()
        assert all(
            torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k] for k in ta
        )


def _write_coco(root: Path, colours: list[int], boxes: list[list[float]]) -> Path:
    """Images of one uniform grey level each (48x64) with the given box (xywh) or none ([])."""
    (root / "img").mkdir(parents=True)
    images, anns = [], []
    for i, (c, b) in enumerate(zip(colours, boxes)):
        cv2.imwrite(str(root / "img" / f"{i}.png"), np.full((48, 64, 3), c, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        if b:
            anns.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
    ann = root / "ann.json"
    ann.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
        )
    )
    return ann


def test_mosaic_switches_off_for_the_last_epochs(tmp_path):
    # Every image one grey level: a plain sample is uniform, a mosaic is not. Through two
    # persistent workers, which never see attributes set on the dataset in the main process.
    colours = [20 + 9 * i for i in range(10)]
    ann = _write_coco(tmp_path, colours, [[4, 4, 30, 20]] * 10)
    split = TrainSplitOptions(
        ann_file=str(ann),
        img_dir=str(tmp_path / "img"),
        img_scale=[64, 48],
        mosaic_prob=1.0,
        mosaic_close_epochs=2,
    )
    ds = build_dataset(split, train=True, epochs=5)
    loader = build_dataloader(ds, batch_size=2, num_workers=2, train=True, seed=0)
    mosaics = []
    for epoch in range(5):
        loader.batch_sampler.set_epoch(epoch)
        kinds = {
            len(np.unique(img[:, : t["img_size"][0], : t["img_size"][1]].numpy())) > 1
            for images, targets in loader
            for img, t in zip(images, targets)
        }
        assert len(kinds) == 1, f"epoch {epoch}: mosaic on some samples only"
        mosaics.append(kinds.pop())
    assert mosaics == [True, True, True, False, False]
    # Without the run's length the switch-off cannot be placed: mosaic stays on.
    assert train_recipe(split).mix_epochs is None and train_recipe(split, 5).mix_epochs == 3


def _augmented(ds, workers: int, start: int = 0, seed: int = 3) -> list:
    loader = build_dataloader(ds, 2, workers, train=True, seed=seed)
    loader.batch_sampler.set_epoch(1, start)
    out = []
    for images, targets in loader:
        for img, t in zip(images, targets):
            h, w = t["img_size"]
            digest = hashlib.sha1(img[:, :h, :w].contiguous().numpy().tobytes()).hexdigest()
            out.append((t["image_id"], digest, t["boxes"].tolist(), t["labels"].tolist()))
    return out


def test_full_recipe_reproducible_and_independent_of_workers(shapes):
    split = TrainSplitOptions(
        ann_file=str(shapes["train_ann"]),
        img_dir=str(shapes["train_img_dir"]),
        img_scale=[64, 64],
        ms_short_range=[48, 64],
        **FULL,
    )
    ds = build_dataset(split, train=True, epochs=10)
    in_main = _augmented(ds, 0)
    assert in_main == _augmented(ds, 2)  # as many workers as you like
    assert _augmented(ds, 0, start=1) == in_main[2:]  # a resumed run continues exactly
    assert _augmented(ds, 0, seed=4) != in_main
    assert len({d for _, d, _, _ in in_main}) == len(in_main)  # augmentation does vary


def test_affine_scale_must_be_ordered(shapes):
    split = TrainSplitOptions(
        ann_file=str(shapes["train_ann"]),
        img_dir=str(shapes["train_img_dir"]),
        affine_scale=[1.5, 0.5],
    )
    with pytest.raises(ValueError, match=r"data\.train\.affine_scale must be \(min, max\)"):
        build_dataset(split, train=True)


def test_background_images_reach_the_loss(tmp_path):
    # Images without boxes: left out by default (MMDetection), trained on as negatives with
    # filter_empty false; a batch of background only still gives a finite loss.
    ann = _write_coco(tmp_path, [30, 60, 90, 120], [[4, 4, 30, 20], [], [8, 8, 20, 20], []])
    split = dict(ann_file=str(ann), img_dir=str(tmp_path / "img"), img_scale=[64, 48])
    ids = [
        t["image_id"]
        for _, ts in build_dataloader(build_dataset(TrainSplitOptions(**split), True), 1, 0, True)
        for t in ts
    ]
    assert sorted(ids) == [1, 3]
    ds = build_dataset(TrainSplitOptions(**split, filter_empty=False, mosaic_prob=0.5), True)
    batches = list(build_dataloader(ds, 2, 0, True))
    assert sorted(t["image_id"] for _, ts in batches for t in ts) == [1, 2, 3, 4]
    cfg = Config()
    m = cfg.model
    m.num_classes = 1
    vars(m.backbone).update(
        depth=18, base_width=8, frozen_stages=-1, norm_eval=False, pretrained=None
    )
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    torch.manual_seed(0)
    model = build_model(m).train()
    plain = build_dataset(TrainSplitOptions(**split, filter_empty=False), True)
    images, targets = collate_batch([plain[(plain.img_ids.index(2), 0)]])
    assert len(targets[0]["boxes"]) == 0
    losses = model(images, targets)
    total = sum(v for v in losses.values() if torch.is_tensor(v) and v.requires_grad)
    assert torch.isfinite(total) and total > 0  # the classifier learns "nothing here"
    total.backward()
