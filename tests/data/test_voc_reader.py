"""gfldet.data.voc.read_voc: Pascal VOC's XML and image lists, and bad or hostile input (a
one-line error naming the file, or a skip with a warning; never a hang)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from gfldet.data.voc import read_voc, write_voc
from tests.helpers import by_file, check_ids, finishes

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


GOOD = voc_object("dog")


VOC_BAD = {
    # case: (XML of image "b" (None: no file), message part, image dropped with skip_bad)
    "parse": (
        VOC_XML.format(filename="b.jpg", objects="<object><name>dog</objec>"),
        "b.xml:4: not valid XML: mismatched tag",
        True,
    ),
    "empty file": ("", "b.xml:1: not valid XML: no element found", True),
    "missing file": (None, "VOC annotation file not found: ", True),
    "no size": (
        "<annotation><filename>b.jpg</filename>" + GOOD + "</annotation>",
        "b.xml: no <size> element",
        True,
    ),
    "no width": (
        "<annotation><size><height>5</height></size>" + GOOD + "</annotation>",
        "b.xml: <size> has no <width>",
        True,
    ),
    "zero size": (
        VOC_XML.format(filename="b.jpg", objects=GOOD).replace(">100<", ">0<"),
        "b.xml: invalid image size: width '0', height '80'",
        True,
    ),
    "no name": (
        VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object("")),
        "b.xml: object 2: no <name>",
        False,
    ),
    "no xmax": (
        VOC_XML.format(
            filename="b.jpg", objects=GOOD + voc_object().replace("<xmax>40</xmax>", "")
        ),
        "b.xml: object 2 ('dog'): <bndbox> has no <xmax>",
        False,
    ),
    "no bndbox": (
        VOC_XML.format(filename="b.jpg", objects=GOOD + "<object><name>dog</name></object>"),
        "b.xml: object 2 ('dog'): no <bndbox>",
        False,
    ),
    "not a number": (
        VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object(box=(1, 2, "3px", 4))),
        "<xmax> is not a finite number: '3px'",
        False,
    ),
    "xmax < xmin": (
        VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object(box=(30, 2, 20, 9))),
        "b.xml: object 2 ('dog'): xmax < xmin or ymax < ymin: xmin 30",
        False,
    ),
    "unknown class": (
        VOC_XML.format(filename="b.jpg", objects=GOOD + voc_object("cow")),
        "b.xml: object 2: class 'cow' is not among the 2 given classes",
        False,
    ),
}


def test_classes_default_to_the_sorted_names_and_the_root_to_the_lists(shapes, tmp_path):
    coco = json.loads(Path(shapes["val_ann"]).read_text())
    list_file = write_voc(coco, shapes["val_img_dir"], tmp_path / "VOC", split="val")
    back = read_voc(str(list_file))  # root: list_file.parents[2]
    found = sorted({c["name"] for c in back["categories"]})
    assert [c["name"] for c in back["categories"]] == found
    assert by_file(back) == by_file(coco)


def test_difficult_truncated_fractional_boxes_and_person_parts(tmp_path):
    objects = "".join(
        [
            voc_object("dog", (11, 21, 40, 60), "<truncated>1</truncated><difficult>1</difficult>"),
            voc_object("cat", (1, 1, 1, 1), ""),  # no <difficult>: 0; a single pixel is 1 x 1
            voc_object("cat", (48.5, 10.25, 50, 12.75), "<difficult>0</difficult>"),
            # person layout: the <part>'s own <name> and <bndbox> are not objects
            "<object><name>person</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
            "<xmax>7</xmax><ymax>8</ymax></bndbox><part><name>head</name><bndbox><xmin>5</xmin>"
            "<ymin>6</ymin><xmax>6</xmax><ymax>7</ymax></bndbox></part></object>",
        ]
    )
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


@pytest.mark.parametrize("case", list(VOC_BAD))
def test_a_bad_annotation_file_is_an_error_or_left_out_with_a_warning(tmp_path, gfldet_log, case):
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


def test_image_list_errors_name_the_list_file(tmp_path):
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


def test_voc_and_yolo_skip_bad_items_one_way():
    """How a reader leaves out (or refuses) a bad item, and the hint it gives, is defined once
    (gfldet.data.voc._Skipped) for both readers, not copied into each."""
    from gfldet.data import voc, yolo

    hint = "data.skip_bad_images: true leaves it out"
    sources = [Path(m.__file__).read_text() for m in (voc, yolo)]
    assert sum(s.count(hint) for s in sources) == 1
    assert yolo._Skipped is voc._Skipped


def test_a_nul_byte_in_the_image_list_is_a_one_line_error(tmp_path):
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\nb\x00c\n")
    with pytest.raises(ValueError) as e:
        read_voc(voc / "ImageSets" / "Main" / "train.txt")
    assert "train.txt:2:" in str(e.value) and "NUL" in str(e.value)
    assert "\n" not in str(e.value) and "\x00" not in str(e.value)


def test_a_class_name_given_twice_is_an_error_naming_it(tmp_path):
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"class name 'b' is given twice"):
        read_voc(voc / "ImageSets" / "Main" / "train.txt", classes=["a", "b", "b"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_annotation_file_does_not_hang(tmp_path):
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("x\n")
    xml = voc / "Annotations" / "x.xml"
    os.mkfifo(xml)
    r = finishes(lambda: read_voc(voc / "ImageSets" / "Main" / "train.txt"), [xml])
    assert isinstance(r.get("error"), ValueError) and "x.xml" in str(r["error"])
    assert "not a regular file" in str(r["error"])
