"""Reading images (gfldet.data.coco.load_image, CocoDetection items): any file format to RGB
uint8, and an unreadable, missing or oversized image a clear error naming the file, or with
data.skip_bad_images a skip with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfldet.data import coco
from gfldet.data.coco import BadImageError, CocoDetection, load_image
from gfldet.data.transforms import (
    TestTransform,
    collate_batch,
)
from tests.helpers import coco_ann, coco_image, identity, write_coco_file

pytestmark = pytest.mark.usefixtures("one_thread")


def noise_jpeg(size: int) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8), (size, size))
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def make_bad_file(folder: Path, kind: str) -> tuple[str, str, tuple[int, int]]:
    """Writes an unusable image; returns (file name, expected message, (width, height))."""
    if kind == "missing":
        return "gone.jpg", "image file not found", (40, 30)
    if kind == "empty":
        (folder / "empty.jpg").write_bytes(b"")
        return "empty.jpg", "image file is empty", (40, 30)
    if kind == "not-an-image":
        (folder / "notes.png").write_text("these are my notes, not a picture\n")
        return "notes.png", "not a readable image", (40, 30)
    if kind == "truncated-jpeg":
        data = noise_jpeg(256)
        (folder / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])
        # cv2.imread decodes it without an error (grey lower half, a warning on stderr).
        assert cv2.imread(str(folder / "cut.jpg")) is not None
        return "cut.jpg", "truncated JPEG", (256, 256)
    if kind == "truncated-png":
        data = cv2.imencode(".png", np.full((30, 40, 3), 7, np.uint8))[1].tobytes()
        (folder / "cut.png").write_bytes(data[: len(data) // 2])
        return "cut.png", "not a readable image", (40, 30)
    if kind == "folder":
        (folder / "dir.jpg").mkdir()
        return "dir.jpg", "image file not found", (40, 30)
    raise AssertionError(kind)


BAD_FILES = ["missing", "empty", "not-an-image", "truncated-jpeg", "truncated-png", "folder"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unreadable_image_is_an_error_naming_the_file(tmp_path, kind):
    name, message, (w, h) = make_bad_file(tmp_path, kind)
    f = write_coco_file(
        tmp_path / "a.json", [coco_image(1, name, w, h)], [coco_ann(1, 1, [1, 1, 9, 9])]
    )
    ds = CocoDetection(f, tmp_path, identity, train=True)
    with pytest.raises(BadImageError) as info:
        ds[0]
    assert message in str(info.value) and str(tmp_path / name) in str(info.value)
    with pytest.raises(BadImageError, match=message):
        load_image(tmp_path / name)


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, gfldet_log):
    images, anns = [], []
    for i, kind in enumerate(BAD_FILES):
        name, _, (w, h) = make_bad_file(tmp_path, kind)
        images.append(coco_image(i, name, w, h))
        anns.append(coco_ann(i, i, [1, 1, 9, 9]))
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((30, 40, 3), np.uint8))
    images.append(coco_image(99, "good.png"))
    anns.append(coco_ann(99, 99, [1, 1, 9, 9]))
    ds = CocoDetection(
        write_coco_file(tmp_path / "a.json", images, anns),
        tmp_path,
        identity,
        train=True,
        skip_bad=True,
    )
    items = [ds[i] for i in range(len(ds))]
    assert [item is None for item in items] == [True] * len(BAD_FILES) + [False]
    warned = [r.getMessage() for r in gfldet_log.records if r.levelno == logging.WARNING]
    assert len(warned) == len(BAD_FILES)
    assert all("skipped an unreadable image" in m for m in warned)
    images, targets = collate_batch(items)  # the skipped ones are left out of the batch
    assert images.shape[0] == 1 and [t["image_id"] for t in targets] == [99]
    images, targets = collate_batch([None, None], size_divisor=32)
    assert images.shape == (0, 3, 32, 32) and targets == []


def test_an_image_of_another_size_than_annotated_is_an_error(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((30, 40, 3), np.uint8))
    f = write_coco_file(
        tmp_path / "a.json", [coco_image(1, "x.png", w=30, h=40)], [coco_ann(1, 1, [1, 1, 9, 9])]
    )
    with pytest.raises(BadImageError, match=r"x.png is 40x30 .*a.json says 30x40"):
        CocoDetection(f, tmp_path, identity, train=True)[0]


def test_a_large_image_is_read_and_one_over_the_pixel_limit_refused(tmp_path, monkeypatch):
    big = np.zeros((1600, 2400, 3), np.uint8)
    big[400:800, 600:1200] = 255
    cv2.imwrite(str(tmp_path / "big.png"), big)
    f = write_coco_file(
        tmp_path / "a.json",
        [coco_image(1, "big.png", 2400, 1600)],
        [coco_ann(1, 1, [600, 400, 600, 400])],
    )
    ds = CocoDetection(f, tmp_path, TestTransform((96, 64)), train=True)
    img, t = ds[0]  # large but fine: decoded, resized by 1/25, boxes with it
    assert img.shape == (3, 64, 96) and img[:, 20, 30].tolist() == [255, 255, 255]
    torch.testing.assert_close(t["boxes"], torch.tensor([[24.0, 16, 48, 32]]))

    monkeypatch.setattr(coco, "MAX_IMAGE_PIXELS", 1000 * 1000)
    with pytest.raises(BadImageError, match=r"image too large: .*big.png is 2400x1600"):
        ds[0]
    skipping = CocoDetection(f, tmp_path, identity, train=True, skip_bad=True)
    assert skipping[0] is None


def test_an_item_is_rgb_uint8_whatever_the_file_with_its_boxes_and_ids(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoDetection(ann_file, img_dir, identity, train=False)
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


def test_an_image_removed_or_damaged_after_loading_is_an_error_naming_it(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoDetection(ann_file, img_dir, identity, train=False)
    (img_dir / "empty.jpg").unlink()
    with pytest.raises(BadImageError, match="not found.*empty.jpg"):
        ds[ds.img_ids.index(9)]
    (img_dir / "crowd.jpg").write_bytes(b"garbage")
    with pytest.raises(BadImageError, match="not a readable image.*crowd.jpg"):
        ds[ds.img_ids.index(10)]
