"""YOLO (Ultralytics) detection datasets, read into (and written from) gfldet's in-memory COCO dict.

Layout, as Ultralytics reads it::

    <root>/data.yaml                 names: [person, car]   (or names: {0: person, 1: car})
    <root>/images/<split>/**/*.jpg   images, in sub-folders too
    <root>/labels/<split>/**/*.txt   one label file per image, same relative path

An image's label file is found by Ultralytics' rule (`ultralytics.data.utils.img2label_paths`):
in the image's absolute path (the split folder resolved, as Ultralytics resolves it), the *last*
`/images/` becomes `/labels/` and the extension becomes `.txt`; a path without `/images/` keeps
its label file next to the image. An image without a label file, or with an empty one, has no
objects. One line per object, blank lines ignored::

    <class index 0..K-1> <cx> <cy> <w> <h>      box centre and size, divided by the image size

In COCO pixels: x = (cx - w/2) * W, y = (cy - h/2) * H, width = w * W, height = h * H, with W x H
the size of the decoded image (after EXIF rotation, as OpenCV decodes it).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import yaml
from PIL import Image

from gfldet.core.files import atomic_open
from gfldet.data.coco import IMAGE_EXTENSIONS
from gfldet.data.voc import _anns_by_image, _place_image, _Skipped, check_coco

log = logging.getLogger("gfldet")

COORD_TOL = 1e-6  # normalised coordinates may exceed [0, 1] by this much (float rounding)
_ORIENTATION = 0x0112  # EXIF / TIFF tag


def label_path(image_path: str) -> str:
    """The label file of `image_path` by Ultralytics' rule: the last `/images/` of the path
    becomes `/labels/`, the extension `.txt` (pass an absolute path, as Ultralytics does)."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    if sep:
        image_path = f"{head}{os.sep}labels{os.sep}{tail}"
    return image_path.rsplit(".", 1)[0] + ".txt"


def read_class_names(data_yaml: str | Path) -> list[str]:
    """Class names by index from an Ultralytics `data.yaml`'s `names:`, a list or a mapping
    `{index: name}` with indices 0..K-1 without gaps. An optional `nc:` must equal K."""
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise ValueError(f"YOLO dataset file not found: {data_yaml}")
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{data_yaml}:{mark.line + 1}" if mark is not None else str(data_yaml)
        reason = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"{where}: not valid YAML: {reason}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read YOLO dataset file {data_yaml}: {e}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(
            f"{data_yaml}: no 'names:' (the class names: a list, or a mapping {{index: name}})"
        )
    names = data["names"]
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items() if not isinstance(k, (bool, float))}
        except ValueError:
            by_index = {}
        if len(by_index) != len(names) or sorted(by_index) != list(range(len(names))):
            keys = list(names)
            raise ValueError(
                f"{data_yaml}: 'names' indices must be 0..{len(names) - 1} without gaps, got "
                f"{keys if len(keys) <= 10 else keys[:10] + ['...']}"
            )
        names = [by_index[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{data_yaml}: 'names' must be a non-empty list or mapping, got {names!r}")
    if any(isinstance(n, bool) for n in names):
        raise ValueError(
            f"{data_yaml}: 'names' has a true/false value, {names!r}: YAML reads yes, no, on, "
            "off, true and false as booleans; put such class names in quotes"
        )
    if not all(isinstance(n, (str, int, float)) and str(n) for n in names):
        raise ValueError(f"{data_yaml}: 'names' must be plain names, got {names!r}")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise ValueError(f"{data_yaml}: 'nc' is {nc!r} but 'names' has {len(names)} entries")
    return [str(n) for n in names]


def _find_images(img_dir: str) -> list[str]:
    """Image paths under img_dir, relative to it, sorted (Ultralytics' order). Like Ultralytics'
    recursive glob, hidden files and folders are not searched and folder links are followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(img_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, img_dir)
        prefix = "" if rel_dir == "." else rel_dir + os.sep
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(prefix + f)
    return sorted(found)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as gfldet decodes it, from the file header only.

    OpenCV's IMREAD_COLOR applies the EXIF orientation, so orientations 5-8 (a quarter turn,
    possibly mirrored) swap the stored width and height. Only the EXIF block is read, as OpenCV
    does (not XMP); for PNG only an eXIf chunk before the pixel data is seen, since reading
    further would decode the image. Raises whatever PIL raises for an unreadable header.
    """
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "TIFF":
            orientation = im.tag_v2.get(_ORIENTATION)
        else:
            raw = im.info.get("exif")
            orientation = None
            if raw:
                exif = Image.Exif()
                try:
                    exif.load(raw)
                    orientation = exif.get(_ORIENTATION)
                except Exception:  # a corrupt EXIF block: OpenCV ignores it too
                    orientation = None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


class _BadLine(ValueError):
    """Why one label line is unusable (with skip_bad: the line is left out)."""


def _parse_line(parts: list[str], num_classes: int, names_file: Path) -> list[float]:
    """[class, cx, cy, w, h] of one split label line; raises _BadLine."""
    if len(parts) != 5:
        raise _BadLine(f"expected 5 values 'class cx cy w h', got {len(parts)}")
    values = []
    for tok in parts:
        try:
            values.append(float(tok))
        except ValueError:
            raise _BadLine(f"not a number: {tok!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise _BadLine(f"not a finite number: {' '.join(parts)}")
    c, cx, cy, w, h = values
    if not c.is_integer() or not 0 <= c < num_classes:
        raise _BadLine(
            f"class index {parts[0]} out of range: {names_file} has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    if w <= 0 or h <= 0:
        raise _BadLine(f"box width and height must be > 0, got w {parts[3]}, h {parts[4]}")
    if not all(-COORD_TOL <= v <= 1 + COORD_TOL for v in (cx, cy, w, h)):
        raise _BadLine(
            f"coordinates must be normalised to [0, 1], got cx cy w h = {' '.join(parts[1:])}"
        )
    return values


def read_yolo(data_yaml: str | Path, img_dir: str | Path, skip_bad: bool = False) -> dict:
    """Reads one split of a YOLO dataset into a COCO dict (see the module docstring).

    data_yaml: the Ultralytics `data.yaml`; only its `names:` (and `nc:`) are used. Class index i
        becomes category id i + 1.
    img_dir: the split's image folder, searched recursively for .jpg .jpeg .png .bmp .tif .tiff
        .webp files (any case); `file_name` is relative to it.
    skip_bad: a bad label line is left out, an image whose header or label file cannot be read
        is left out; both are counted in one warning. Otherwise each is a ValueError naming the
        file (and `file:line` for a label line).

    Returns `{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id",
    "image_id", "category_id", "bbox": [x, y, w, h] (pixels), "area", "iscrowd": 0}],
    "categories": [{"id", "name"}]}` with ids 1..N (images in sorted path order), 1..M, 1..K.
    Image sizes come from the file headers (no pixels are decoded).
    """
    data_yaml, img_dir = Path(data_yaml), Path(img_dir)
    names = read_class_names(data_yaml)
    num_classes = len(names)
    if not img_dir.is_dir():
        raise ValueError(f"image folder not found: {img_dir}")
    # Ultralytics resolves the split folder before it maps image paths to label paths.
    base = str(img_dir.resolve())
    rel_paths = _find_images(base)
    if not rel_paths:
        raise ValueError(
            f"{img_dir}: no images found (extensions {' '.join(sorted(IMAGE_EXTENSIONS))})"
        )

    images, annotations = [], []
    skipped = _Skipped(skip_bad)
    saved_limit = Image.MAX_IMAGE_PIXELS
    # PIL's decompression-bomb check would refuse big aerial images that gfldet can decode
    # (it has its own limit, checked when the image is read); only headers are read here.
    Image.MAX_IMAGE_PIXELS = None
    try:
        for rel in rel_paths:
            path = os.path.join(base, rel)
            try:
                width, height = image_size(path)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                skipped(
                    "image",
                    f"cannot read the image header of {img_dir / rel}: {type(e).__name__}: {e}",
                )
                continue
            lbl = label_path(path)
            try:
                with open(lbl, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of a line
                    text = f.read()
            except FileNotFoundError:
                text = ""  # no label file: an image without objects, as in Ultralytics
            except (OSError, UnicodeDecodeError) as e:
                skipped("image", f"cannot read label file {lbl}: {e}")
                continue

            img_id = len(images) + 1
            images.append({
                "id": img_id, "file_name": rel.replace(os.sep, "/"), "width": width,
                "height": height,
            })  # fmt: skip
            for n, line in enumerate(text.splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    c, cx, cy, w, h = _parse_line(parts, num_classes, data_yaml)
                except _BadLine as e:
                    skipped("label line", f"{lbl}:{n}: {e}")
                    continue
                bw, bh = w * width, h * height
                annotations.append({
                    "id": len(annotations) + 1, "image_id": img_id, "category_id": int(c) + 1,
                    "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, bw, bh],
                    "area": bw * bh, "iscrowd": 0,
                })  # fmt: skip
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit

    why = "unreadable image header or label file"
    skipped.summarise(img_dir, len(rel_paths), len(images), why, "label line")
    categories = [{"id": i, "name": name} for i, name in enumerate(names, 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_yolo(
    coco: dict,
    img_src_dir: str | Path,
    out_root: str | Path,
    split: str = "train",
    link_images: bool = True,
    source: str | Path = "COCO annotations",
) -> Path:
    """Writes a COCO dict as one split of a YOLO dataset; returns the `data.yaml` path.

    Writes `out_root/images/<split>/<file_name>` (a hard link, or a copy when `link_images` is
    False or linking fails, of `img_src_dir/<file_name>`; sub-folders are kept), one label file
    per image where read_yolo (and Ultralytics) looks for it, normally
    `out_root/labels/<split>/<file_name stem>.txt` (empty for an image without boxes), and
    `out_root/data.yaml` with `path` (out_root, absolute), `<split>: images/<split>` and
    `names` (a list, in category id order: the category with the i-th smallest id is class i).
    An existing data.yaml keeps its other split keys (write train, then val), but must have the
    same names.

    Labels hold 9 significant digits. Boxes are clipped to the image, since YOLO coordinates
    are in [0, 1]; crowd boxes (`iscrowd: 1`), which YOLO cannot represent, and boxes with
    nothing left inside the image are left out, with a warning giving the counts.

    The dict must pass the COCO loader's checks (voc.check_coco; errors name `source`, the file
    it was read from). data.yaml is written last and atomically: a crash leaves the previous
    one (or none), never a partial file.
    """
    check_coco(coco, source)
    img_src_dir, out_root = Path(img_src_dir), Path(out_root).resolve()
    cat_ids = sorted(c["id"] for c in coco["categories"])
    index = {cid: i for i, cid in enumerate(cat_ids)}
    names = {c["id"]: str(c["name"]) for c in coco["categories"]}
    names = [names[cid] for cid in cat_ids]

    yaml_path = out_root / "data.yaml"
    meta: dict = {}
    if yaml_path.is_file():
        try:
            old = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise ValueError(f"{yaml_path} exists and is not valid YAML: remove it") from None
        if isinstance(old, dict):
            if "names" in old and read_class_names(yaml_path) != names:
                raise ValueError(
                    f"{yaml_path} exists with other class names than this dataset's {names}; "
                    "write to another folder"
                )
            meta = {k: v for k, v in old.items() if k not in ("path", "names", "nc")}

    anns_of = _anns_by_image(coco)

    split_dir = out_root / "images" / split
    labels_seen: dict[str, str] = {}  # checked before anything is written
    for im in coco["images"]:
        lbl = label_path(str(split_dir / im["file_name"]))
        if lbl in labels_seen:
            raise ValueError(
                f"images {labels_seen[lbl]!r} and {im['file_name']!r} would share the label "
                f"file {lbl}: rename one"
            )
        labels_seen[lbl] = im["file_name"]

    crowd, outside, first_outside = 0, 0, None
    for im in coco["images"]:
        dst = split_dir / im["file_name"]
        lbl = label_path(str(dst))
        _place_image(img_src_dir / im["file_name"], dst, link_images)
        W, H = im["width"], im["height"]
        lines = []
        for a in anns_of[im["id"]]:
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            x, y, w, h = a["bbox"]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
            if not (x1 > x0 and y1 > y0):  # also catches NaN
                outside += 1
                first_outside = first_outside or f"annotation {a['id']}: bbox {a['bbox']}"
                continue
            values = ((x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H)
            lines.append(f"{index[a['category_id']]} " + " ".join(f"{v:.9g}" for v in values))
        Path(lbl).parent.mkdir(parents=True, exist_ok=True)
        Path(lbl).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    if crowd:
        log.warning("write_yolo: left out %d crowd box(es) (iscrowd: 1): YOLO has none", crowd)
    if outside:
        log.warning(
            "write_yolo: left out %d box(es) with nothing inside their image; the first: %s",
            outside, first_outside,
        )  # fmt: skip

    meta[split] = f"images/{split}"
    splits = {k: meta.pop(k) for k in ("train", "val", "test") if k in meta}
    out = {"path": str(out_root), **splits, **meta, "names": names}
    with atomic_open(yaml_path, encoding="utf-8") as f:
        f.write(yaml.safe_dump(out, sort_keys=False, allow_unicode=True))
    return yaml_path
