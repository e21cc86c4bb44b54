"""`gfldet data check` (gfldet.data.check): every problem of a COCO, YOLO or VOC set reported
once, and clean data passing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gfldet.cli import main
from gfldet.data.synth import shapes_overrides
from tests.helpers import DEMO

pytestmark = pytest.mark.usefixtures("one_thread")


def write_image(path: Path, w: int = 40, h: int = 30) -> None:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def check(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["data", "check", "--config", DEMO, "--set", *args])
    return rc, capsys.readouterr().out


def test_data_check_finds_every_problem_and_passes_clean_data(shapes, tmp_path, capsys):
    clean = [*shapes_overrides(shapes)]
    rc, out = check(clean, capsys)
    assert rc == 0 and out.strip().endswith("OK: training and evaluation can read this data")
    assert "train (coco," in out and "8 images" in out

    # COCO: a duplicate annotation id, a missing image, a truncated JPEG, a wrong size.
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(imgs / name)
    data = (imgs / "b.jpg").read_bytes()
    (imgs / "b.jpg").write_bytes(data[: len(data) // 2])
    images = [
        {"id": i + 1, "file_name": n, "width": 40, "height": 30}
        for i, n in enumerate(["a.jpg", "b.jpg", "c.jpg", "gone.jpg"])
    ]
    images[2]["width"] = 50
    anns = [
        {
            "id": 1,
            "image_id": i,
            "category_id": 1,
            "bbox": [2, 2, 20, 20],
            "area": 400,
            "iscrowd": 0,
        }
        for i in (1, 2, 3, 4)
    ]
    anns[3]["id"] = 1  # a duplicate
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    sets = [
        f"data.train.ann_file={bad}",
        f"data.train.img_dir={imgs}",
        f"data.val.ann_file={bad}",
        f"data.val.img_dir={imgs}",
    ]
    rc, out = check(sets, capsys)
    assert rc == 1 and "PROBLEMS" in out
    for needle in (
        "annotation id 1 appears more than once",
        "gone.jpg",
        "truncated JPEG",
        "c.jpg is 40x30",
    ):
        assert needle in out, needle

    # YOLO: a line of 4 numbers and a class index out of range, named file:line.
    yolo = tmp_path / "yolo"
    (yolo / "images" / "train").mkdir(parents=True)
    (yolo / "labels" / "train").mkdir(parents=True)
    write_image(yolo / "images" / "train" / "p.jpg")
    (yolo / "labels" / "train" / "p.txt").write_text("0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n")
    (yolo / "data.yaml").write_text("names: [x, y]\n")
    ysets = [
        "data.train.format=yolo",
        f"data.train.ann_file={yolo / 'data.yaml'}",
        f"data.train.img_dir={yolo / 'images' / 'train'}",
        "data.val.format=yolo",
        f"data.val.ann_file={yolo / 'data.yaml'}",
        f"data.val.img_dir={yolo / 'images' / 'train'}",
    ]
    rc, out = check(ysets, capsys)
    assert rc == 1 and "p.txt:1" in out and "p.txt:2" in out and "out of range" in out

    # VOC: an annotation file that is not XML.
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "JPEGImages").mkdir()
    write_image(voc / "JPEGImages" / "q.jpg")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("q\n")
    (voc / "Annotations" / "q.xml").write_text("<annotation><size>")
    vsets = [
        "data.train.format=voc",
        f"data.train.ann_file={voc / 'ImageSets/Main/train.txt'}",
        f"data.train.img_dir={voc}",
        "data.val.format=voc",
        f"data.val.ann_file={voc / 'ImageSets/Main/train.txt'}",
        f"data.val.img_dir={voc}",
    ]
    rc, out = check(vsets, capsys)
    assert rc == 1 and "q.xml" in out and "not valid XML" in out


@pytest.mark.parametrize("skip", ["false", "true"])
def test_data_check_reports_a_missing_image_once(tmp_path, capsys, skip):
    # Found missing by the build, then again when every image is decoded: one line, not two.
    write_image(tmp_path / "a.jpg")
    images = [
        {"id": i, "file_name": n, "width": 40, "height": 30}
        for i, n in ((1, "a.jpg"), (2, "gone.jpg"))
    ]
    anns = [
        {
            "id": i,
            "image_id": i,
            "category_id": 1,
            "bbox": [2, 2, 20, 20],
            "area": 400,
            "iscrowd": 0,
        }
        for i in (1, 2)
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    sets = [
        f"data.{split}.{key}={value}"
        for split in ("train", "val")
        for key, value in (("ann_file", ann), ("img_dir", tmp_path))
    ]
    rc, out = check([*sets, f"data.skip_bad_images={skip}"], capsys)
    assert rc == (1 if skip == "false" else 0)
    lines = [line for line in out.splitlines() if "gone.jpg" in line]
    kind = "error" if skip == "false" else "skipped"
    assert lines == [f"  {kind}: image file not found: {tmp_path / 'gone.jpg'}"] * 2  # per split
