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
the size of the decoded image (after EXIF rotation, as OpenCV decodes it). Class index i is
category id i, so that every output shows the indices of the label files.

A split's images are a folder, a .txt list of image paths, or a list of these, as data.yaml's
`train:` / `val:` give them (split_sources); gfldet's `img_dir` takes a folder, a .txt list or
the name of a data.yaml split (read_yolo).
"""

from __future__ import annotations

import logging
import math
import os
import stat
from pathlib import Path
from typing import IO

import yaml
from PIL import Image

from gfldet.core.files import atomic_open
from gfldet.core.options import short_repr
from gfldet.core.yaml_io import YamlError, load_yaml_file
from gfldet.data.coco import IMAGE_EXTENSIONS
from gfldet.data.voc import CHECK_ERROR, _anns_by_image, _place_image, _Skipped, check_coco

log = logging.getLogger("gfldet")

# data.yaml keys that do not name a split (any other key may be given as a split's img_dir)
_NOT_SPLITS = frozenset({"names", "nc", "path", "download", "yaml_file"})
COORD_TOL = 1e-6  # normalised coordinates may exceed [0, 1] by this much (float rounding)
_ORIENTATION = 0x0112  # EXIF / TIFF tag


def label_path(image_path: str) -> str:
    """The label file of `image_path` by Ultralytics' rule: the last `/images/` of the path
    becomes `/labels/`, the extension `.txt` (pass an absolute path, as Ultralytics does)."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    if sep:
        image_path = f"{head}{os.sep}labels{os.sep}{tail}"
    return image_path.rsplit(".", 1)[0] + ".txt"


def read_data_yaml(data_yaml: str | Path) -> dict:
    """The mapping of an Ultralytics `data.yaml`, read with the project's safe YAML loader (an
    alias bomb or a duplicate key is a one-line error naming the file)."""
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        what = "is not a regular file" if data_yaml.exists() else "not found"
        raise ValueError(f"YOLO dataset file {what}: {data_yaml}")
    data = load_yaml_file(data_yaml)
    if not isinstance(data, dict):
        raise ValueError(
            f"{data_yaml}: a YOLO data.yaml is a mapping (names:, train:, val:), got "
            f"{short_repr(data)}"
        )
    return data


def read_class_names(data_yaml: str | Path, data: dict | None = None) -> list[str]:
    """Class names by index from an Ultralytics `data.yaml`'s `names:`, a list or a mapping
    `{index: name}` with indices 0..K-1 without gaps, each name once. An optional `nc:` must
    equal K. `data`: the file's mapping when it has been read already (read_data_yaml)."""
    data_yaml = Path(data_yaml)
    data = read_data_yaml(data_yaml) if data is None else data
    if "names" not in data:
        raise ValueError(
            f"{data_yaml}: no 'names:' (the class names: a list, or a mapping {{index: name}})"
        )
    names = data["names"]
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items() if not isinstance(k, (bool, float))}
        except (TypeError, ValueError):
            by_index = {}
        if len(by_index) != len(names) or sorted(by_index) != list(range(len(names))):
            raise ValueError(
                f"{data_yaml}: 'names' indices must be 0..{len(names) - 1} without gaps, got "
                f"{short_repr(list(names))}"
            )
        names = [by_index[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(
            f"{data_yaml}: 'names' must be a non-empty list or mapping, got {short_repr(names)}"
        )
    if any(isinstance(n, bool) for n in names):
        raise ValueError(
            f"{data_yaml}: 'names' has a true/false value, {short_repr(names)}: YAML reads yes, "
            "no, on, off, true and false as booleans; put such class names in quotes"
        )
    if not all(isinstance(n, (str, int, float)) and str(n) for n in names):
        raise ValueError(f"{data_yaml}: 'names' must be plain names, got {short_repr(names)}")
    names = [str(n) for n in names]
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise ValueError(
                f"{data_yaml}: class name {short_repr(name)} is given twice in 'names' (indices "
                f"{first[name]} and {i}): per-class results would merge the two classes"
            )
        first[name] = i
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise ValueError(
            f"{data_yaml}: 'nc' is {short_repr(nc)} but 'names' has {len(names)} entries"
        )
    return names


def dataset_root(data_yaml: str | Path, data: dict) -> Path:
    """The dataset root that data.yaml's split entries are relative to: its `path:`, relative to
    the file's folder (else to the current folder, as Ultralytics takes it), or the file's
    folder when there is no `path:`."""
    data_yaml = Path(data_yaml)
    folder = data_yaml.resolve().parent
    path = data.get("path")
    if path in (None, ""):
        return folder
    if not isinstance(path, str):
        raise ValueError(f"{data_yaml}: 'path' must be a folder, got {short_repr(path)}")
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [folder / p, Path.cwd() / p]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise ValueError(f"{data_yaml}: 'path' {path!r} is not a folder (looked for {tried})")


def split_sources(data_yaml: str | Path, split: str, data: dict | None = None) -> list[Path]:
    """The image sources of data.yaml's `split:` (`train`, `val`, ...), as Ultralytics reads
    them: an images folder, a .txt list of image paths, or a list of either; each relative to
    the dataset root (dataset_root). A relative entry starting with `../` that does not exist
    is also tried without it (Ultralytics' rule). Raises ValueError naming the file and key
    when the split is missing or one of its sources does not exist."""
    data_yaml = Path(data_yaml)
    data = read_data_yaml(data_yaml) if data is None else data
    value = data.get(split)
    if value in (None, "", []):
        raise ValueError(
            f"{data_yaml}: no '{split}:' (the {split} images: a folder, a .txt "
            "list of images, or a list of folders)"
        )
    entries = value if isinstance(value, list) else [value]
    if not all(isinstance(e, str) and e for e in entries):
        raise ValueError(
            f"{data_yaml}: '{split}' must be a folder, a .txt file or a list of them, got "
            f"{short_repr(value)}"
        )
    root = dataset_root(data_yaml, data)
    sources = []
    for entry in entries:
        p = (root / Path(entry).expanduser()).resolve()
        if not p.exists() and entry.startswith("../"):
            p = (root / entry[3:]).resolve()
        if not (p.is_dir() or (p.is_file() and p.suffix.lower() == ".txt")):
            what = "does not exist" if not p.exists() else "is not a folder or a .txt list"
            raise ValueError(f"{data_yaml}: '{split}' entry {entry!r} {what} ({p})")
        sources.append(p)
    return sources


def find_images(folder: str | Path) -> tuple[list[str], int]:
    """Image files under `folder`, as paths relative to it, sorted (Ultralytics' order), and
    the number of paths left out because they lead to a file already found.

    Like Ultralytics' recursive glob, hidden files and folders are not searched and folder links
    are followed, but each folder is searched once (by its resolved real path: a link such as
    `loop -> .` is not followed round and round) and each real file is listed once, under a
    path without links where there is one (folders reached without a link are searched before
    links are followed). Entries that are not folders are listed by their extension (any
    case) whatever they are, so that a FIFO named like an image is reported, not skipped.
    """
    folder = str(folder)
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    found: list[str] = []
    duplicates = 0
    linked: list[tuple[str, str]] = []  # (path, relative prefix) of folder links, followed last

    def search(path: str, prefix: str) -> None:
        nonlocal duplicates
        todo = [(path, prefix)]
        while todo:
            dir_path, rel = todo.pop()
            real_dir = os.path.realpath(dir_path)
            if real_dir in seen_dirs:
                duplicates += 1
                continue
            seen_dirs.add(real_dir)
            try:
                entries = sorted(os.scandir(dir_path), key=lambda e: e.name)
            except OSError as e:
                raise ValueError(f"cannot list image folder {dir_path}: {e.strerror}") from None
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    target = linked if entry.is_symlink() else todo
                    target.append((entry.path, rel + entry.name + os.sep))
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                real = (
                    os.path.realpath(entry.path)
                    if entry.is_symlink()
                    else os.path.join(real_dir, entry.name)
                )
                if real in seen_files:
                    duplicates += 1
                    continue
                seen_files.add(real)
                found.append(rel + entry.name)

    search(folder, "")
    while linked:  # folder links, after everything reachable without one
        search(*linked.pop(0))
    return sorted(found), duplicates


def read_image_list(list_file: Path) -> tuple[list[str], list[str]]:
    """(absolute image paths, problems) of a .txt list as Ultralytics reads it: one path per
    line; `./x` is relative to the list's folder, another relative path to the current folder;
    lines whose extension is not an image's are ignored. A listed file that does not exist is a
    problem naming `file:line`."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read image list {list_file}: {e}") from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise ValueError(f"{list_file}:{line}: a NUL byte in an image path")
    paths, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or os.path.splitext(line)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        p = list_file.parent / line[2:] if line.startswith("./") else Path(line).expanduser()
        p = Path(os.path.abspath(p))
        if not p.exists():
            problems.append(f"image file not found: {p} (listed in {list_file}:{n})")
            continue
        paths.append(str(p))
    return paths, problems


def image_sources(
    data_yaml: str | Path, img_dir: str | Path, data: dict | None = None
) -> list[Path]:
    """The image folders and .txt lists that a split's `img_dir` stands for (see read_yolo):
    `[img_dir]` for a folder or a .txt list, data.yaml's sources (split_sources) for the name
    of one of its splits. ValueError naming img_dir when it is none of these."""
    data_yaml, img_dir = Path(data_yaml), Path(img_dir)
    key = str(img_dir)
    if os.sep not in key and "/" not in key and key not in _NOT_SPLITS:
        data = read_data_yaml(data_yaml) if data is None else data
        if key in data:
            return split_sources(data_yaml, key, data)
    if img_dir.is_dir() or (img_dir.is_file() and img_dir.suffix.lower() == ".txt"):
        return [img_dir]
    what = "not found" if not img_dir.exists() else "not a folder or a .txt list of images"
    raise ValueError(f"image folder {what}: {img_dir}")


def _split_images(
    data_yaml: Path, img_dir: Path, data: dict, skipped: _Skipped
) -> tuple[list[tuple[str, str]], int]:
    """([(file_name, absolute path)] of a split's images, the number of listed images that do
    not exist (each passed to `skipped`)).

    img_dir: the split's images folder (file names relative to it), a .txt list of images, or
    the name of a split of data.yaml (train, val, ...: its sources, see split_sources); file
    names are absolute paths for the last two, since the images may sit anywhere.
    """
    sources = image_sources(data_yaml, img_dir, data)
    relative = sources == [img_dir] and img_dir.is_dir()
    one_folder = len(sources) == 1 and sources[0].is_dir()  # find_images lists each file once
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    duplicates = missing = 0
    for source in sources:
        if source.is_dir():
            # Ultralytics resolves the split folder before it maps image paths to label paths.
            base = str(source.resolve())
            rel_paths, dup = find_images(base)
            duplicates += dup
            paths = [(rel, os.path.join(base, rel)) for rel in rel_paths]
        else:
            listed, problems = read_image_list(source)
            for msg in problems:
                skipped("image", msg)
            missing += len(problems)
            paths = [(p, p) for p in listed]
        for name, path in paths:
            if not one_folder:
                real = os.path.realpath(path)
                if real in seen:
                    duplicates += 1
                    continue
                seen.add(real)
            out.append((name.replace(os.sep, "/") if relative else path, path))
    if duplicates:
        log.warning(
            "%s: %d path(s) lead to images found more than once (folder or file links, or a "
            "list naming an image twice): each image is read once",
            img_dir,
            duplicates,
        )
    if not relative:
        out.sort()
    return out, missing


def image_size(path: str | Path | IO[bytes]) -> tuple[int, int]:
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


class _NotRegular(OSError):
    """A path that is not a regular file (a FIFO, socket, device or folder)."""


def _open_regular(path: str) -> IO[bytes] | None:
    """`path` opened for reading in binary mode, None when nothing is there; _NotRegular when it
    is not a regular file. Opened without blocking, so that a FIFO (whose open() would wait
    for a writer forever) is found out, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotRegular(f"{path}: not a regular file (a FIFO, socket or device?)")
    return os.fdopen(fd, "rb")


def read_yolo(data_yaml: str | Path, img_dir: str | Path, skip_bad: bool = False) -> dict:
    """Reads one split of a YOLO dataset into a COCO dict (see the module docstring).

    data_yaml: the Ultralytics `data.yaml`; its `names:` (and `nc:`) give the classes: class
        index i is category id i, so every output shows the YOLO class indices.
    img_dir: the split's image folder, searched recursively for .jpg .jpeg .png .bmp .tif .tiff
        .webp files (any case; `file_name` relative to it); or a .txt list of image paths; or
        the name of a split of data.yaml (`train`, `val`, ...), read as Ultralytics reads it
        (split_sources): a folder, a .txt list or a list of them. For a list or a split name,
        `file_name` is the image's absolute path.
    skip_bad: a bad label line is left out, an image whose header or label file cannot be read
        is left out; both are counted in one warning. Otherwise each is a ValueError naming the
        file (and `file:line` for a label line). A split for whose images not one label file
        exists is read as images without objects, with a warning (that `gfldet data check`
        reports as an error): the labels are probably somewhere else.

    Returns `{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id",
    "image_id", "category_id", "bbox": [x, y, w, h] (pixels), "area", "iscrowd": 0}],
    "categories": [{"id", "name"}]}` with image ids 1..N (in sorted path order), annotation
    ids 1..M and category ids 0..K-1. Image sizes come from the file headers (no pixels are
    decoded).
    """
    data_yaml, img_dir = Path(data_yaml), Path(img_dir)
    data = read_data_yaml(data_yaml)
    names = read_class_names(data_yaml, data)
    num_classes = len(names)
    skipped = _Skipped(skip_bad)
    split_images, missing = _split_images(data_yaml, img_dir, data, skipped)
    if not split_images and not missing:
        raise ValueError(
            f"{img_dir}: no images found (extensions {' '.join(sorted(IMAGE_EXTENSIONS))})"
        )

    images, annotations = [], []
    label_files, first_label = 0, None
    saved_limit = Image.MAX_IMAGE_PIXELS
    # PIL's decompression-bomb check would refuse big aerial images that gfldet can decode
    # (it has its own limit, checked when the image is read); only headers are read here.
    Image.MAX_IMAGE_PIXELS = None
    try:
        for file_name, path in split_images:
            try:
                with _open_regular(path) or open(path, "rb") as f:  # open: says it is gone
                    width, height = image_size(f)
            except _NotRegular as e:
                skipped("image", f"image {e}")
                continue
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                skipped("image", f"cannot read the image header of {path}: {type(e).__name__}: {e}")
                continue
            lbl = label_path(path)
            first_label = first_label or lbl
            try:
                f = _open_regular(lbl)
                if f is None:
                    text = ""  # no label file: an image without objects, as in Ultralytics
                else:
                    with f:
                        text = f.read().decode("utf-8-sig")  # -sig: a BOM is not part of a line
                    label_files += 1
            except _NotRegular as e:
                skipped("image", f"label file {e}")
                continue
            except (OSError, UnicodeDecodeError) as e:
                skipped("image", f"cannot read label file {lbl}: {e}")
                continue

            img_id = len(images) + 1
            images.append({"id": img_id, "file_name": file_name, "width": width, "height": height})
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
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": img_id,
                        "category_id": int(c),
                        "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit

    why = "unreadable image header or label file"
    skipped.summarise(img_dir, len(split_images) + missing, len(images), why, "label line")
    if images and not label_files:
        log.warning(
            "%s: no label files found for any of its %d images (looked for %s and the like, "
            "as Ultralytics does: the last /images/ of the path becomes /labels/): the split "
            "is read as images without objects",
            img_dir,
            len(images),
            os.path.dirname(first_label),
            extra={CHECK_ERROR: True},
        )
    categories = [{"id": i, "name": name} for i, name in enumerate(names)]
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
    if yaml_path.exists():
        try:
            old = read_data_yaml(yaml_path)
        except YamlError as e:
            raise ValueError(f"{yaml_path} exists and cannot be read ({e}): remove it") from None
        if isinstance(old, dict):
            if "names" in old and read_class_names(yaml_path, old) != names:
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
            outside,
            first_outside,
        )

    meta[split] = f"images/{split}"
    splits = {k: meta.pop(k) for k in ("train", "val", "test") if k in meta}
    out = {"path": str(out_root), **splits, **meta, "names": names}
    with atomic_open(yaml_path, encoding="utf-8") as f:
        f.write(yaml.safe_dump(out, sort_keys=False, allow_unicode=True))
    return yaml_path
