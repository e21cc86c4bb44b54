"""A dataset named by one path (`gfldet train --data PATH`): which format it is in and what the
config's `data.train` / `data.val` need to read it.

PATH may be

- a YOLO `data.yaml` (or a folder holding one), read as Ultralytics reads it: `path` (the
  dataset root; relative to the file's folder, else to the current folder; default: the file's
  folder), `train` and `val` relative to it, each an images folder, a .txt list of image paths
  or a list of either, and `names` as a list or an `{index: name}` mapping;
- a Pascal VOC root: `ImageSets/Main/train.txt`, `ImageSets/Main/val.txt`, `Annotations/`,
  `JPEGImages/`;
- a COCO folder: `annotations/*.json` (one with "train" and one with "val" in its name,
  `instances_*` preferred, e.g. `instances_train2017.json`) with their image folders (e.g.
  `train2017/`), or one folder per split holding `_annotations.coco.json` and the images
  (`train/`, `valid/` or `val/`, as Roboflow exports them);
- two COCO json files, train first, whose image folders are found the same way.

Nothing is written and no image is read: the splits themselves are checked when they are read
(`gfldet data check` reads them all).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .coco import read_coco_json
from .voc import voc_class_names
from .yolo import read_class_names, read_data_yaml, split_sources

# What a PATH that is none of the above is told.
EXPECTED = (
    "expected a YOLO data.yaml (names: plus train: and val:), a VOC root (ImageSets/Main/"
    "train.txt and val.txt, Annotations/, JPEGImages/), a COCO folder (annotations/ with a "
    "*train*.json and a *val*.json, and their image folders) or two COCO json files (train, val)"
)
YAML_SUFFIXES = (".yaml", ".yml")
ROBOFLOW_JSON = "_annotations.coco.json"


class DataSourceError(ValueError):
    """PATH is not a dataset in a layout gfldet recognises (one line, saying what was expected)."""


@dataclass(frozen=True)
class SplitSource:
    """What one `data.train` / `data.val` section needs: its format, ann_file and img_dir (as
    gfldet.data.loader.read_annotations takes them)."""

    format: str
    ann_file: str
    img_dir: str


@dataclass(frozen=True)
class DataSource:
    """A dataset found by data_source: its format (`kind`), both splits and the class names in
    label order."""

    kind: str
    path: str
    train: SplitSource
    val: SplitSource
    classes: tuple[str, ...]

    def config_overrides(self) -> dict[str, Any]:
        """The config keys (dotted) and values that point `data.train` and `data.val` at this
        dataset; for VOC also `data.classes` (the names of both splits, sorted), so that a class
        seen only in the val split is not an error."""
        out: dict[str, Any] = {}
        for name, split in (("train", self.train), ("val", self.val)):
            out[f"data.{name}.format"] = split.format
            out[f"data.{name}.ann_file"] = split.ann_file
            out[f"data.{name}.img_dir"] = split.img_dir
        if self.kind == "voc":
            out["data.classes"] = list(self.classes)
        return out

    def describe(self) -> str:
        """One line for the log: format, path, the two splits and the number of classes."""
        return (
            f"{self.kind.upper()} dataset {self.path}: train {self.train.img_dir}, val "
            f"{self.val.img_dir}, {len(self.classes)} classes"
        )


def data_source(path: str | Path | Sequence[str | Path]) -> DataSource:
    """The dataset at `path` (see the module docstring): a data.yaml, a VOC root, a COCO folder,
    or a sequence of two COCO json files (train, val).

    Returns absolute paths. Raises DataSourceError (a ValueError, one line) naming `path` and
    what was expected when it is none of these, or what is missing when it is almost one.
    """
    if not isinstance(path, (str, Path)):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return data_source(paths[0])
        if len(paths) != 2:
            raise DataSourceError(f"give one dataset path or two COCO json files, got {len(paths)}")
        return _coco_pair(*paths)
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"dataset not found: {path} ({EXPECTED})")
    if path.is_file():
        if path.suffix.lower() in YAML_SUFFIXES:
            return _yolo(path)
        if path.suffix.lower() == ".json":
            raise DataSourceError(
                f"{path} is one COCO json file: give two, the train split's and the val split's"
            )
        raise DataSourceError(f"{path} is not a dataset gfldet recognises: {EXPECTED}")
    if (path / "ImageSets" / "Main").is_dir():
        return _voc(path)
    if (path / "data.yaml").is_file():
        return _yolo(path / "data.yaml")
    if (path / "annotations").is_dir() or any(
        (path / s / ROBOFLOW_JSON).is_file() for s in ("train", "valid", "val")
    ):
        return _coco_folder(path)
    raise DataSourceError(f"{path} is not a dataset gfldet recognises: {EXPECTED}")


def _yolo(data_yaml: Path) -> DataSource:
    data_yaml = data_yaml.resolve()
    data = read_data_yaml(data_yaml)
    classes = read_class_names(data_yaml, data)
    splits = []
    for split in ("train", "val"):
        sources = split_sources(data_yaml, split, data)
        # One folder or one list: its path; several: the split's name, which the reader looks
        # up in data.yaml (gfldet.data.yolo.image_sources).
        img_dir = str(sources[0]) if len(sources) == 1 else split
        splits.append(SplitSource("yolo", str(data_yaml), img_dir))
    return DataSource("yolo", str(data_yaml), *splits, tuple(classes))


def _voc(root: Path) -> DataSource:
    root = root.resolve()
    main = root / "ImageSets" / "Main"
    lists = {s: main / f"{s}.txt" for s in ("train", "val")}
    missing = [f"ImageSets/Main/{p.name}" for p in lists.values() if not p.is_file()]
    if not (root / "Annotations").is_dir():
        missing.append("Annotations/")
    if missing:
        found = sorted(p.name for p in main.glob("*.txt") if "_" not in p.stem)
        raise DataSourceError(
            f"VOC root {root} has no {', '.join(missing)} (its image lists: "
            f"{', '.join(found) or 'none'}); a VOC root for training needs ImageSets/Main/"
            "train.txt and val.txt, Annotations/ and JPEGImages/"
        )
    names = voc_class_names(lists["train"], root) | voc_class_names(lists["val"], root)
    if not names:
        raise DataSourceError(f"VOC root {root}: no object in the XML files of train.txt/val.txt")
    splits = [SplitSource("voc", str(lists[s]), str(root)) for s in ("train", "val")]
    return DataSource("voc", str(root), *splits, tuple(sorted(names)))


def _split_files(folder: Path) -> dict[str, Path]:
    """{"train": json, "val": json} of a COCO folder, or DataSourceError."""
    found: dict[str, Path] = {}
    for split, dirs in (("train", ("train",)), ("val", ("valid", "val"))):
        for d in dirs:  # one folder per split (Roboflow)
            if (folder / d / ROBOFLOW_JSON).is_file():
                found[split] = folder / d / ROBOFLOW_JSON
                break
    if len(found) == 2:
        return found
    jsons = sorted((folder / "annotations").glob("*.json"))
    for split in ("train", "val"):
        # "val" must not match the "val" inside "trainval" (that is a training split)
        pattern = re.compile(r"train" if split == "train" else r"(?<!train)val")
        matches = [j for j in jsons if pattern.search(j.stem.lower())]
        if len(matches) > 1:
            matches = [j for j in matches if j.stem.startswith("instances_")] or matches
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            names = ", ".join(j.name for j in jsons) or "none"
            raise DataSourceError(
                f"COCO folder {folder}: {what} {split} annotation file(s) in annotations/ "
                f"(json files: {names}); expected one *{split}*.json (instances_* preferred), or "
                "give the train and val json files"
            )
        found[split] = matches[0]
    return found


def _coco_folder(folder: Path) -> DataSource:
    files = _split_files(folder.resolve())
    return _coco_pair(files["train"], files["val"])


def _first_file_name(ann_file: Path, limit: int = 1 << 22) -> str | None:
    """The `file_name` of the first image of a COCO json, read from its first `limit` bytes
    only (a training file may be hundreds of MB); None when it is not there."""
    try:
        with open(ann_file, "rb") as f:
            head = f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r'"file_name"\s*:\s*("(?:[^"\\]|\\.)*")', head)
    if m is None:
        return None
    try:
        return json.loads(m.group(1))
    except json.JSONDecodeError:
        return None


def _image_folder(ann_file: Path, file_name: str | None) -> Path:
    """The image folder of a COCO json: the first of the usual places that holds its first
    image (or, when that is unknown, that exists). `instances_train2017.json` looks in
    `train2017/`, `images/train2017/`, `train2017/images/` (beside annotations/ and beside the
    file), `images/` and the file's own folder."""
    split = ann_file.stem.removeprefix("instances_")
    here = ann_file.parent
    base = here.parent if here.name == "annotations" else here
    candidates = []
    for b in dict.fromkeys((base, here)):
        candidates += [b / split, b / "images" / split, b / split / "images", b / "images"]
    candidates.append(here)
    candidates = list(dict.fromkeys(candidates))
    for c in candidates:
        if c.is_dir() and (file_name is None or (c / file_name).is_file()):
            return c
    looked = ", ".join(str(c) for c in candidates[:4])
    image = f" holding {file_name}" if file_name else ""
    raise DataSourceError(
        f"{ann_file}: found no image folder{image} (looked in {looked}, ...): put the images "
        f"in {base / split}, or write a config with data.*.img_dir"
    )


def _coco_pair(train: Path, val: Path) -> DataSource:
    for p in (train, val):
        if not p.is_file() or p.suffix.lower() != ".json":
            raise DataSourceError(f"{p} is not a COCO json file ({EXPECTED})")
    train, val = train.resolve(), val.resolve()
    if train == val:
        raise DataSourceError(f"the train and val json files are the same file: {train}")
    val_data = read_coco_json(val)  # the smaller file; its classes must equal train's
    first_val = val_data["images"][0].get("file_name") if val_data["images"] else None
    splits = [
        SplitSource("coco", str(train), str(_image_folder(train, _first_file_name(train)))),
        SplitSource("coco", str(val), str(_image_folder(val, first_val))),
    ]
    cats = [c for c in val_data["categories"] if isinstance(c, dict) and "id" in c]
    with contextlib.suppress(TypeError):  # bad ids: reading the split says what is wrong
        cats.sort(key=lambda c: c["id"])  # label order
    classes = tuple(str(c.get("name")) for c in cats)
    return DataSource("coco", f"{train} + {val}", *splits, classes)
