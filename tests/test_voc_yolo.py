"""Pascal VOC and YOLO readers and writers (gfldet.data.voc, gfldet.data.yolo)."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gfldet.data.coco import CocoDetection, load_image
from gfldet.data.voc import read_voc, write_voc
from gfldet.data.yolo import image_size, label_path, read_class_names, read_yolo, write_yolo


@pytest.fixture
def gfldet_log(caplog):
    """gfldet's logger stops propagating once training has set it up: listen to it directly."""
    logger = logging.getLogger("gfldet")
    old = logger.propagate
    logger.propagate = False
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="gfldet")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = old


def identity(image, boxes, rng=None):
    h, w = image.shape[:2]
    return image, boxes, {"img_size": (h, w), "scale_factor": (1.0, 1.0), "flipped": False}


def by_file(coco: dict, key=lambda fn: Path(fn).name) -> dict:
    """{file key: ((width, height), sorted [(class name, bbox, iscrowd)])} of a COCO dict."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = {key(im["file_name"]): ((im["width"], im["height"]), []) for im in coco["images"]}
    file_of = {im["id"]: key(im["file_name"]) for im in coco["images"]}
    for a in coco["annotations"]:
        out[file_of[a["image_id"]]][1].append(
            (names[a["category_id"]], list(a["bbox"]), a.get("iscrowd", 0))
        )
    return {k: (size, sorted(objs)) for k, (size, objs) in out.items()}


def check_ids(coco: dict, first_category: int = 1) -> None:
    """Ids 1..N, 1..M and (categories) first_category.. (VOC 1..K, YOLO its indices 0..K-1)."""
    assert [im["id"] for im in coco["images"]] == list(range(1, len(coco["images"]) + 1))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    k = len(coco["categories"])
    assert [c["id"] for c in coco["categories"]] == list(range(first_category, first_category + k))
    for a in coco["annotations"]:
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def consumable(coco: dict, img_dir: Path, tmp_path: Path) -> CocoDetection:
    """The dict as CocoDetection reads it; every image decodes to the size the dict gives."""
    ann = tmp_path / "as_coco.json"
    ann.write_text(json.dumps(coco))
    ds = CocoDetection(ann, img_dir, identity, train=False)
    for img_id in ds.img_ids:
        ds.read_image(img_id)  # raises if the decoded size differs from width / height
    return ds


# ---------------------------------------------------------------------------------------- VOC


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
        coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": img,
                                    "area": w * h, **e})  # fmt: skip
    return coco


def test_voc_round_trip(shapes, tmp_path):
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


def test_voc_default_classes_sorted_and_root(shapes, tmp_path):
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    list_file = write_voc(coco, shapes["val_img_dir"], tmp_path / "VOC", split="val")
    back = read_voc(str(list_file))  # root: list_file.parents[2]
    found = sorted({c["name"] for c in back["categories"]})
    assert [c["name"] for c in back["categories"]] == found
    assert by_file(back) == by_file(coco)


VOC_XML = """<annotation>
  <filename>{filename}</filename>
  <size><width>100</width><height>80</height><depth>3</depth></size>
  {objects}
</annotation>
"""


def voc_object(name="dog", box=(11, 21, 40, 60), extra="<difficult>0</difficult>") -> str:
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>{extra}<bndbox>{coords}</bndbox></object>"


def write_voc_root(root: Path, xmls: dict[str, str | None], list_text: str | None = None) -> Path:
    """A VOC root with Annotations/<id>.xml (None: no file) and ImageSets/Main/test.txt."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, text in xmls.items():
        if text is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(text)
    list_file = root / "ImageSets" / "Main" / "test.txt"
    list_file.write_text(list_text if list_text is not None else "\n".join(xmls) + "\n")
    return list_file


def test_voc_difficult_truncated_float_and_parts(tmp_path):
    objects = "".join([
        voc_object("dog", (11, 21, 40, 60), "<truncated>1</truncated><difficult>1</difficult>"),
        voc_object("cat", (1, 1, 1, 1), ""),  # no <difficult>: 0; a single pixel is 1 x 1
        voc_object("cat", (48.5, 10.25, 50, 12.75), "<difficult>0</difficult>"),
        # person layout: the <part>'s own <name> and <bndbox> are not objects
        "<object><name>person</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
        "<xmax>7</xmax><ymax>8</ymax></bndbox><part><name>head</name><bndbox><xmin>5</xmin>"
        "<ymin>6</ymin><xmax>6</xmax><ymax>7</ymax></bndbox></part></object>",
    ])  # fmt: skip
    xmls = {
        "a": VOC_XML.format(filename="a.png", objects=objects),
        "b": VOC_XML.format(filename="", objects=""),  # no filename: <id>.jpg; no objects
    }
    # a per-class list: a second column, and blank lines
    list_file = write_voc_root(tmp_path / "VOC", xmls, "a  1\n\n b -1\n\n")
    coco = read_voc(list_file)
    check_ids(coco)
    assert coco["images"] == [
        {"id": 1, "file_name": "JPEGImages/a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "JPEGImages/b.jpg", "width": 100, "height": 80},
    ]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "person"]
    got = [(a["category_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]]
    assert got == [
        (2, [10.0, 20.0, 30.0, 40.0], 1),
        (1, [0.0, 0.0, 1.0, 1.0], 0),
        (1, [47.5, 9.25, 2.5, 3.5], 0),
        (3, [4.0, 5.0, 3.0, 3.0], 0),
    ]


GOOD = voc_object("dog")
VOC_BAD = {
    # case: (XML of image "b" (None: no file), message part, image dropped with skip_bad)
    "parse": (VOC_XML.format(filename="b.jpg", objects="<object><name>dog</objec>"),
              "b.xml:4: not valid XML: mismatched tag", True),
    "empty file": ("", "b.xml:1: not valid XML: no element found", True),
    "missing file": (None, "VOC annotation file not found: ", True),
    "no size": ("<annotation><filename>b.jpg</filename>" + GOOD + "</annotation>",
                "b.xml: no <size> element", True),
    "no width": ("<annotation><size><height>5</height></size>" + GOOD + "</annotation>",
                 "b.xml: <size> has no <width>", True),
    "zero size": (VOC_XML.format(filename="b.jpg", objects=GOOD).replace(">100<", ">0<"),
                  "b.xml: invalid image size: width '0', height '80'", True),
    "no name": (VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object("")),
                "b.xml: object 2: no <name>", False),
    "no xmax": (VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object().replace(
                "<xmax>40</xmax>", "")), "b.xml: object 2 ('dog'): <bndbox> has no <xmax>", False),
    "no bndbox": (VOC_XML.format(filename="b.jpg", objects=GOOD + "<object><name>dog</name>"
                  "</object>"), "b.xml: object 2 ('dog'): no <bndbox>", False),
    "not a number": (VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object(
                     box=(1, 2, "3px", 4))), "<xmax> is not a finite number: '3px'", False),
    "xmax < xmin": (VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object(box=(30, 2, 20, 9))),
                    "b.xml: object 2 ('dog'): xmax < xmin or ymax < ymin: xmin 30", False),
    "unknown class": (VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object("cow")),
                      "b.xml: object 2: class 'cow' is not among the 2 given classes", False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(VOC_BAD))
def test_voc_bad_input(tmp_path, gfldet_log, case):
    bad_xml, message, drops_image = VOC_BAD[case]
    good = VOC_XML.format(filename="a.jpg", objects=GOOD)
    list_file = write_voc_root(tmp_path / "VOC", {"a": good, "b": bad_xml})
    with pytest.raises(ValueError) as e:
        read_voc(list_file, classes=["cat", "dog"])
    assert message in str(e.value)
    assert str(tmp_path / "VOC" / "Annotations" / "b.xml") in str(e.value)
    assert "data.skip_bad_images" in str(e.value) and "\n" not in str(e.value)

    coco = read_voc(list_file, classes=["cat", "dog"], skip_bad=True)
    warnings = [r.getMessage() for r in gfldet_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0]
    if drops_image:
        assert [im["file_name"] for im in coco["images"]] == ["JPEGImages/a.jpg"]
        assert len(coco["annotations"]) == 1
        assert "left out 1 of 2 image(s)" in warnings[0] and "and 0 bad object(s)" in warnings[0]
    else:  # the bad object goes, its good neighbour stays
        assert len(coco["images"]) == 2
        assert [a["image_id"] for a in coco["annotations"]] == [1, 2]
        assert "left out 0 of 2 image(s)" in warnings[0] and "and 1 bad object(s)" in warnings[0]


def test_voc_list_file_errors(tmp_path):
    with pytest.raises(ValueError, match="VOC image list not found: .*nope.txt"):
        read_voc(tmp_path / "ImageSets" / "Main" / "nope.txt")
    list_file = write_voc_root(tmp_path / "VOC", {}, "\n  \n")
    with pytest.raises(ValueError, match=r"test.txt: VOC image list is empty"):
        read_voc(list_file)
    list_file.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"test.txt:3: image id 'a' is already listed at line 1"):
        read_voc(list_file)
    list_file.write_text("a\n")
    with pytest.raises(ValueError, match="no Annotations folder in"):
        read_voc(list_file, root=tmp_path)
    with pytest.raises(ValueError, match="all 1 images were left out"):
        read_voc(list_file, skip_bad=True)


# --------------------------------------------------------------------------------------- YOLO


def test_yolo_round_trip(shapes, tmp_path, gfldet_log):
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
        np.testing.assert_allclose([b for _, b, _ in got[key][1]], [b for _, b, _ in objs],
                                   atol=1e-3, rtol=0)  # fmt: skip
    consumable(back, out / "images" / "train", tmp_path)

    # A second split joins the first in data.yaml.
    val = json.loads(Path(shapes["val_ann"]).read_text())
    write_yolo(val, shapes["val_img_dir"], out, split="val", link_images=False)
    meta = yaml.safe_load(data_yaml.read_text())
    assert (meta["train"], meta["val"]) == ("images/train", "images/val")
    assert len(read_yolo(data_yaml, out / "images" / "val")["images"]) == 3


def test_yolo_names_list_or_mapping(tmp_path):
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


def test_yolo_label_files_and_boxes(tmp_path):
    data_yaml = yolo_set(
        tmp_path / "ds",
        {"b.jpg": jpeg(), "sub/c.JPG": jpeg(), "d.png": jpeg(), "a.jpg": jpeg(), "notes.txt": b"x",
         ".hidden.jpg": jpeg()},
        {"a.txt": "1 0.5 0.5 0.5 0.5\n\n2 0.25 0.75 0.1 0.2\n", "sub/c.txt": "", "d.txt": "\n"},
    )  # fmt: skip
    coco = read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    check_ids(coco, first_category=0)
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg", "d.png", "sub/c.JPG"]
    assert all((im["width"], im["height"]) == (40, 20) for im in coco["images"])
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    got = [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]]
    assert got == [(1, 1, [10.0, 5.0, 20.0, 10.0]), (1, 2, [8.0, 13.0, 4.0, 4.0])]


def test_label_path_is_ultralytics_rule():
    s = os.sep
    assert label_path(f"{s}d{s}images{s}x{s}images{s}train{s}a.b.jpg") == (
        f"{s}d{s}images{s}x{s}labels{s}train{s}a.b.txt"
    )
    assert label_path(f"{s}d{s}pics{s}a.png") == f"{s}d{s}pics{s}a.txt"


@pytest.mark.parametrize("orientation, size", [(None, (40, 20)), (3, (40, 20)), (6, (20, 40)),
                                               (8, (20, 40)), (5, (20, 40))])  # fmt: skip
def test_exif_rotated_size(tmp_path, orientation, size):
    path = tmp_path / "r.jpg"
    path.write_bytes(jpeg((40, 20), orientation))
    assert image_size(path) == size
    h, w = load_image(path).shape[:2]  # what gfldet decodes (OpenCV applies the orientation)
    assert (w, h) == size


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


@pytest.mark.parametrize("case", list(YOLO_BAD))
def test_yolo_bad_line(tmp_path, gfldet_log, case):
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


def test_yolo_tolerance_and_bom(tmp_path):
    data_yaml = yolo_set(tmp_path / "ds", {"a.jpg": jpeg()},
                         {"a.txt": "\ufeff0 1.0000005 0.5 0.2 0.2\n"})  # fmt: skip
    coco = read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    assert coco["annotations"][0]["bbox"] == pytest.approx([36.00002, 8.0, 8.0, 4.0])


def test_yolo_unreadable_image(tmp_path, gfldet_log):
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


def test_yolo_folder_errors(tmp_path):
    data_yaml = yolo_set(tmp_path / "ds", {}, {})
    with pytest.raises(ValueError, match="image folder not found"):
        read_yolo(data_yaml, tmp_path / "ds" / "images" / "val")
    (tmp_path / "ds" / "images" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    with pytest.raises(ValueError, match="YOLO dataset file not found"):
        read_yolo(tmp_path / "nope.yaml", tmp_path / "ds" / "images" / "train")


def test_writers_refuse_what_they_cannot_hold(shapes, tmp_path, gfldet_log):
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    clash = {**coco, "annotations": [], "images": [
        {**coco["images"][0], "file_name": "x/000000.jpg"},
        {**coco["images"][1], "file_name": "y/000000.png"},
    ]}  # fmt: skip
    with pytest.raises(ValueError, match=r"'x/000000.jpg' and 'y/000000.png' would both be VOC"):
        write_voc(clash, shapes["val_img_dir"], tmp_path / "voc")
    clash["images"][1]["file_name"] = "x/000000.png"
    with pytest.raises(ValueError, match=r"'x/000000.jpg' and 'x/000000.png' would share the"):
        write_yolo(clash, shapes["val_img_dir"], tmp_path / "yolo")

    # VOC's inclusive pixel coordinates cannot hold a box under 1 pixel: left out, counted.
    img = coco["images"][0]["id"]
    thin = {"id": 999, "image_id": img, "category_id": 1, "bbox": [5.0, 5.0, 0.5, 9.0],
            "area": 4.5, "iscrowd": 0}  # fmt: skip
    list_file = write_voc({**coco, "annotations": coco["annotations"] + [thin]},
                          shapes["val_img_dir"], tmp_path / "voc")  # fmt: skip
    assert any("left out 1 box(es) narrower or lower than 1 pixel" in r.getMessage()
               for r in gfldet_log.records)  # fmt: skip
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
    one = {**coco, "images": coco["images"][:1],
           "annotations": [a for a in coco["annotations"]
                           if a["image_id"] == coco["images"][0]["id"]]}  # fmt: skip
    for write, split in ((write_voc, "val"), (write_yolo, "train")):
        index = write(one, shapes["val_img_dir"], tmp_path / write.__name__, split)
        old = index.read_text()
        with open(index) as reader:  # opened before the rewrite, read after it
            new_index = write(coco, shapes["val_img_dir"], tmp_path / write.__name__, "val")
            assert new_index == index and reader.read() == old
        assert index.read_text() != old
        assert sorted(p.name for p in index.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_voc_and_yolo_skip_bad_items_one_way():
    """How a reader leaves out (or refuses) a bad item, and the hint it gives, is defined once
    (gfldet.data.voc._Skipped) for both readers, not copied into each."""
    from gfldet.data import voc, yolo

    hint = "data.skip_bad_images: true leaves it out"
    sources = [Path(m.__file__).read_text() for m in (voc, yolo)]
    assert sum(s.count(hint) for s in sources) == 1
    assert yolo._Skipped is voc._Skipped


def test_yolo_parses_each_label_line_once(tmp_path, monkeypatch):
    import gfldet.data.yolo as yolo

    data_yaml = yolo_set(tmp_path / "ds", {"a.jpg": jpeg()},
                         {"a.txt": "1 0.5 0.5 0.5 0.5\n\n2 0.25 0.75 0.1 0.2\n"})  # fmt: skip
    parsed = []

    class CountingFloat(float):  # what the module calls float() becomes this
        def __new__(cls, x=0.0):
            parsed.append(x)
            return float(x)

    monkeypatch.setattr(yolo, "float", CountingFloat, raising=False)
    coco = read_yolo(data_yaml, tmp_path / "ds" / "images" / "train")
    assert [a["bbox"] for a in coco["annotations"]] == [[10.0, 5.0, 20.0, 10.0],
                                                        [8.0, 13.0, 4.0, 4.0]]  # fmt: skip
    lines = ["1 0.5 0.5 0.5 0.5", "2 0.25 0.75 0.1 0.2"]
    assert parsed == [tok for line in lines for tok in line.split()]  # each token once
