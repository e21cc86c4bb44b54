"""gfldet.core.draw: drawn detections, labels that never hide each other, edge-uncertainty
bands, and mosaics of training batches."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from gfldet.core import draw
from gfldet.core.draw import (
    DRAW_SCORE_THR,
    color_for_label,
    draw_batch,
    draw_detections,
    draw_edge_bands,
    layout_labels,
)
from gfldet.core.records import prediction_record

pytestmark = pytest.mark.usefixtures("one_thread")


def _disjoint(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _label_patches(monkeypatch, fn, *args, **kwargs) -> tuple[np.ndarray, list]:
    """Runs a drawing function and returns its image and the filled rectangles (label
    patches) it drew, as (x1, y1, x2, y2) with exclusive ends."""
    patches = []
    real = cv2.rectangle

    def spy(img, p1, p2, color, thickness=1, *rest, **kw):
        if thickness == cv2.FILLED:
            patches.append((p1[0], p1[1], p2[0] + 1, p2[1] + 1))
        return real(img, p1, p2, color, thickness, *rest, **kw)

    monkeypatch.setattr(draw.cv2, "rectangle", spy)
    out = fn(*args, **kwargs)
    monkeypatch.setattr(draw.cv2, "rectangle", real)
    return out, patches


def _crowd(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n overlapping boxes in a small area of a 320 x 240 image, many sharing a top edge."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(20, 120, n)
    y1 = np.where(rng.random(n) < 0.5, 60.0, rng.uniform(40, 120, n))
    boxes = np.stack([x1, y1, x1 + rng.uniform(30, 120, n), y1 + rng.uniform(30, 100, n)], 1)
    return boxes, rng.uniform(0.4, 1.0, n), rng.integers(0, 3, n)


@pytest.mark.parametrize("n", [2, 8, 16])
def test_labels_of_crowded_detections_do_not_cover_each_other(monkeypatch, n):
    img = np.full((240, 320, 3), 255, np.uint8)
    boxes, scores, labels = _crowd(n)
    _, patches = _label_patches(
        monkeypatch, draw_detections, img, boxes, scores, labels, ["person", "car", "dog"]
    )
    assert len(patches) == n
    for a, b in itertools.combinations(patches, 2):
        assert _disjoint(a, b), (a, b)
    for x1, y1, x2, y2 in patches:  # inside the image
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240


def test_label_goes_above_the_box_and_inside_when_at_the_top_edge():
    rects = layout_labels(np.array([[50, 40, 150, 120], [10, 0, 60, 50]]), [(40, 12)] * 2, 200, 200)
    assert rects[0].tolist() == [50, 28, 90, 40]  # just above, left-aligned
    assert rects[1].tolist() == [10, 0, 50, 12]  # no room above: inside the top


def test_label_keeps_inside_the_image_at_the_right_and_bottom_edges():
    rects = layout_labels(np.array([[180, 190, 199, 199]]), [(60, 14)], 200, 200)
    x1, y1, x2, y2 = rects[0].tolist()
    assert x2 <= 200 and y2 <= 200 and x1 >= 0 and y1 >= 0


def test_more_labels_than_room_still_draw_inside_the_image():
    boxes = np.tile([[0.0, 0.0, 30.0, 30.0]], (50, 1))
    rects = layout_labels(boxes, [(30, 10)] * 50, 32, 32)
    assert len(rects) == 50
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= 32).all() and (rects[:, 3] <= 32).all()


def test_label_text_contrasts_with_its_patch():
    """A light class color gets black text, a dark one white text."""
    img = np.full((120, 200, 3), 128, np.uint8)
    for label, text_value in ((5, 0), (12, 255)):  # (10, 249, 72) is light, (147, 69, 52) dark
        out = draw_detections(img, [[40, 60, 160, 110]], [0.9], [label], ["x"] * 20)
        patch = out[40:60, 40:100].reshape(-1, 3)
        assert (np.abs(patch.astype(int) - text_value).sum(1) < 60).any()


def test_one_drawing_threshold():
    img = np.zeros((64, 64, 3), np.uint8)
    boxes = [[10, 10, 40, 40]]
    below = draw_detections(img, boxes, [DRAW_SCORE_THR - 0.01], [0], ["a"])
    at = draw_detections(img, boxes, [DRAW_SCORE_THR], [0], ["a"])
    assert np.array_equal(below, img) and not np.array_equal(at, img)


def _batch(b: int = 3, h: int = 64, w: int = 96):
    images = torch.full((b, 3, h, w), 200, dtype=torch.uint8)
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0]]),
            "labels": torch.tensor([0, 1]),
            "img_size": (h, w - 16 * (i % 2)),
        }
        for i in range(b)
    ]
    return images, targets


def test_draw_batch_writes_a_mosaic_with_the_boxes(tmp_path):
    images, targets = _batch(5)
    path = draw_batch(images, targets, ["a", "b"], tmp_path / "train_batch0.jpg")
    assert path == tmp_path / "train_batch0.jpg"
    mosaic = cv2.imread(str(path))
    assert mosaic.shape == (2 * 64 + 2, 3 * 96 + 2 * 2, 3)  # 3 x 2 grid, 2 px gaps
    assert [p.name for p in tmp_path.iterdir()] == ["train_batch0.jpg"]  # no temp file left
    # tile 4 (row 1, col 1): its box's left edge in class 0's color (red in BGR).
    y0, x0 = 64 + 2, 96 + 2
    edge = mosaic[y0 + 45, x0 + 10].astype(int)
    assert edge[2] - edge[1] > 60 and edge[2] - edge[0] > 60  # red over the grey image
    # tile 1 (odd): the padding beyond its valid width (80) is grey, not the image's 200.
    assert abs(int(mosaic[50, 96 + 2 + 88, 1]) - 114) < 12
    assert abs(int(mosaic[50, 70, 1]) - 200) < 12


def test_draw_batch_limits_images_and_size(tmp_path):
    images, targets = _batch(20, 400, 600)
    path = draw_batch(images, targets, ["a", "b"], tmp_path / "b.jpg", max_images=4, max_side=500)
    mosaic = cv2.imread(str(path))
    assert max(mosaic.shape[:2]) <= 500 and mosaic.shape[1] > mosaic.shape[0]


def test_draw_batch_refuses_what_is_not_a_uint8_batch(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        draw_batch(
            torch.zeros(2, 3, 8, 8), [{"boxes": [], "labels": []}] * 2, [], tmp_path / "x.jpg"
        )
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_batch(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), [], [], tmp_path / "x.jpg")
    assert not list(tmp_path.iterdir())


NAMES = ["cat", "bird", "dog"]


def test_draw_detections_draws_a_copy_near_the_boxes_only():
    img = np.full((120, 160, 3), 127, np.uint8)
    before = img.copy()
    out = draw_detections(
        img,
        torch.tensor([[10.0, 5.0, 80.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        np.array([0.87, 0.1]),
        [2, 0],
        NAMES,
        score_thr=0.3,
    )
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(img, before)
    assert not np.array_equal(out, img)
    assert np.array_equal(out[100:, 100:], img[100:, 100:])  # far from the box: untouched
    assert np.array_equal(draw_detections(img, np.zeros((0, 4)), [], [], NAMES), img)
    assert color_for_label(0) != color_for_label(1) and len(color_for_label(123)) == 3


def test_edge_bands_widen_with_the_spread_and_records_round_them():
    img = np.full((100, 120, 3), 255, np.uint8)
    boxes = torch.tensor([[30.0, 20.0, 90.0, 80.0]])
    scores, labels = torch.tensor([0.9]), torch.tensor([1])
    narrow = draw_edge_bands(img, boxes, scores, labels, torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
    wide = draw_edge_bands(img, boxes, scores, labels, torch.tensor([[8.0, 1.0, 1.0, 1.0]]))
    changed = lambda out: (out != img).any(-1)  # noqa: E731
    assert changed(wide).sum() > changed(narrow).sum()
    assert changed(wide)[50, 24] and not changed(narrow)[50, 24]  # 6 px left of the left edge
    assert not changed(wide)[50, 60]  # the box interior stays clear
    assert not changed(draw_edge_bands(img, boxes, torch.tensor([0.1]), labels, torch.ones(1, 4)))[
        50
    ].any()  # below score_thr
    with pytest.raises(ValueError, match="rows"):
        draw_edge_bands(img, boxes, scores, labels, torch.ones(2, 4))
    drawn = draw_detections(img, boxes, scores, labels, ["a", "b"], edge_std=torch.ones(1, 4) * 5)
    plain = draw_detections(img, boxes, scores, labels, ["a", "b"])
    assert changed(drawn).sum() > changed(plain).sum()

    det = {
        "boxes": boxes,
        "scores": scores,
        "labels": labels,
        "edge_std": torch.tensor([[1.23456, 2.0, 3.0, 4.0]]),
        "edge_top2": torch.tensor([[0.9, 0.8, 0.7, 0.61234]]),
    }
    rec = prediction_record("a.jpg", (100, 120, 3), det, [4, 7], ["a", "b"])
    d = rec["detections"][0]
    assert d["category_id"] == 7 and d["edge_std"] == [1.235, 2.0, 3.0, 4.0]
    assert d["edge_top2"] == [0.9, 0.8, 0.7, 0.612]
