"""Ids users recognise (YOLO class indices, VOC names) and background images kept as negatives
(issue 21 items 2 and 5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from gfldet.data.coco import CocoDetection
from gfldet.data.voc import read_voc, write_voc
from gfldet.data.yolo import read_yolo, write_yolo


def identity(image, boxes, rng=None):
    h, w = image.shape[:2]
    return image, boxes, {"img_size": (h, w), "scale_factor": (1.0, 1.0), "flipped": False}


def test_yolo_category_ids_are_the_class_indices_and_voc_ids_follow_the_names(shapes, tmp_path):
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    data_yaml = write_yolo(coco, shapes["val_img_dir"], tmp_path / "yolo", "val")
    back = read_yolo(data_yaml, tmp_path / "yolo" / "images" / "val")
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert back["categories"] == [{"id": i, "name": n} for i, n in enumerate(names)]
    label_lines = (tmp_path / "yolo" / "labels" / "val" / "000000.txt").read_text().splitlines()
    first = next(a for a in back["annotations"] if a["image_id"] == 1)
    assert first["category_id"] == int(label_lines[0].split()[0])  # the index in the label file

    ds = CocoDetection(
        data_yaml, tmp_path / "yolo" / "images" / "val", identity, train=False, data=back
    )
    assert ds.cat_ids == list(range(len(names)))  # label k is class index k, id k

    # VOC: the names are the classes; ids 1..K number them in label order.
    list_file = write_voc(coco, shapes["val_img_dir"], tmp_path / "voc", "val")
    voc = read_voc(list_file, classes=["triangle", "circle", "square", "star", "cross", "ellipse"])
    assert [(c["id"], c["name"]) for c in voc["categories"]][:2] == [(1, "triangle"), (2, "circle")]


def test_pycocotools_scores_a_category_id_of_zero(tmp_path):
    """YOLO's class 0 is category id 0: evaluation must count it like any other id."""
    from gfldet.evaluation.evaluator import coco_evaluate

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2)]
    gts = [(1, 0, [10, 10, 30, 30]), (1, 1, [50, 50, 40, 30]), (2, 0, [5, 60, 20, 20])]
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(gts)
    ]
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}],
    }
    ds = CocoDetection(tmp_path / "gt.json", tmp_path, identity, train=False, data=data)
    perfect = [{"image_id": i, "category_id": c, "bbox": b, "score": 0.9} for i, c, b in gts]
    metrics = coco_evaluate(ds.coco, perfect, ds.class_names, ds.cat_ids, None, plots=False)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["cat"]["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["cat"]["num_gt"] == 2
    # A wrong class-0 detection is a false positive of class 0, not ignored.
    fp = [*perfect, {"image_id": 2, "category_id": 0, "bbox": [60, 5, 30, 30], "score": 0.95}]
    metrics = coco_evaluate(ds.coco, fp, ds.class_names, ds.cat_ids, None, plots=False)
    assert metrics["per_class"]["cat"]["num_det"] == 3
    assert metrics["per_class"]["cat"]["AP"] < 1.0
    assert metrics["per_class"]["dog"]["AP"] == pytest.approx(1.0)


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


def test_cleaning_keeps_its_behaviour(tmp_path):
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
