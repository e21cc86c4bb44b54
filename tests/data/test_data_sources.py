"""A dataset named by one path (gfldet.data.sources.data_source, for `gfldet train --data`):
YOLO data.yaml in Ultralytics' forms, a VOC root, a COCO folder or a pair of json files; the
readers accept what it returns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gfldet.cli import main
from gfldet.data.loader import read_annotations
from gfldet.data.sources import DataSourceError, data_source
from gfldet.data.synth import CLASSES
from tests.helpers import DEMO


@pytest.fixture(scope="module")
def forms(shapes, tmp_path_factory):
    """The tiny shapes set as YOLO and VOC (written by `gfldet data convert`), as a COCO 2017
    layout and as a Roboflow COCO export."""
    root = tmp_path_factory.mktemp("forms")
    for split in ("train", "val"):
        src = [shapes[f"{split}_ann"], "--img-dir", shapes[f"{split}_img_dir"], "--split", split]
        for fmt, extra in (("yolo", []), ("voc", ["--prefix", "val_"] if split == "val" else [])):
            args = ["data", "convert", "--from", "coco", "--to", fmt, src[0], root / fmt, *src[1:]]
            assert main([str(a) for a in [*args, *extra]]) == 0
        coco = root / "coco2017"
        (coco / "annotations").mkdir(parents=True, exist_ok=True)
        shutil.copy(shapes[f"{split}_ann"], coco / "annotations" / f"instances_{split}2017.json")
        shutil.copy(shapes[f"{split}_ann"], coco / "annotations" / f"captions_{split}2017.json")
        shutil.copytree(shapes[f"{split}_img_dir"], coco / f"{split}2017")
        rf = root / "roboflow" / ("valid" if split == "val" else split)
        shutil.copytree(shapes[f"{split}_img_dir"], rf)
        shutil.copy(shapes[f"{split}_ann"], rf / "_annotations.coco.json")
    return root


def read_split(split) -> dict:
    return read_annotations(split.format, split.ann_file, split.img_dir)


def test_a_yolo_data_yaml_as_written_by_convert(forms):
    src = data_source(forms / "yolo" / "data.yaml")
    assert src.kind == "yolo" and src.classes == tuple(CLASSES)
    assert src.train.img_dir == str((forms / "yolo" / "images" / "train").resolve())
    assert [len(read_split(s)["images"]) for s in (src.train, src.val)] == [8, 3]
    assert data_source(forms / "yolo").train == src.train  # the folder that holds data.yaml
    keys = src.config_overrides()
    assert keys["data.train.format"] == "yolo" and keys["data.val.img_dir"] == src.val.img_dir
    assert "data.classes" not in keys


def test_convert_from_yolo_reads_the_data_yaml_split_by_default(forms, tmp_path):
    from gfldet.data.convert import convert_annotations

    done = convert_annotations(
        "yolo", "coco", forms / "yolo" / "data.yaml", tmp_path / "v.json", split="val"
    )
    assert (done.images, done.classes) == (3, len(CLASSES))
    assert str(done).endswith(f"-> {tmp_path / 'v.json'} (coco)")
    data = json.loads((tmp_path / "v.json").read_text())
    assert all(Path(im["file_name"]).is_absolute() for im in data["images"])
    with pytest.raises(ValueError, match="has no 'test:'"):
        convert_annotations(
            "yolo", "coco", forms / "yolo" / "data.yaml", tmp_path / "t.json", split="test"
        )


def write_yaml(folder: Path, text: str) -> Path:
    f = folder / "custom.yaml"
    f.write_text(text)
    return f


def test_yolo_paths_as_ultralytics_reads_them(forms, tmp_path, monkeypatch):
    yolo = forms / "yolo"
    names = "names: {0: circle, 1: square, 2: triangle, 3: star, 4: cross, 5: ellipse}\n"
    # Relative to the yaml's folder without `path:`; with a relative `path:`.
    for head in ("", "path: .\n", f"path: {yolo}\n"):
        src = data_source(write_yaml(yolo, f"{head}train: images/train\nval: images/val\n{names}"))
        assert src.train.img_dir == str((yolo / "images" / "train").resolve())
        assert src.classes == tuple(CLASSES)
    # `path:` relative to the current folder when not to the yaml's (Ultralytics' rule).
    monkeypatch.chdir(forms)
    elsewhere = tmp_path / "cfg"
    elsewhere.mkdir()
    src = data_source(
        write_yaml(elsewhere, f"path: yolo\ntrain: images/train\nval: images/val\n{names}")
    )
    assert src.val.img_dir == str((yolo / "images" / "val").resolve())

    # A list of folders: the split's name stands for them, and the reader follows data.yaml.
    extra = yolo / "images" / "extra"
    if not extra.exists():
        shutil.copytree(yolo / "images" / "val", extra)
        shutil.copytree(yolo / "labels" / "val", yolo / "labels" / "extra")
    src = data_source(
        write_yaml(yolo, f"train: [images/train, images/extra]\nval: images/val\n{names}")
    )
    assert src.train.img_dir == "train"
    train = read_split(src.train)
    assert len(train["images"]) == 11
    assert all(Path(im["file_name"]).is_absolute() for im in train["images"])
    n_val_boxes = len(read_split(src.val)["annotations"])
    assert len(train["annotations"]) == n_val_boxes + len(
        read_split(data_source(yolo / "data.yaml").train)["annotations"]
    )

    # A .txt list of images: `./` lines relative to the list's folder, others as given.
    images = sorted((yolo / "images" / "train").glob("*.jpg"))
    lines = [f"./images/train/{p.name}" for p in images[:5]] + [str(p) for p in images[5:]]
    (yolo / "train_list.txt").write_text("\n".join(lines) + "\n")
    src = data_source(write_yaml(yolo, f"train: train_list.txt\nval: images/val\n{names}"))
    assert src.train.img_dir == str((yolo / "train_list.txt").resolve())
    train = read_split(src.train)
    assert len(train["images"]) == 8 and len(train["annotations"]) == len(
        read_split(data_source(yolo / "data.yaml").train)["annotations"]
    )

    # What data check (and training) read from the returned sections, as a config.
    src = data_source(
        write_yaml(yolo, f"train: [images/train, images/extra]\nval: images/val\n{names}")
    )
    sets = [f"{k}={v}" for k, v in src.config_overrides().items()]
    assert main(["data", "check", "--config", DEMO, "--no-images", "--set", *sets]) == 0


def test_a_voc_root(forms, capsys):
    src = data_source(forms / "voc")
    assert src.kind == "voc"
    assert src.train.ann_file == str((forms / "voc" / "ImageSets" / "Main" / "train.txt").resolve())
    assert src.val.img_dir == str((forms / "voc").resolve())
    assert src.classes == tuple(sorted(CLASSES))  # the names of both splits, sorted
    keys = src.config_overrides()
    assert keys["data.classes"] == sorted(CLASSES)
    for split, n in ((src.train, 8), (src.val, 3)):
        data = read_annotations(split.format, split.ann_file, split.img_dir, list(src.classes))
        assert len(data["images"]) == n
    sets = [f"{k}={v}" for k, v in keys.items() if k != "data.classes"]
    sets.append(f"data.classes=[{','.join(src.classes)}]")
    assert main(["data", "check", "--config", DEMO, "--set", *sets]) == 0
    capsys.readouterr()


def test_coco_folders_and_pairs(shapes, forms):
    expected = [
        (len(json.loads(Path(shapes[f"{s}_ann"]).read_text())["images"])) for s in ("train", "val")
    ]
    names = tuple(
        c["name"]
        for c in sorted(
            json.loads(Path(shapes["val_ann"]).read_text())["categories"], key=lambda c: c["id"]
        )
    )
    coco = forms / "coco2017"
    cases = {
        "coco 2017 layout": (
            coco,
            coco / "annotations" / "instances_train2017.json",
            coco / "train2017",
        ),
        "shapes layout": (
            Path(shapes["train_ann"]).parents[1],
            shapes["train_ann"],
            shapes["train_img_dir"],
        ),
        "a pair of files": (
            [shapes["train_ann"], shapes["val_ann"]],
            shapes["train_ann"],
            shapes["train_img_dir"],
        ),
        "roboflow export": (
            forms / "roboflow",
            forms / "roboflow" / "train" / "_annotations.coco.json",
            forms / "roboflow" / "train",
        ),
    }
    for case, (path, train_ann, train_imgs) in cases.items():
        src = data_source(path)
        assert src.kind == "coco" and src.classes == names, case
        assert src.train.ann_file == str(Path(train_ann).resolve()), case
        assert src.train.img_dir == str(Path(train_imgs).resolve()), case
        for split, n in zip((src.train, src.val), expected, strict=True):
            from gfldet.data.coco import read_coco_json

            data = read_coco_json(Path(split.ann_file))
            assert len(data["images"]) == n, case
            assert (Path(split.img_dir) / data["images"][0]["file_name"]).is_file(), case


def test_what_is_not_a_dataset_gets_one_line_saying_what_was_expected(forms, tmp_path):
    def error(path) -> str:
        with pytest.raises(DataSourceError) as e:
            data_source(path)
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    (tmp_path / "empty").mkdir()
    assert "expected a YOLO data.yaml" in error(tmp_path / "empty")
    assert "dataset not found" in error(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    assert "expected a YOLO data.yaml" in error(tmp_path / "notes.txt")
    assert "give two" in error(forms / "coco2017" / "annotations" / "instances_val2017.json")

    no_val = write_yaml(tmp_path, "train: images/train\nnames: [a]\n")
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"custom\.yaml: no 'val:'"):
        data_source(no_val)
    bad_split = write_yaml(tmp_path, "train: images/train\nval: images/nope\nnames: [a]\n")
    with pytest.raises(ValueError, match=r"'val' entry 'images/nope' does not exist"):
        data_source(bad_split)

    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    msg = error(voc)
    assert "ImageSets/Main/train.txt" in msg and "val.txt" in msg and "trainval.txt" in msg

    two = tmp_path / "two"
    (two / "annotations").mkdir(parents=True)
    for name in ("a_train.json", "b_train.json", "val.json"):
        (two / "annotations" / name).write_text("{}")
    assert "2 train annotation file(s)" in error(two)

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(forms / "coco2017" / "annotations" / "instances_val2017.json", lone / "t.json")
    shutil.copy(forms / "coco2017" / "annotations" / "instances_val2017.json", lone / "v.json")
    assert "found no image folder holding 000000.jpg" in error([lone / "t.json", lone / "v.json"])
