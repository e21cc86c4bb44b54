"""gfldet.data.voc.write_voc and gfldet.data.yolo.write_yolo: COCO written as VOC or YOLO reads
back as it was, inputs are checked as the COCO loader does, and index files are replaced whole."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from gfldet.data.voc import read_voc, write_voc
from gfldet.data.yolo import read_yolo, write_yolo
from tests.helpers import by_file, check_ids, consumable


def shapes_with_extras(shapes) -> dict:
    """The shapes train split plus a fractional box and a crowd box."""
    coco = json.loads(Path(shapes["train_ann"]).read_text())
    coco = copy.deepcopy(coco)
    img = coco["images"][0]["id"]
    extra = [
        {"bbox": [0.1, 2.3, 10.7, 5.25], "iscrowd": 0, "category_id": 5},
        {"bbox": [3.0, 4.0, 20.0, 30.0], "iscrowd": 1, "category_id": 9},
        {"bbox": [1e-30, 0.0, 63.999999, 1.0000001], "iscrowd": 0, "category_id": 1},
    ]
    for e in extra:
        w, h = e["bbox"][2:]
        coco["annotations"].append(
            {"id": len(coco["annotations"]) + 1, "image_id": img, "area": w * h, **e}
        )
    return coco


def test_a_coco_set_written_as_voc_reads_back_exactly(shapes, tmp_path):
    coco = shapes_with_extras(shapes)
    list_file = write_voc(coco, shapes["train_img_dir"], tmp_path / "VOC", split="trainval")
    assert list_file == tmp_path / "VOC" / "ImageSets" / "Main" / "trainval.txt"
    assert list_file.read_text().split() == [f"{i:06d}" for i in range(8)]

    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    back = read_voc(list_file, classes=names)
    check_ids(back)
    assert [c["name"] for c in back["categories"]] == names
    assert [im["file_name"] for im in back["images"]] == [
        f"JPEGImages/{i:06d}.jpg" for i in range(8)
    ]
    # Exact equality, fractional boxes included: the +-1 is done in decimal arithmetic.
    assert by_file(back) == by_file(coco)
    assert sum(a["iscrowd"] for a in back["annotations"]) == 1
    src = Path(shapes["train_img_dir"]) / "000000.jpg"
    assert (tmp_path / "VOC" / "JPEGImages" / "000000.jpg").read_bytes() == src.read_bytes()
    consumable(back, tmp_path / "VOC", tmp_path)

    # The coordinate convention: COCO [3, 4, 20, 30] is VOC 4 5 23 34 (1-based, inclusive).
    xml = (tmp_path / "VOC" / "Annotations" / "000000.xml").read_text()
    assert "<xmin>4</xmin>" in xml and "<ymin>5</ymin>" in xml
    assert "<xmax>23</xmax>" in xml and "<ymax>34</ymax>" in xml
    assert "<xmin>1.1</xmin>" in xml and "<xmax>10.8</xmax>" in xml  # 0.1 + 1, 0.1 + 10.7
    assert "<difficult>1</difficult>" in xml


def test_a_coco_set_written_as_yolo_reads_back_within_rounding(shapes, tmp_path, gfldet_log):
    coco = shapes_with_extras(shapes)
    out = tmp_path / "yolo"
    data_yaml = write_yolo(coco, shapes["train_img_dir"], out, split="train")
    warnings = [r.getMessage() for r in gfldet_log.records]
    assert any("left out 1 crowd box(es)" in w for w in warnings)
    meta = yaml.safe_load(data_yaml.read_text())
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert meta == {"path": str(out.resolve()), "train": "images/train", "names": names}
    assert (out / "labels" / "train" / "000000.txt").is_file()

    back = read_yolo(data_yaml, out / "images" / "train")
    check_ids(back, first_category=0)
    assert [c["name"] for c in back["categories"]] == names
    assert [im["file_name"] for im in back["images"]] == [f"{i:06d}.jpg" for i in range(8)]
    expected = by_file(
        {**coco, "annotations": [a for a in coco["annotations"] if not a["iscrowd"]]}
    )
    got = by_file(back)
    assert got.keys() == expected.keys()
    for key, (size, objs) in expected.items():
        assert got[key][0] == size
        assert [(n, c) for n, _, c in got[key][1]] == [(n, c) for n, _, c in objs]
        np.testing.assert_allclose(
            [b for _, b, _ in got[key][1]], [b for _, b, _ in objs], atol=1e-3, rtol=0
        )
    consumable(back, out / "images" / "train", tmp_path)

    # A second split joins the first in data.yaml.
    val = json.loads(Path(shapes["val_ann"]).read_text())
    write_yolo(val, shapes["val_img_dir"], out, split="val", link_images=False)
    meta = yaml.safe_load(data_yaml.read_text())
    assert (meta["train"], meta["val"]) == ("images/train", "images/val")
    assert len(read_yolo(data_yaml, out / "images" / "val")["images"]) == 3


def test_writers_refuse_what_they_cannot_hold(shapes, tmp_path, gfldet_log):
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    clash = {
        **coco,
        "annotations": [],
        "images": [
            {**coco["images"][0], "file_name": "x/000000.jpg"},
            {**coco["images"][1], "file_name": "y/000000.png"},
        ],
    }
    with pytest.raises(ValueError, match=r"'x/000000.jpg' and 'y/000000.png' would both be VOC"):
        write_voc(clash, shapes["val_img_dir"], tmp_path / "voc")
    clash["images"][1]["file_name"] = "x/000000.png"
    with pytest.raises(ValueError, match=r"'x/000000.jpg' and 'x/000000.png' would share the"):
        write_yolo(clash, shapes["val_img_dir"], tmp_path / "yolo")

    # VOC's inclusive pixel coordinates cannot hold a box under 1 pixel: left out, counted.
    img = coco["images"][0]["id"]
    thin = {
        "id": 999,
        "image_id": img,
        "category_id": 1,
        "bbox": [5.0, 5.0, 0.5, 9.0],
        "area": 4.5,
        "iscrowd": 0,
    }
    list_file = write_voc(
        {**coco, "annotations": coco["annotations"] + [thin]},
        shapes["val_img_dir"],
        tmp_path / "voc",
    )
    assert any(
        "left out 1 box(es) narrower or lower than 1 pixel" in r.getMessage()
        for r in gfldet_log.records
    )
    assert len(read_voc(list_file)["annotations"]) == len(coco["annotations"])


@pytest.mark.parametrize("write", [write_voc, write_yolo])
def test_writers_check_their_input_as_the_coco_loader_does(shapes, tmp_path, write):
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    src = tmp_path / "in.json"
    first = coco["annotations"][0]["id"]
    unknown = copy.deepcopy(coco)
    unknown["annotations"][0]["category_id"] = 99
    with pytest.raises(ValueError) as e:
        write(unknown, shapes["val_img_dir"], tmp_path / "out", source=src)
    assert str(e.value) == f"{src}: annotation {first} references unknown category_id 99"
    no_width = copy.deepcopy(coco)
    no_width["images"][0]["width"] = 0
    img = no_width["images"][0]["id"]
    with pytest.raises(ValueError, match=rf"in\.json: image {img} has an invalid size: width 0,"):
        write(no_width, shapes["val_img_dir"], tmp_path / "out", source=src)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_index_files_are_replaced_whole(shapes, tmp_path):
    """The VOC list and data.yaml are written to a temp file and renamed over the old one: a
    reader (or a crash mid-write) never sees a half-written index, only the old or the new."""
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    one = {
        **coco,
        "images": coco["images"][:1],
        "annotations": [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]],
    }
    for write, split in ((write_voc, "val"), (write_yolo, "train")):
        index = write(one, shapes["val_img_dir"], tmp_path / write.__name__, split)
        old = index.read_text()
        with open(index) as reader:  # opened before the rewrite, read after it
            new_index = write(coco, shapes["val_img_dir"], tmp_path / write.__name__, "val")
            assert new_index == index and reader.read() == old
        assert index.read_text() != old
        assert sorted(p.name for p in index.parent.iterdir() if p.name.endswith(".tmp")) == []
