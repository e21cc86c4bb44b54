"""Datasets as a careless or hostile user hands them in (issue 19): every case is a one-line
error or a warning, never a hang, a traceback or a silently wrong count; inputs keep their
bytes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from gfldet.cli import main
from gfldet.data.coco import CocoDetection
from gfldet.data.voc import read_voc
from gfldet.data.yolo import read_class_names, read_yolo

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "shapes_demo.yaml")


@pytest.fixture
def data_log(caplog):
    """gfldet's logger stops propagating once training has set it up: listen to it directly."""
    logger = logging.getLogger("gfldet")
    old = logger.propagate
    logger.propagate = False
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="gfldet")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = old


def jpeg(size=(40, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def yolo_set(root: Path, files: dict[str, bytes], labels: dict[str, str], names="[cat, dog]"):
    """root/data.yaml, root/images/train/<files>, root/labels/train/<labels>; the data.yaml."""
    for rel, data in files.items():
        (root / "images" / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / "train" / rel).write_bytes(data)
    for rel, text in labels.items():
        (root / "labels" / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / rel).write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(f"names: {names}\n")
    return root / "data.yaml"


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def convert(*args) -> list[str]:
    return ["data", "convert", *map(str, args)]


# ------------------------------------------------------------ data convert: outputs vs inputs


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


# ------------------------------------------------------------------------- YOLO: folder links


def test_yolo_folder_link_loops_count_each_image_once(tmp_path, data_log):
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
    warnings = [r.getMessage() for r in data_log.records if r.levelno == logging.WARNING]
    assert any("found more than once" in w for w in warnings), warnings


# --------------------------------------------------------------------- YOLO: no labels at all


def test_a_yolo_split_without_any_label_file_warns_and_fails_data_check(tmp_path, capsys, data_log):
    good = yolo_set(tmp_path / "ds", {"a.jpg": jpeg()}, {"a.txt": "0 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "ds" / "images" / "val").mkdir()
    (tmp_path / "ds" / "images" / "val" / "v.jpg").write_bytes(jpeg())
    # The val labels were forgotten (e.g. left in another folder): training reads the split
    # as images without objects, so AP would be 0 without a word.
    coco = read_yolo(good, tmp_path / "ds" / "images" / "val")
    assert coco["annotations"] == []
    warnings = [r.getMessage() for r in data_log.records if r.levelno == logging.WARNING]
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


# --------------------------------------------------------------------- repeated class names


def test_repeated_class_names_are_errors_naming_file_and_name(tmp_path):
    f = tmp_path / "data.yaml"
    f.write_text("names: [cat, dog, cat]\n")
    with pytest.raises(ValueError, match=r"data\.yaml: class name 'cat' is given twice"):
        read_class_names(f)
    f.write_text("names: {0: cat, 1: dog, 2: dog}\n")
    with pytest.raises(ValueError, match=r"data\.yaml: class name 'dog' is given twice"):
        read_class_names(f)

    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": [],
                "annotations": [],
                "categories": [
                    {"id": 1, "name": "cat"},
                    {"id": 4, "name": "dog"},
                    {"id": 7, "name": "cat"},
                ],
            }
        )
    )
    with pytest.raises(ValueError, match=r"ann\.json: category name 'cat' is given twice"):
        CocoDetection(ann, tmp_path, None, train=False)

    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"class name 'b' is given twice"):
        read_voc(voc / "ImageSets" / "Main" / "train.txt", classes=["a", "b", "b"])


# ------------------------------------------------------------------- FIFOs and odd bytes


def finishes(fn, fifos: list[Path], timeout: float = 20.0):
    """fn()'s result or exception; fails (and unblocks the reader) if it hangs on a FIFO."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in fifos:  # a writer that closes at once gives the blocked reader an EOF
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"hung on a FIFO: {fifos}")
    return result


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_label_file_image_or_xml_does_not_hang(tmp_path, data_log):
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

    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("x\n")
    xml = voc / "Annotations" / "x.xml"
    os.mkfifo(xml)
    r = finishes(lambda: read_voc(voc / "ImageSets" / "Main" / "train.txt"), [xml])
    assert isinstance(r.get("error"), ValueError) and "x.xml" in str(r["error"])
    assert "not a regular file" in str(r["error"])


def test_a_nul_byte_in_a_voc_list_is_a_one_line_error(tmp_path):
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\nb\x00c\n")
    with pytest.raises(ValueError) as e:
        read_voc(voc / "ImageSets" / "Main" / "train.txt")
    assert "train.txt:2:" in str(e.value) and "NUL" in str(e.value)
    assert "\n" not in str(e.value) and "\x00" not in str(e.value)


# ------------------------------------------------------------------------- data synth sizes


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--img-size", 200000),
        ("--num-train", 10**9),
        ("--max-objects", 10**6),
        ("--max-size", 10**7),
    ],
)
def test_synth_refuses_absurd_sizes_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), flag, str(value)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "<=" in err, err
    assert not out.exists()


# ----------------------------------------------------------------------- data.yaml as data


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
