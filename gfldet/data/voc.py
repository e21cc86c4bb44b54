"""Pascal VOC detection annotations, read into (and written from) gfldet's in-memory COCO dict.

Layout (as in `VOCdevkit/VOC2007`)::

    <root>/ImageSets/Main/<split>.txt    one image id per line (per-class lists such as
                                         aeroplane_trainval.txt carry a second column, ignored;
                                         they list every image of the split, so they read as
                                         the whole split with all classes)
    <root>/Annotations/<id>.xml          one file per image
    <root>/JPEGImages/<filename>         the image named by the XML's <filename>

One annotation file::

    <annotation>
      <filename>000005.jpg</filename>
      <size><width>500</width><height>375</height><depth>3</depth></size>
      <object>
        <name>chair</name> <truncated>0</truncated> <difficult>1</difficult>
        <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
      </object>
    </annotation>

Coordinates: VOC's xmin/ymin/xmax/ymax are 1-based *inclusive* pixel indices (a box covering only
the top-left pixel is 1 1 1 1). COCO boxes are continuous coordinates with the image's top-left
corner at (0, 0), so pixel i covers [i - 1, i) and::

    x = xmin - 1    y = ymin - 1    w = xmax - xmin + 1    h = ymax - ymin + 1

(the convention of the VOC devkit, Detectron and torchvision's VOC-to-COCO conversions; MMDetection
v2 drops the -1 / +1, which puts its boxes half a pixel to the right and below). Fractional
coordinates, as some tools write them, are converted with the same formulas. The arithmetic is
done on the decimal text, so `write_voc` followed by `read_voc` gives back the very same floats.

`<difficult>1</difficult>` becomes `"iscrowd": 1`: gfldet does not train on crowd boxes and COCO
evaluation ignores detections matched to them, which is how the VOC protocol treats difficult
objects. `<truncated>`, `<pose>`, `<occluded>` and `<part>` (person layout) are ignored.
"""

from __future__ import annotations

import decimal
import logging
import os
import shutil
import stat
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from xml.parsers import expat

from gfldet.core.files import atomic_open
from gfldet.data.coco import CocoDetection

log = logging.getLogger("gfldet")

# Exact decimal arithmetic for the +-1 of the coordinate convention: wide enough for any float
# written as its repr (17 significant digits, exponents -324..308) plus 1.
_DEC = decimal.Context(prec=1200, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_SKIP_HINT = "data.skip_bad_images: true leaves it out"
# Set (as `extra={CHECK_ERROR: True}`) on a reader's warning about something that lets training
# run but makes its result meaningless: `gfldet data check` reports it as an error.
CHECK_ERROR = "gfldet_check_error"
_COORDS = ("xmin", "ymin", "xmax", "ymax")


class _Skipped:
    """The bad items read_voc and read_yolo leave out with skip_bad: each logged at DEBUG (for
    `gfldet data check`; the summary warning has the counts), counted by kind, the first kept
    for that warning. Without skip_bad the first one is a ValueError with the hint."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.count: Counter[str] = Counter()
        self.first: str | None = None

    def __call__(self, kind: str, msg: str) -> None:
        if not self.skip_bad:
            raise ValueError(f"{msg} ({_SKIP_HINT})") from None
        self.count[kind] += 1
        self.first = self.first or msg
        log.debug(msg)

    def summarise(self, source: object, total: int, kept: int, why: str, item: str) -> None:
        """One warning with the counts, when anything was left out: of `total` images (`why`:
        what made an image unusable) and of the bad items of kind `item` (counted under that
        kind, e.g. "object"). ValueError when no image is left (`kept` 0)."""
        if self.count:
            log.warning(
                "%s: left out %d of %d image(s) (%s) and %d bad %s(s) (data.skip_bad_images); "
                "the first: %s",
                source,
                self.count["image"],
                total,
                why,
                self.count[item],
                item,
                self.first,
            )
        if not kept:
            raise ValueError(f"{source}: all {total} images were left out; the first: {self.first}")


class _BadImage(ValueError):
    """A fault that makes a whole annotation file unusable (skip_bad: its image is left out)."""


class _BadObject(ValueError):
    """A fault of one <object> (with skip_bad: the object is left out)."""


def _number(text: str | None) -> int | decimal.Decimal | None:
    """The exact value of a coordinate's text, or None if it is not a finite number.

    Integers (the VOC norm) stay ints, anything else becomes a Decimal, so the +-1 of the
    coordinate convention adds no float rounding.
    """
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        d = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        return None
    return d if d.is_finite() else None


def _image_size(path: str, root: ET.Element) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise _BadImage(f"{path}: no <size> element (the image width and height)")
    values = []
    for key in ("width", "height"):
        el = size.find(key)
        if el is None or not (el.text or "").strip():
            raise _BadImage(f"{path}: <size> has no <{key}>")
        values.append(el.text.strip())
    try:
        w, h = (float(v) for v in values)
    except ValueError:
        w = h = 0.0
    if not (w >= 1 and h >= 1 and w.is_integer() and h.is_integer()):
        raise _BadImage(
            f"{path}: invalid image size: width {values[0]!r}, height {values[1]!r} "
            "(must be positive whole numbers)"
        )
    return int(w), int(h)


def _parse_object(
    path: str, k: int, obj: ET.Element, classes: frozenset[str] | None
) -> tuple[str, list[float], int]:
    """(class name, COCO bbox [x, y, w, h], difficult 0/1) of the k-th (1-based) <object>."""
    name_el = obj.find("name")
    # Some tools pretty-print <name>\n  dog\n</name>: surrounding whitespace is not part of it.
    name = (name_el.text or "").strip() if name_el is not None else ""
    if not name:
        raise _BadObject(f"{path}: object {k}: no <name>")
    where = f"{path}: object {k} ({name!r})"
    if classes is not None and name not in classes:
        raise _BadObject(
            f"{path}: object {k}: class {name!r} is not among the {len(classes)} given classes"
        )
    box = obj.find("bndbox")
    if box is None:
        raise _BadObject(f"{where}: no <bndbox>")
    v = []
    for key in _COORDS:
        el = box.find(key)
        if el is None or not (el.text or "").strip():
            raise _BadObject(f"{where}: <bndbox> has no <{key}>")
        num = _number(el.text)
        if num is None:
            raise _BadObject(f"{where}: <{key}> is not a finite number: {el.text.strip()!r}")
        v.append(num)
    xmin, ymin, xmax, ymax = v
    if xmax < xmin or ymax < ymin:
        raise _BadObject(
            f"{where}: xmax < xmin or ymax < ymin: xmin {xmin}, ymin {ymin}, xmax {xmax}, "
            f"ymax {ymax}"
        )
    if all(isinstance(c, int) for c in v):  # the usual case: exact in int arithmetic
        bbox = [float(xmin - 1), float(ymin - 1), float(xmax - xmin + 1), float(ymax - ymin + 1)]
    else:  # exact in _DEC, so each value is rounded to float once
        with decimal.localcontext(_DEC):
            bbox = [
                float(xmin - 1),
                float(ymin - 1),
                float(xmax - xmin + 1),
                float(ymax - ymin + 1),
            ]
    difficult = 0
    d_el = obj.find("difficult")
    if d_el is not None and (d_el.text or "").strip():
        d = _number(d_el.text)
        if d is None:
            raise _BadObject(f"{where}: <difficult> is not a number: {d_el.text.strip()!r}")
        difficult = int(d != 0)
    return name, bbox, difficult


def _parse_xml(path: str, classes: frozenset[str] | None) -> tuple[ET.Element, list, list[str]]:
    """(root element, [(name, bbox, difficult)] of the good objects, messages of the bad ones).

    Raises _BadImage for a missing or unparsable file.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the parser forever
            raise _BadImage(
                f"VOC annotation file {path}: not a regular file (a FIFO, socket or device?)"
            )
        root = ET.parse(path).getroot()
    except (FileNotFoundError, NotADirectoryError):
        raise _BadImage(f"VOC annotation file not found: {path}") from None
    except ET.ParseError as e:
        line, col = e.position
        raise _BadImage(
            f"{path}:{line}: not valid XML: {expat.ErrorString(e.code)} (column {col + 1})"
        ) from None
    except OSError as e:
        raise _BadImage(f"cannot read VOC annotation file {path}: {e.strerror}") from None
    if root.tag != "annotation":
        raise _BadImage(f"{path}: root element is <{root.tag}>, expected <annotation>")
    objects, bad = [], []
    for k, obj in enumerate(root.iterfind("object"), 1):
        try:
            objects.append(_parse_object(path, k, obj, classes))
        except _BadObject as e:
            bad.append(str(e))
    return root, objects, bad


def check_class_names(classes: Sequence[str], source: str) -> list[str]:
    """`classes` as a list, or a ValueError naming `source` (what gave them) and the first name
    that is empty, not a string, or given twice (per-class results would merge two classes)."""
    classes = list(classes)
    first: dict[str, int] = {}
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: class names must be non-empty names, got {name!r}")
        if name in first:
            raise ValueError(
                f"{source}: class name {name!r} is given twice (positions {first[name] + 1} and "
                f"{i + 1})"
            )
        first[name] = i
    return classes


def _read_list(list_file: Path) -> list[tuple[int, str]]:
    """(line number, image id) of each non-blank line of a VOC ImageSets list."""
    if not list_file.is_file():
        what = "is not a regular file" if list_file.exists() else "not found"
        raise ValueError(f"VOC image list {what}: {list_file}")
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read VOC image list {list_file}: {e}") from None
    ids, seen = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if "\0" in line:
            raise ValueError(f"{list_file}:{n}: a NUL byte in an image id: not a VOC image list")
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] in seen:
            raise ValueError(
                f"{list_file}:{n}: image id {tokens[0]!r} is already listed at line "
                f"{seen[tokens[0]]}"
            )
        seen[tokens[0]] = n
        ids.append((n, tokens[0]))
    if not ids:
        raise ValueError(f"{list_file}: VOC image list is empty (no image ids)")
    return ids


def read_voc(
    list_file: str | Path,
    root: str | Path | None = None,
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> dict:
    """Reads a Pascal VOC split into a COCO dict (see the module docstring for the format).

    list_file: an ImageSets list, e.g. `VOC2007/ImageSets/Main/trainval.txt`; the first token of
        each non-blank line is an image id.
    root: the folder holding `Annotations/` and `JPEGImages/` (default:
        `Path(list_file).parents[2]`, `VOC2007` above).
    classes: the class names, in the order that gives category ids 1..K; a `<name>` not among
        them is an error. None: the sorted names of all objects read.
    skip_bad: a bad or missing annotation file leaves its image out, a bad `<object>` (missing
        name or coordinate, non-numeric coordinate, xmax < xmin, unknown class) is left out;
        both are counted in one warning. Otherwise each is a ValueError naming the file.

    Returns `{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id",
    "image_id", "category_id", "bbox": [x, y, w, h], "area", "iscrowd"}], "categories": [{"id",
    "name"}]}` with ids 1..N, 1..M, 1..K; images in list order; `file_name` is
    `JPEGImages/<filename from the XML, else <id>.jpg>`, relative to `root`. No image is read:
    width and height come from the XML's `<size>`.
    """
    list_file = Path(list_file)
    ids = _read_list(list_file)
    if root is None:
        parents = list_file.parents
        root = parents[2] if len(parents) > 2 else list_file.absolute().parents[2]
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise ValueError(
            f"no Annotations folder in {root} (the VOC root for {list_file}; give root=...)"
        )
    if classes is not None:
        classes = check_class_names(classes, f"the classes given for {list_file}")
    class_set = frozenset(classes) if classes is not None else None

    entries = []  # (file_name, width, height, objects)
    skipped = _Skipped(skip_bad)
    ann_prefix = os.path.join(str(ann_dir), "")
    for n, image_id in ids:
        path = f"{ann_prefix}{image_id}.xml"
        try:
            xml_root, objects, bad = _parse_xml(path, class_set)
            width, height = _image_size(path, xml_root)
        except _BadImage as e:
            skipped("image", f"{e} (listed in {list_file}:{n})")
            continue
        for msg in bad:
            skipped("object", msg)
        fn_el = xml_root.find("filename")
        filename = (fn_el.text or "").strip() if fn_el is not None else ""
        entries.append((f"JPEGImages/{filename or image_id + '.jpg'}", width, height, objects))

    skipped.summarise(list_file, len(ids), len(entries), "bad or missing annotation file", "object")
    if classes is None:
        classes = sorted({name for *_, objects in entries for name, _, _ in objects})
    cat_id = {name: i for i, name in enumerate(classes, 1)}

    images, annotations = [], []
    for img_id, (file_name, width, height, objects) in enumerate(entries, 1):
        images.append({"id": img_id, "file_name": file_name, "width": width, "height": height})
        for name, bbox, difficult in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": cat_id[name],
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": difficult,
                }
            )
    categories = [{"id": i, "name": name} for name, i in cat_id.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def voc_class_names(list_file: str | Path, root: str | Path | None = None) -> set[str]:
    """The `<name>`s of the objects of a VOC split, without checking anything else: a file that
    cannot be read or parsed is passed over (reading the split reports it). For choosing the
    classes before the split is read."""
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.absolute().parents[2]
    names: set[str] = set()
    for _, image_id in _read_list(list_file):
        path = root / "Annotations" / f"{image_id}.xml"
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            xml_root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for el in xml_root.iterfind("object/name"):
            if (el.text or "").strip():
                names.add(el.text.strip())
    return names


def _exact(v: float | int) -> decimal.Decimal:
    """The decimal that the shortest repr of v spells (what read_voc will parse back)."""
    return decimal.Decimal(repr(v) if isinstance(v, float) else str(int(v)))


def _fmt(d: decimal.Decimal) -> str:
    """Plain notation, no exponent and no trailing zeros: 49, 1.5, 0.0000003."""
    s = format(_DEC.normalize(d), "f")
    return "0" if s == "-0" else s


def _place_image(src: Path, dst: Path, link: bool) -> None:
    """Hard-links (or, when `link` is False or linking fails, copies) `src` to `dst`, replacing
    an existing `dst`. A missing `src` is a ValueError naming it."""
    if not src.is_file():
        raise ValueError(f"image file not found: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        if dst.exists() and os.path.samefile(src, dst):
            return
        dst.unlink()
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(src, dst)


def check_coco(coco: dict, source: str | Path) -> None:
    """Refuses what the COCO loader refuses, as a one-line ValueError naming `source` (the file
    the dict was read from) and the id or value: an image whose width or height is not a
    positive whole number, an annotation whose image_id or category_id is not in the dict, a
    bbox that is not 4 finite numbers with w, h >= 0, a duplicate id, a category without a name.
    """
    # The loader's own checks, run on the dict: one copy of them, not two. No image is read,
    # so neither the folder nor the transform (None) is used.
    CocoDetection(source, ".", None, train=False, data=coco)


def _anns_by_image(coco: dict) -> dict:
    """{image id: [its annotations]}, every image present (of a dict that passed check_coco)."""
    anns_of: dict = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        anns_of[ann["image_id"]].append(ann)
    return anns_of


def _listed_ids(out_root: Path, split: str) -> tuple[set[str], dict[str, Path]]:
    """(ids in out_root's list of `split`, {id: list file} of the ids in its other lists)."""
    own: set[str] = set()
    others: dict[str, Path] = {}
    main = out_root / "ImageSets" / "Main"
    if not main.is_dir():
        return own, others
    for list_file in sorted(main.glob("*.txt")):
        if not list_file.is_file():
            continue
        try:
            text = list_file.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise ValueError(f"cannot read VOC image list {list_file}: {e.strerror}") from None
        ids = {line.split()[0] for line in text.splitlines() if line.split()}
        if list_file.name == f"{split}.txt":
            own = ids
        else:
            for i in ids:
                others.setdefault(i, list_file)
    return own, others


def _check_no_replacement(
    img_src_dir: Path, out_root: Path, split: str, ids: dict[str, str], prefix: str
) -> None:
    """Refuses (ValueError) to write a file of split `split` over one that another split of
    out_root lists, or over one that no list of out_root names (not written by write_voc)."""
    own, others = _listed_ids(out_root, split)
    for voc_id, file_name in ids.items():
        if voc_id in others:
            hint = f"{split}_" if not prefix else f"{prefix}{split}_"
            raise ValueError(
                f"VOC image id {voc_id!r} of split {split!r} ({file_name}) is already listed in "
                f"{others[voc_id]}: writing it would replace that split's Annotations/{voc_id}.xml "
                f"and its image; give this split's ids a prefix (data convert --prefix {hint}) "
                "or write it to another folder"
            )
        if voc_id in own:
            continue  # written by an earlier conversion of this split: replaced
        name = f"{prefix}{Path(file_name).name}"
        xml, image = out_root / "Annotations" / f"{voc_id}.xml", out_root / "JPEGImages" / name
        src = img_src_dir / file_name
        taken = xml if xml.exists() else image if image.exists() else None
        if taken is image and src.exists() and os.path.samefile(src, image):
            taken = None  # the very image: nothing is replaced
        if taken is not None:
            raise ValueError(
                f"{taken} exists and was not written by a conversion of split {split!r} (no "
                f"list in {out_root / 'ImageSets' / 'Main'} names {voc_id!r}): refusing to "
                "replace it; remove it or write to another folder"
            )


def write_voc(
    coco: dict,
    img_src_dir: str | Path,
    out_root: str | Path,
    split: str = "train",
    link_images: bool = True,
    source: str | Path = "COCO annotations",
    prefix: str = "",
) -> Path:
    """Writes a COCO dict as a VOC split; returns the list file's path.

    Writes `out_root/Annotations/<id>.xml`, `out_root/ImageSets/Main/<split>.txt` (the ids, in
    image order) and `out_root/JPEGImages/<prefix><file name>` (a hard link, or a copy when
    `link_images` is False or linking fails, of `img_src_dir/<file_name>`; images in sub-folders
    are flattened). An image's VOC id is `prefix` + the stem of its file name, so two images
    with the same stem, or a stem with whitespace, are errors.

    Nothing is replaced but the files of an earlier conversion of the same split (the ids its
    list names): an id that another list of out_root names (a second split whose images are
    named as the first's: give it a `prefix`, e.g. "val_"), or an XML or image of the same name
    that no list names, is a ValueError before anything is written.

    Categories: `<name>` is the category name (names must be distinct). `iscrowd: 1` becomes
    `<difficult>1</difficult>`. Boxes are converted with the inverse of read_voc's formulas
    (xmin = x + 1, xmax = x + w) in exact decimal arithmetic, so read_voc gives back the same
    floats. A box narrower or lower than 1 pixel (w or h < 1) cannot be written (read_voc would
    see xmax < xmin) and is left out with a warning.

    The dict must pass the COCO loader's checks (check_coco; errors name `source`, the file it
    was read from). The list file is written last and atomically: a crash leaves none, or the
    previous one, never a partial list.
    """
    check_coco(coco, source)
    img_src_dir, out_root = Path(img_src_dir), Path(out_root)
    names = {c["id"]: str(c["name"]) for c in coco["categories"]}  # distinct: check_coco
    anns_of = _anns_by_image(coco)

    if prefix and (
        len(prefix.split()) != 1
        or prefix != prefix.strip()
        or "/" in prefix
        or os.sep in prefix
        or prefix in (".", "..")
    ):
        raise ValueError(f"VOC id prefix {prefix!r}: no spaces or path separators allowed")
    stems: dict[str, str] = {}
    for im in coco["images"]:
        fn = Path(im["file_name"])
        voc_id = prefix + fn.stem
        if voc_id in stems:
            raise ValueError(
                f"images {stems[voc_id]!r} and {im['file_name']!r} would both be VOC image "
                f"{voc_id!r}: rename one"
            )
        if not fn.stem or len(fn.stem.split()) != 1 or fn.stem != fn.stem.strip():
            raise ValueError(f"image {im['file_name']!r}: a VOC image id cannot contain spaces")
        stems[voc_id] = im["file_name"]
    _check_no_replacement(img_src_dir, out_root, split, stems, prefix)

    (out_root / "Annotations").mkdir(parents=True, exist_ok=True)
    (out_root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    too_small, first = 0, None
    for im in coco["images"]:
        fn = Path(im["file_name"])
        _place_image(img_src_dir / fn, out_root / "JPEGImages" / f"{prefix}{fn.name}", link_images)
        ann = ET.Element("annotation")
        ET.SubElement(ann, "folder").text = out_root.name
        ET.SubElement(ann, "filename").text = f"{prefix}{fn.name}"
        size = ET.SubElement(ann, "size")
        for key, value in (("width", im["width"]), ("height", im["height"]), ("depth", 3)):
            ET.SubElement(size, key).text = str(int(value))
        ET.SubElement(ann, "segmented").text = "0"
        for a in anns_of[im["id"]]:
            bbox = a["bbox"]
            if bbox[2] < 1 or bbox[3] < 1:
                too_small += 1
                first = first or f"annotation {a['id']} of {im['file_name']}: bbox {bbox}"
                continue
            x, y, w, h = map(_exact, bbox)
            corners = (_DEC.add(x, 1), _DEC.add(y, 1), _DEC.add(x, w), _DEC.add(y, h))
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = names[a["category_id"]]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "1" if a.get("iscrowd", 0) else "0"
            box = ET.SubElement(obj, "bndbox")
            for key, value in zip(_COORDS, corners):
                ET.SubElement(box, key).text = _fmt(value)
        ET.indent(ann)
        xml = out_root / "Annotations" / f"{prefix}{fn.stem}.xml"
        ET.ElementTree(ann).write(xml, encoding="utf-8")
    if too_small:
        log.warning(
            "write_voc: left out %d box(es) narrower or lower than 1 pixel, which VOC's "
            "inclusive pixel coordinates cannot hold; the first: %s",
            too_small,
            first,
        )
    list_file = out_root / "ImageSets" / "Main" / f"{split}.txt"
    with atomic_open(list_file, encoding="utf-8") as f:
        f.write("".join(f"{stem}\n" for stem in stems))
    return list_file
