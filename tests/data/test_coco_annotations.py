"""gfldet.data.coco.CocoDetection's annotation file: ids, categories and labels, filtering, and
bad input (a clear error naming file and key, or a documented skip with a warning)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfldet.data.coco import CocoDetection
from tests.helpers import CATS_AB, ODD_CATS, coco_ann, coco_image, identity, write_coco_file

pytestmark = pytest.mark.usefixtures("one_thread")


def background_set(tmp_path: Path) -> tuple[Path, Path]:
    """Three 40x30 images: one box in a.jpg, none in b.jpg and c.jpg."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((30, 40, 3), 90, np.uint8))
    images = [
        {"id": i, "file_name": n, "width": 40, "height": 30}
        for i, n in enumerate(("a.jpg", "b.jpg", "c.jpg"), 1)
    ]
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 3,
            "bbox": [2, 2, 20, 20],
            "area": 400,
            "iscrowd": 0,
        }
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 3, "name": "x"}]})
    )
    return ann, tmp_path


def test_duplicate_annotation_ids_are_an_error_or_renumbered_when_skipping(tmp_path, caplog):
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    anns = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": b, "area": 100.0, "iscrowd": 0}
        for b in ([1, 1, 10, 10], [20, 5, 10, 10])
    ]
    path = write_coco_file(tmp_path / "dup.json", images, anns, cats=CATS_AB[:1])
    with pytest.raises(ValueError, match=r"dup\.json.*annotation id 7 appears more than once"):
        CocoDetection(path, tmp_path, identity, train=True)
    # Lenient: renumbered with a warning; both boxes are kept, once each.
    logger = logging.getLogger("gfldet")
    logger.addHandler(caplog.handler)
    try:
        ds = CocoDetection(path, tmp_path, identity, train=True, skip_bad=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert "renumbered" in caplog.text
    assert len(ds.coco.anns) == 2 and len(ds._targets[1][0]) == 2


def test_image_ids_must_be_integers(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": "b", "file_name": "b.jpg", "width": 40, "height": 30},
    ]
    path = write_coco_file(tmp_path / "ids.json", images, [], cats=CATS_AB[:1])
    with pytest.raises(ValueError, match=r"ids\.json.*image id 'b'.*integer"):
        CocoDetection(path, tmp_path, identity, train=False)


@pytest.mark.parametrize(
    "content, needle",
    [
        ([1, 2, 3], "top level must be a JSON object"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list"),
        (
            {
                "images": [{"id": 1, "file_name": "x.jpg", "height": 4}],
                "annotations": [],
                "categories": CATS_AB,
            },
            r"images\[0\] \(id 1\) has no 'width'",
        ),
        (
            {"images": [coco_image(1, "x.jpg", w=0)], "annotations": [], "categories": CATS_AB},
            "image 1 has an invalid size: width 0",
        ),
        (
            {"images": [coco_image(1, "x.jpg", w="640")], "annotations": [], "categories": CATS_AB},
            "image 1 has an invalid size: width '640'",
        ),
        (
            {
                "images": [coco_image(1, "x.jpg"), coco_image(1, "y.jpg")],
                "annotations": [],
                "categories": CATS_AB,
            },
            "image id 1 appears more than once",
        ),
        (
            {"images": [], "annotations": [], "categories": [{"id": 1}]},
            r"categories\[0\] needs an 'id' and a 'name'",
        ),
        (
            {
                "images": [coco_image(1, "x.jpg")],
                "annotations": [{"image_id": 1}],
                "categories": CATS_AB,
            },
            r"annotations\[0\] has no 'id'",
        ),
    ],
    ids=[
        "list",
        "images-not-list",
        "no-width",
        "zero-width",
        "string-width",
        "dup-image",
        "nameless-category",
        "annotation-without-id",
    ],
)
def test_annotation_file_faults_name_file_and_key(tmp_path, content, needle):
    f = tmp_path / "broken.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=needle) as info:
        CocoDetection(f, tmp_path, identity, train=False)
    assert str(f) in str(info.value)


@pytest.mark.parametrize(
    "bbox, needle",
    [
        ([1, 2, float("nan"), 5], "non-finite value"),
        ([1, float("inf"), 3, 5], "non-finite value"),
        ([10, 2, -3, 5], "negative width or height"),
        ([1, 2, 3, -0.5], "negative width or height"),
        ([1, 2, 3], "must be 4 numbers"),
        (["1", 2, 3, 4], "must be 4 numbers"),
        (None, "must be 4 numbers"),
    ],
    ids=["nan", "inf", "negative-w", "negative-h", "three", "string", "none"],
)
def test_invalid_box_is_an_error_or_left_out(tmp_path, bbox, needle, gfldet_log):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((30, 40, 3), np.uint8))
    f = write_coco_file(
        tmp_path / "a.json",
        [coco_image(1, "x.png")],
        [coco_ann(5, 1, [1, 1, 9, 9]), coco_ann(6, 1, bbox, cat=2)],
    )
    with pytest.raises(ValueError) as info:
        CocoDetection(f, tmp_path, identity, train=True)
    msg = str(info.value)
    assert str(f) in msg and "annotation 6 (image 1)" in msg and needle in msg
    assert "skip_bad_images" in msg

    ds = CocoDetection(f, tmp_path, identity, train=True, skip_bad=True)
    assert ds.box_stats["invalid"] == 1
    assert ds[0][1]["labels"].tolist() == [0]  # annotation 5 kept
    assert sorted(ds.coco.anns) == [5]  # also gone from the evaluation's ground truth
    assert any("left out annotation 6" in r.getMessage() for r in gfldet_log.records)


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path, gfldet_log):
    gfldet_log.set_level(logging.INFO, logger="gfldet")
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((30, 40, 3), np.uint8))
    anns = [
        coco_ann(1, 1, [-5, -5, 15, 15]),  # clipped to (0, 0, 10, 10)
        coco_ann(2, 1, [30, 20, 20, 20]),  # clipped to (30, 20, 40, 30)
        coco_ann(3, 1, [50, 0, 10, 10]),  # entirely outside: dropped
        coco_ann(4, 1, [5, 5, 0.5, 9]),  # under one pixel wide: dropped
        {**coco_ann(5, 1, [5, 5, 9, 9]), "area": 0},  # no area: dropped
        coco_ann(6, 1, [2, 3, 4, 5]),  # inside: kept as is
    ]
    f = write_coco_file(tmp_path / "a.json", [coco_image(1, "x.png")], anns)
    ds = CocoDetection(f, tmp_path, identity, train=True)
    assert ds.box_stats == {"clipped": 2, "dropped": 3, "invalid": 0}
    torch.testing.assert_close(
        ds[0][1]["boxes"], torch.tensor([[0.0, 0, 10, 10], [30, 20, 40, 30], [2, 3, 6, 8]])
    )
    assert any(
        "2 box(es) clipped" in r.getMessage() and "3 dropped" in r.getMessage()
        for r in gfldet_log.records
    )

    only_bad = write_coco_file(tmp_path / "b.json", [coco_image(1, "x.png")], anns[2:5])
    with pytest.raises(ValueError, match=r"b.json: no image has a usable box .*3 boxes dropped"):
        CocoDetection(only_bad, tmp_path, identity, train=True)


def test_category_ids_map_to_labels_and_images_without_targets_are_filtered(coco_files):
    ann_file, img_dir = coco_files
    train = CocoDetection(ann_file, img_dir, identity, train=True)
    assert train.cat_ids == [3, 7, 12]
    assert train.class_names == ["car", "dog", "cup"]
    assert train.cat_id_to_label == {3: 0, 7: 1, 12: 2}
    assert train.num_classes == 3
    assert train.img_ids == [7, 8, 100, 205]  # empty (9) and crowd-only (10) skipped
    ev = CocoDetection(ann_file, img_dir, identity, train=False)
    assert ev.img_ids == [7, 8, 9, 10, 100, 205]
    assert ev.coco.getImgIds() and len(ev) == 6
    np.testing.assert_array_equal(ev.group_ids(), [1, 0, 0, 1, 1, 0])


def test_a_missing_or_broken_annotation_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(missing, tmp_path, identity, train=True)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        CocoDetection(bad, tmp_path, identity, train=True)
    nokey = tmp_path / "nokey.json"
    nokey.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="nokey.json.*categories"):
        CocoDetection(nokey, tmp_path, identity, train=True)

    for name, ann in [
        ("img", coco_ann(1, 999, [0, 0, 2, 2], cat=3)),
        ("cat", coco_ann(1, 1, [0, 0, 2, 2], cat=42)),
    ]:
        f = tmp_path / f"{name}.json"
        f.write_text(
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}],
                    "annotations": [ann],
                    "categories": ODD_CATS,
                }
            )
        )
        with pytest.raises(ValueError, match=rf"{name}.json.*{999 if name == 'img' else 42}"):
            CocoDetection(f, tmp_path, identity, train=True)


def test_background_images_are_kept_for_training_with_filter_empty_false(tmp_path):
    ann, img_dir = background_set(tmp_path)
    filtered = CocoDetection(ann, img_dir, identity, train=True)
    assert filtered.img_ids == [1]  # MMDetection's filtering stays the default
    kept = CocoDetection(ann, img_dir, identity, train=True, filter_empty=False)
    assert kept.img_ids == [1, 2, 3]
    image, target = kept[1]
    assert image.shape == (3, 30, 40)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"] == 2

    # Still: a training split without a single box is an error, kept backgrounds or not.
    data = json.loads(ann.read_text())
    data["annotations"] = []
    with pytest.raises(ValueError, match="no image has a usable box"):
        CocoDetection(ann, img_dir, identity, train=True, filter_empty=False, data=data)


def test_cleaning_fills_missing_fields_renumbers_duplicates_drops_bad_boxes(tmp_path):
    """The cleaning steps (now functions) still fill, renumber and drop as before."""
    ann, img_dir = background_set(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 20, 20]},  # no area/iscrowd
        {
            "id": 1,
            "image_id": 2,
            "category_id": 3,
            "bbox": [30, 20, 20, 20],
            "area": 400,
            "iscrowd": 0,
        },  # a duplicate id, clipped to the image
        {"id": 5, "image_id": 3, "category_id": 3, "bbox": [1, 1, math.nan, 3]},  # invalid
        {
            "id": 6,
            "image_id": 3,
            "category_id": 3,
            "bbox": [50, 50, 5, 5],
            "area": 25,
            "iscrowd": 0,
        },  # outside: dropped
    ]
    ds = CocoDetection(ann, img_dir, identity, train=True, skip_bad=True, data=data)
    assert ds.box_stats == {"clipped": 1, "dropped": 1, "invalid": 1}
    assert ds.img_ids == [1, 2]
    assert sorted(a["id"] for a in ds.coco.dataset["annotations"]) == [1, 6, 7]
    assert ds.coco.anns[1]["area"] == 400.0 and ds.coco.anns[1]["iscrowd"] == 0
    np.testing.assert_array_equal(ds._targets[2][0], [[30, 20, 40, 30]])


def test_a_category_name_given_twice_is_an_error_naming_file_and_name(tmp_path):
    ann = tmp_path / "ann.json"
    cats = [{"id": 1, "name": "cat"}, {"id": 4, "name": "dog"}, {"id": 7, "name": "cat"}]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    with pytest.raises(ValueError, match=r"ann\.json: category name 'cat' is given twice"):
        CocoDetection(ann, tmp_path, None, train=False)
