"""`gfldet data convert` (gfldet.data.convert): it writes what the readers read, never over its
input or files it did not write, and refuses what the loader refuses before writing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gfldet.cli import main
from gfldet.data.coco import read_coco_json
from gfldet.data.voc import read_voc
from tests.helpers import snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def convert(*args) -> list[str]:
    return ["data", "convert", *map(str, args)]


def write_image(path: Path, w: int = 40, h: int = 30) -> None:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


BAD_COCO = {
    "unknown category": ({"category_id": 7}, {}, "annotation 1 references unknown category_id 7"),
    "width 0": ({}, {"width": 0}, "image 1 has an invalid size: width 0, height 30"),
}


def test_a_second_voc_split_does_not_replace_the_first_splits_files(shapes, tmp_path, capsys):
    voc = tmp_path / "voc"
    assert (
        main(
            convert(
                "--from",
                "coco",
                "--to",
                "voc",
                shapes["train_ann"],
                voc,
                "--img-dir",
                shapes["train_img_dir"],
                "--split",
                "train",
            )
        )
        == 0
    )
    before = snapshot(voc)
    # The val images are named 000000.jpg .. 000002.jpg too: they would replace train's.
    args = (
        "--from",
        "coco",
        "--to",
        "voc",
        shapes["val_ann"],
        voc,
        "--img-dir",
        shapes["val_img_dir"],
        "--split",
        "val",
    )
    assert main(convert(*args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'000000'" in err and "train.txt" in err and "--prefix" in err
    assert snapshot(voc) == before

    # With a prefix both splits live in one root, each with its own files.
    assert main(convert(*args, "--prefix", "val_")) == 0
    assert {k: v for k, v in snapshot(voc).items() if k in before} == before
    val = read_voc(voc / "ImageSets" / "Main" / "val.txt")
    assert [im["file_name"] for im in val["images"]] == [
        f"JPEGImages/val_{i:06d}.jpg" for i in range(3)
    ]
    assert len(read_voc(voc / "ImageSets" / "Main" / "train.txt")["images"]) == 8
    # Writing the same split again replaces its own files, as before.
    assert main(convert(*args, "--prefix", "val_")) == 0
    capsys.readouterr()


def test_voc_convert_does_not_replace_files_it_did_not_write(shapes, tmp_path, capsys):
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    mine = voc / "Annotations" / "000001.xml"
    mine.write_text("<annotation>my own notes</annotation>")
    assert (
        main(
            convert(
                "--from",
                "coco",
                "--to",
                "voc",
                shapes["val_ann"],
                voc,
                "--img-dir",
                shapes["val_img_dir"],
            )
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "000001.xml" in err and "not written by" in err
    assert mine.read_text() == "<annotation>my own notes</annotation>"


def test_convert_refuses_an_out_inside_its_input(shapes, tmp_path, capsys):
    voc = tmp_path / "voc"
    yolo = tmp_path / "yolo"
    for fmt, out in (("voc", voc), ("yolo", yolo)):
        assert (
            main(
                convert(
                    "--from",
                    "coco",
                    "--to",
                    fmt,
                    shapes["val_ann"],
                    out,
                    "--img-dir",
                    shapes["val_img_dir"],
                    "--split",
                    "val",
                )
            )
            == 0
        )
    xml = voc / "Annotations" / "000000.xml"
    label = yolo / "labels" / "val" / "000000.txt"
    image = yolo / "images" / "val" / "000001.jpg"
    cases = [
        (("--from", "voc", "--to", "coco", voc / "ImageSets" / "Main" / "val.txt", xml), xml),
        (
            (
                "--from",
                "yolo",
                "--to",
                "coco",
                yolo / "data.yaml",
                label,
                "--img-dir",
                yolo / "images" / "val",
            ),
            label,
        ),
        (
            (
                "--from",
                "yolo",
                "--to",
                "coco",
                yolo / "data.yaml",
                image,
                "--img-dir",
                yolo / "images" / "val",
            ),
            image,
        ),
    ]
    for args, target in cases:
        before = target.read_bytes()
        assert main(convert(*args)) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refusing to overwrite" in err, err
        assert target.read_bytes() == before


def test_convert_writes_what_the_reader_reads(shapes_in_voc_and_yolo):
    root, _ = shapes_in_voc_and_yolo
    converted = read_coco_json(root / "voc_val.json")
    from gfldet.data.voc import read_voc

    classes = [c["name"] for c in read_coco_json(root / "voc_train.json")["categories"]]
    val_list = root / "voc" / "ImageSets" / "Main" / "val.txt"
    assert converted == read_voc(val_list, root / "voc", classes)
    assert main(["data", "convert", "--from", "voc", "--to", "voc", "x", "y"]) == 2


def test_convert_never_writes_over_its_input(shapes_in_voc_and_yolo, capsys):
    root, _ = shapes_in_voc_and_yolo
    data_yaml = root / "yolo" / "data.yaml"
    before = data_yaml.read_bytes()
    args = ["--img-dir", str(root / "yolo" / "images" / "val")]
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "yolo",
                "--to",
                "coco",
                str(data_yaml),
                str(data_yaml),
                *args,
            ]
        )
        == 2
    )
    assert "refusing to overwrite it" in capsys.readouterr().err
    assert data_yaml.read_bytes() == before


@pytest.mark.parametrize("to", ["voc", "yolo"])
@pytest.mark.parametrize("case", list(BAD_COCO))
def test_convert_from_coco_refuses_what_the_loader_refuses(tmp_path, capsys, case, to):
    ann_patch, img_patch, message = BAD_COCO[case]
    write_image(tmp_path / "a.jpg")
    image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30, **img_patch}
    ann = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [2, 2, 20, 20],
        "area": 400,
        "iscrowd": 0,
        **ann_patch,
    }
    src = tmp_path / "bad.json"
    src.write_text(
        json.dumps(
            {"images": [image], "annotations": [ann], "categories": [{"id": 1, "name": "x"}]}
        )
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "coco",
                "--to",
                to,
                str(src),
                str(out),
                "--img-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and str(src) in err  # names the file
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()  # refused before anything is written
