"""gfldet.data.yolo.read_yolo and read_class_names: Ultralytics' layout and label files, EXIF
sizes, and bad or hostile input (a one-line error naming file and line, or a skip with a
warning; never a hang)."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from gfldet.cli import main
from gfldet.data.coco import CocoDetection, load_image
from gfldet.data.voc import read_voc, write_voc
from gfldet.data.yolo import image_size, label_path, read_class_names, read_yolo, write_yolo
from tests.helpers import DEMO, check_ids, finishes, identity


def jpeg(size=(40, 20), orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def yolo_set(root: Path, files: dict[str, bytes], labels: dict[str, str]) -> Path:
    """root/data.yaml (classes cat, dog, bird), root/images/train/<files>, root/labels/train/."""
    for rel, data in files.items():
        (root / "images" / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / "train" / rel).write_bytes(data)
    for rel, text in labels.items():
        (root / "labels" / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / rel).write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names: {0: cat, 1: dog, 2: bird}\n")
    return root / "data.yaml"


YOLO_BAD = {
    "4 numbers": ("0 0.5 0.5 0.2", "expected 5 values 'class cx cy w h', got 4"),
    "6 numbers": ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 values 'class cx cy w h', got 6"),
    "not a number": ("dog 0.5 0.5 0.2 0.2", "not a number: 'dog'"),
    "nan": ("0 nan 0.5 0.2 0.2", "not a finite number: 0 nan 0.5 0.2 0.2"),
    "class out of range": ("3 0.5 0.5 0.2 0.2", "class index 3 out of range: "),
    "negative class": ("-1 0.5 0.5 0.2 0.2", "class index -1 out of range: "),
    "fractional class": ("1.5 0.5 0.5 0.2 0.2", "class index 1.5 out of range: "),
    "zero width": ("0 0.5 0.5 0 0.2", "box width and height must be > 0, got w 0, h 0.2"),
    "outside": ("0 1.2 0.5 0.2 0.2", "coordinates must be normalised to [0, 1], got cx cy w h"),
    "pixels": ("0 320 240 50 60", "coordinates must be normalised to [0, 1]"),
}


def test_class_names_as_a_list_or_an_index_mapping(tmp_path):
    f = tmp_path / "data.yaml"
    f.write_text("names: [cat, dog]\n")
    assert read_class_names(f) == ["cat", "dog"]
    f.write_text("nc: 2\nnames:\n  1: dog\n  0: cat\n")
    assert read_class_names(f) == ["cat", "dog"]
    f.write_text("names:\n  0: cat\n  2: dog\n")
    with pytest.raises(ValueError, match=r"data.yaml: 'names' indices must be 0..1 without gaps"):
        read_class_names(f)
    f.write_text("nc: 3\nnames: [cat, dog]\n")
    with pytest.raises(ValueError, match=r"'nc' is 3 but 'names' has 2 entries"):
        read_class_names(f)
    f.write_text("names: [cat, no]\n")
    with pytest.raises(ValueError, match=r"put such class names in quotes"):
        read_class_names(f)
    f.write_text("train: images/train\n")
    with pytest.raises(ValueError, match=r"data.yaml: no 'names:'"):
        read_class_names(f)
    f.write_text("names: [cat, dog\n")
    with pytest.raises(ValueError, match=r"data.yaml:2:\d+: not valid YAML"):
        read_class_names(f)


def test_each_image_finds_its_label_file_and_boxes_are_denormalised(tmp_path):
    data_yaml = yolo_set(
        tmp_path / "ds",
        {
            "b.jpg": jpeg(),
            "sub/c.JPG": jpeg(),
            "d.png": jpeg(),
            "a.jpg": jpeg(),
            "notes.txt": b"x",
            ".hidden.jpg": jpeg(),
        },
        {"a.txt": "1 0.5 0.5 0.5 0.5\n\n2 0.25 0.75 0.1 0.2\n", "sub/c.txt": "", "d.txt": "\n"},
    )
    coco = read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    check_ids(coco, first_category=0)
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg", "d.png", "sub/c.JPG"]
    assert all((im["width"], im["height"]) == (40, 20) for im in coco["images"])
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    got = [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]]
    assert got == [(1, 1, [10.0, 5.0, 20.0, 10.0]), (1, 2, [8.0, 13.0, 4.0, 4.0])]


def test_label_path_follows_ultralytics_rule():
    s = os.sep
    assert label_path(f"{s}d{s}images{s}x{s}images{s}train{s}a.b.jpg") == (
        f"{s}d{s}images{s}x{s}labels{s}train{s}a.b.txt"
    )
    assert label_path(f"{s}d{s}pics{s}a.png") == f"{s}d{s}pics{s}a.txt"


@pytest.mark.parametrize(
    "orientation, size",
    [(None, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40)), (5, (20, 40))],
)
def test_image_size_honours_the_exif_orientation(tmp_path, orientation, size):
    path = tmp_path / "r.jpg"
    path.write_bytes(jpeg((40, 20), orientation))
    assert image_size(path) == size
    h, w = load_image(path).shape[:2]  # what gfldet decodes (OpenCV applies the orientation)
    assert (w, h) == size


@pytest.mark.parametrize("case", list(YOLO_BAD))
def test_a_bad_label_line_is_an_error_or_left_out_naming_file_and_line(tmp_path, gfldet_log, case):
    line, message = YOLO_BAD[case]
    labels = {"a.txt": "0 0.5 0.5 0.2 0.2\n", "b.txt": f"1 0.5 0.5 0.5 0.5\n{line}\n"}
    data_yaml = yolo_set(tmp_path / "ds", {"a.jpg": jpeg(), "b.jpg": jpeg()}, labels)
    img_dir = tmp_path / "ds" / "images" / "train"
    with pytest.raises(ValueError) as e:
        read_yolo(data_yaml, img_dir)
    label = str((tmp_path / "ds" / "labels" / "train" / "b.txt").resolve())
    assert f"{label}:2: {message}" in str(e.value)
    if "class index" in message:
        assert f"{data_yaml} has 3 classes (0..2)" in str(e.value)

    coco = read_yolo(data_yaml, img_dir, skip_bad=True)
    assert [a["category_id"] for a in coco["annotations"]] == [0, 1]  # the good lines stay
    warnings = [r.getMessage() for r in gfldet_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "left out 0 of 2 image(s)" in warnings[0] and "and 1 bad label line(s)" in warnings[0]
    assert f"{label}:2: {message}" in warnings[0]


def test_rounding_just_past_1_and_a_byte_order_mark_are_tolerated(tmp_path):
    data_yaml = yolo_set(
        tmp_path / "ds", {"a.jpg": jpeg()}, {"a.txt": "\ufeff0 1.0000005 0.5 0.2 0.2\n"}
    )
    coco = read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    assert coco["annotations"][0]["bbox"] == pytest.approx([36.00002, 8.0, 8.0, 4.0])


def test_an_unreadable_image_is_an_error_or_left_out(tmp_path, gfldet_log):
    labels = {"a.txt": "0 0.5 0.5 0.2 0.2\n", "b.txt": "0 0.5 0.5 0.2 0.2\n"}
    data_yaml = yolo_set(tmp_path / "ds", {"a.jpg": jpeg(), "b.jpg": b"not an image"}, labels)
    img_dir = tmp_path / "ds" / "images" / "train"
    with pytest.raises(ValueError, match=r"cannot read the image header of .*b\.jpg"):
        read_yolo(data_yaml, img_dir)
    coco = read_yolo(data_yaml, img_dir, skip_bad=True)
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg"]
    assert len(coco["annotations"]) == 1
    warnings = [r.getMessage() for r in gfldet_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "left out 1 of 2 image(s)" in warnings[0]
    assert "b.jpg" in warnings[0]


def test_a_missing_or_empty_image_folder_is_an_error(tmp_path):
    data_yaml = yolo_set(tmp_path / "ds", {}, {})
    with pytest.raises(ValueError, match="image folder not found"):
        read_yolo(data_yaml, tmp_path / "ds" / "images" / "val")
    (tmp_path / "ds" / "images" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    with pytest.raises(ValueError, match="YOLO dataset file not found"):
        read_yolo(tmp_path / "nope.yaml", tmp_path / "ds" / "images" / "train")


def test_each_label_line_is_parsed_once(tmp_path, monkeypatch):
    import gfldet.data.yolo as yolo

    data_yaml = yolo_set(
        tmp_path / "ds", {"a.jpg": jpeg()}, {"a.txt": "1 0.5 0.5 0.5 0.5\n\n2 0.25 0.75 0.1 0.2\n"}
    )
    parsed = []

    class CountingFloat(float):  # what the module calls float() becomes this
        def __new__(cls, x=0.0):
            parsed.append(x)
            return float(x)

    monkeypatch.setattr(yolo, "float", CountingFloat, raising=False)
    coco = read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    assert [a["bbox"] for a in coco["annotations"]] == [
        [10.0, 5.0, 20.0, 10.0],
        [8.0, 13.0, 4.0, 4.0],
    ]
    lines = ["1 0.5 0.5 0.5 0.5", "2 0.25 0.75 0.1 0.2"]
    assert parsed == [tok for line in lines for tok in line.split()]  # each token once


def test_a_folder_link_loop_counts_each_image_once(tmp_path, gfldet_log):
    data_yaml = yolo_set(
        tmp_path / "ds",
        {"a.jpg": jpeg(), "sub/b.jpg": jpeg()},
        {"a.txt": "0 0.5 0.5 0.5 0.5\n", "sub/b.txt": "1 0.5 0.5 0.2 0.2\n"},
    )
    img_dir = tmp_path / "ds" / "images" / "train"
    os.symlink(".", img_dir / "loop")  # into itself
    os.symlink("..", img_dir / "sub" / "up")  # a second loop: 2^40 paths if followed
    os.symlink("a.jpg", img_dir / "same_as_a.jpg")  # a second name of the same file
    coco = read_yolo(data_yaml, img_dir)
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "sub/b.jpg"]
    assert [a["category_id"] for a in coco["annotations"]] == [0, 1]  # labels of the real paths
    warnings = [r.getMessage() for r in gfldet_log.records if r.levelno == logging.WARNING]
    assert any("found more than once" in w for w in warnings), warnings


def test_a_split_without_any_label_file_warns_and_fails_data_check(tmp_path, capsys, gfldet_log):
    good = yolo_set(tmp_path / "ds", {"a.jpg": jpeg()}, {"a.txt": "0 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "ds" / "images" / "val").mkdir()
    (tmp_path / "ds" / "images" / "val" / "v.jpg").write_bytes(jpeg())
    # The val labels were forgotten (e.g. left in another folder): training reads the split
    # as images without objects, so AP would be 0 without a word.
    coco = read_yolo(good, tmp_path / "ds" / "images" / "val")
    assert coco["annotations"] == []
    warnings = [r.getMessage() for r in gfldet_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no label files found" in warnings[0], warnings
    assert str(tmp_path / "ds" / "labels" / "val") in warnings[0]

    sets = [
        "data.train.format=yolo",
        f"data.train.ann_file={good}",
        f"data.train.img_dir={tmp_path / 'ds' / 'images' / 'train'}",
        "data.val.format=yolo",
        f"data.val.ann_file={good}",
        f"data.val.img_dir={tmp_path / 'ds' / 'images' / 'val'}",
    ]
    rc = main(["data", "check", "--config", DEMO, "--no-images", "--set", *sets])
    out = capsys.readouterr().out
    assert rc == 1 and "error: " in out and "no label files found" in out, out


def test_an_alias_bomb_in_data_yaml_is_a_one_line_error(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):  # 9^7 strings once expanded
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    lines.append("names: *a6")
    f = tmp_path / "data.yaml"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        read_class_names(f)
    assert len(str(e.value)) < 400 and "data.yaml" in str(e.value) and "alias" in str(e.value)


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


def test_a_class_name_given_twice_is_an_error_naming_file_and_name(tmp_path):
    f = tmp_path / "data.yaml"
    f.write_text("names: [cat, dog, cat]\n")
    with pytest.raises(ValueError, match=r"data\.yaml: class name 'cat' is given twice"):
        read_class_names(f)
    f.write_text("names: {0: cat, 1: dog, 2: dog}\n")
    with pytest.raises(ValueError, match=r"data\.yaml: class name 'dog' is given twice"):
        read_class_names(f)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_label_file_or_image_does_not_hang(tmp_path, gfldet_log):
    data_yaml = yolo_set(
        tmp_path / "ds", {"a.jpg": jpeg(), "b.jpg": jpeg()}, {"a.txt": "0 0.5 0.5 0.5 0.5\n"}
    )
    img_dir = tmp_path / "ds" / "images" / "train"
    label = tmp_path / "ds" / "labels" / "train" / "b.txt"
    os.mkfifo(label)
    r = finishes(lambda: read_yolo(data_yaml, img_dir), [label])
    assert isinstance(r.get("error"), ValueError) and "b.txt" in str(r["error"])
    assert "not a regular file" in str(r["error"])
    r = finishes(lambda: read_yolo(data_yaml, img_dir, skip_bad=True), [label])
    assert [im["file_name"] for im in r["value"]["images"]] == ["a.jpg"]

    label.unlink()
    fifo_image = img_dir / "c.jpg"
    os.mkfifo(fifo_image)
    r = finishes(lambda: read_yolo(data_yaml, img_dir), [fifo_image])
    assert isinstance(r.get("error"), ValueError) and "c.jpg" in str(r["error"])
