"""`gfldet data convert`: annotations from one format (COCO, VOC, YOLO) to another.

Every format is read into the in-memory COCO dict that the loader uses (gfldet.data.loader.
read_annotations), with every check the loader makes, and written by the target format's
writer. No output may land on an input: a json written over the annotation file, an XML, a
label file or an image of the dataset being read is refused, as are VOC files of another split
(see gfldet.data.voc.write_voc).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.files import make_output_dir, write_json_atomic
from .coco import read_coco_json
from .loader import read_annotations
from .voc import write_voc
from .yolo import image_sources, label_path, read_data_yaml, read_image_list, write_yolo

FORMATS = ("coco", "voc", "yolo")


@dataclass(frozen=True)
class Conversion:
    """What convert_annotations read and wrote; str() is the one-line summary it prints."""

    src: str
    src_format: str
    out: str
    dst_format: str
    images: int
    annotations: int
    classes: int

    def __str__(self) -> str:
        return (
            f"{self.src} ({self.src_format}): {self.images} images, {self.annotations} "
            f"annotations, {self.classes} classes -> {self.out} ({self.dst_format})"
        )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _input_folders(src_format: str, src: Path, img_dir: Path | None) -> list[Path]:
    """The folders (resolved) holding the files that the conversion reads, besides `src`:
    nothing may be written there."""
    if src_format == "coco":
        return [img_dir.resolve()] if img_dir is not None else []
    if src_format == "voc":
        return [img_dir.resolve() / d for d in ("Annotations", "ImageSets", "JPEGImages")]
    folders: set[Path] = set()
    for s in image_sources(src, img_dir):
        s = s.resolve()
        # The label files of an image sit in the folder that label_path gives.
        images = [str(s / "x.jpg")] if s.is_dir() else read_image_list(s)[0]
        if not s.is_dir():
            folders.add(s)  # the list itself
        for image in images:
            folders |= {Path(image).parent, Path(label_path(image)).parent}
    return sorted(folders)


def _refuse_input_as_output(
    src_format: str, dst_format: str, src: Path, out: Path, img_dir: Path | None
) -> None:
    """ValueError when writing `out` would replace one of the input's files."""
    out = Path(os.path.abspath(out))
    resolved = out.resolve()
    if resolved == src.resolve():
        raise ValueError(f"OUT {out} is the input {src}: refusing to overwrite it")
    if dst_format != "coco":
        if out.exists() and not out.is_dir():
            raise ValueError(f"OUT {out} is a file: --to {dst_format} writes a folder")
        return
    for folder in _input_folders(src_format, src, img_dir):
        if _inside(resolved, folder):
            raise ValueError(
                f"OUT {out} is inside {folder}, which holds the input's files (annotations, "
                "labels or images): refusing to overwrite any of them; write the json elsewhere"
            )


def convert_annotations(
    src_format: str,
    dst_format: str,
    src: str | Path,
    out: str | Path,
    img_dir: str | Path | None = None,
    classes: list[str] | None = None,
    split: str = "train",
    prefix: str = "",
) -> Conversion:
    """Converts one split's annotations from `src_format` to `dst_format` (coco, voc, yolo).

    src: what `data.*.ann_file` takes: a COCO json, a VOC ImageSets list or a YOLO data.yaml.
    out: the json to write (`--to coco`), or the dataset folder to write into (voc, yolo).
    img_dir: what `data.*.img_dir` takes: COCO's image folder (needed `--to voc / yolo`), the
        VOC root (default: the list file's `../../`), the YOLO split's images (a folder, a .txt
        list, or a split name of the data.yaml; default: the split `split`).
    classes: `--from voc`: the class names in label order (default: the sorted names).
    split: `--to voc / yolo`: the name of the split written; `--from yolo`: the default split.
    prefix: `--to voc`: put before every image id and file name of this split, so that a second
        split whose images are named as the first's can share the VOC root (e.g. "val_").

    Raises ValueError (one line) for a bad input, an output that would replace an input file,
    or options that do not fit the formats. Returns what was converted (str(): a summary line).
    """
    if src_format not in FORMATS or dst_format not in FORMATS:
        raise ValueError(f"formats are {', '.join(FORMATS)}: got {src_format} -> {dst_format}")
    if src_format == dst_format:
        raise ValueError(f"--from and --to are both {src_format}: nothing to convert")
    if classes and src_format != "voc":
        raise ValueError("--classes names a VOC dataset's classes (--from voc)")
    if prefix and dst_format != "voc":
        raise ValueError("--prefix renames the image ids of a VOC split (--to voc)")
    src_path, out_path = Path(src), Path(out)
    img_path = Path(img_dir) if img_dir else None
    if src_format == "yolo" and img_path is None:
        if split not in read_data_yaml(src_path):
            raise ValueError(
                f"--from yolo needs --img-dir, the split's images folder ({src_path} has no "
                f"'{split}:' to take them from)"
            )
        img_path = Path(split)
    if src_format == "voc" and img_path is None:
        parents = src_path.resolve().parents
        if len(parents) < 3:
            raise ValueError(f"--from voc: give --img-dir, the VOC root of {src_path}")
        img_path = parents[2]
    if dst_format != "coco" and img_path is None:
        raise ValueError(f"--to {dst_format} needs --img-dir, where the images are")
    _refuse_input_as_output(src_format, dst_format, src_path, out_path, img_path)

    if src_format == "coco":
        data = read_coco_json(src_path)
    else:
        data = read_annotations(src_format, src_path, img_path, classes)
    if dst_format == "coco":
        make_output_dir(Path(os.path.abspath(out_path)).parent, "OUT")
        write_json_atomic(data, out_path)
        written = out_path
    elif dst_format == "voc":
        written = write_voc(data, img_path, out_path, split, source=src_path, prefix=prefix)
    else:
        written = write_yolo(data, img_path, out_path, split, source=src_path)
    return Conversion(
        src=str(src),
        src_format=src_format,
        out=str(written),
        dst_format=dst_format,
        images=len(data["images"]),
        annotations=len(data["annotations"]),
        classes=len(data["categories"]),
    )
