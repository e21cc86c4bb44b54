"""Bad input: a clear error naming the file / key / value, or with data.skip_bad_images a skip
with a warning and a count. (Grayscale, RGBA and 16-bit images are read in test_data.py; config
and checkpoint errors are tested in test_config.py and test_model.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfldet.cli import main
from gfldet.data import coco
from gfldet.data.coco import BadImageError, CocoDetection, load_image
from gfldet.data.synth import shapes_overrides
from gfldet.data.transforms import TestTransform, collate_batch
from gfldet.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "shapes_demo.yaml")
CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def warnings_of_gfldet(caplog, monkeypatch):
    """gfldet's logger does not propagate once training set it up: listen to it directly."""
    logger = logging.getLogger("gfldet")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def identity(image, boxes, rng=None):
    h, w = image.shape[:2]
    return image, boxes, {"img_size": (h, w), "scale_factor": (1.0, 1.0), "flipped": False}


def write_ann(path: Path, images: list[dict], anns: list[dict], cats=CATS, **extra) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats,
                                **extra}))  # fmt: skip
    return path


def image(img_id: int, name: str, w: int = 40, h: int = 30) -> dict:
    return {"id": img_id, "file_name": name, "width": w, "height": h}


def ann(ann_id: int, img_id: int, bbox, cat: int = 1) -> dict:
    return {"id": ann_id, "image_id": img_id, "category_id": cat, "bbox": bbox, "area": 10.0,
            "iscrowd": 0}  # fmt: skip


def noise_jpeg(size: int) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8), (size, size))
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def make_bad_file(folder: Path, kind: str) -> tuple[str, str, tuple[int, int]]:
    """Writes an unusable image; returns (file name, expected message, (width, height))."""
    if kind == "missing":
        return "gone.jpg", "image file not found", (40, 30)
    if kind == "empty":
        (folder / "empty.jpg").write_bytes(b"")
        return "empty.jpg", "image file is empty", (40, 30)
    if kind == "not-an-image":
        (folder / "notes.png").write_text("these are my notes, not a picture\n")
        return "notes.png", "not a readable image", (40, 30)
    if kind == "truncated-jpeg":
        data = noise_jpeg(256)
        (folder / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])
        # cv2.imread decodes it without an error (grey lower half, a warning on stderr).
        assert cv2.imread(str(folder / "cut.jpg")) is not None
        return "cut.jpg", "truncated JPEG", (256, 256)
    if kind == "truncated-png":
        data = cv2.imencode(".png", np.full((30, 40, 3), 7, np.uint8))[1].tobytes()
        (folder / "cut.png").write_bytes(data[: len(data) // 2])
        return "cut.png", "not a readable image", (40, 30)
    if kind == "folder":
        (folder / "dir.jpg").mkdir()
        return "dir.jpg", "image file not found", (40, 30)
    raise AssertionError(kind)


BAD_FILES = ["missing", "empty", "not-an-image", "truncated-jpeg", "truncated-png", "folder"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unreadable_image_is_an_error_naming_the_file(tmp_path, kind):
    name, message, (w, h) = make_bad_file(tmp_path, kind)
    f = write_ann(tmp_path / "a.json", [image(1, name, w, h)], [ann(1, 1, [1, 1, 9, 9])])
    ds = CocoDetection(f, tmp_path, identity, train=True)
    with pytest.raises(BadImageError) as info:
        ds[0]
    assert message in str(info.value) and str(tmp_path / name) in str(info.value)
    with pytest.raises(BadImageError, match=message):
        load_image(tmp_path / name)


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, warnings_of_gfldet):
    images, anns = [], []
    for i, kind in enumerate(BAD_FILES):
        name, _, (w, h) = make_bad_file(tmp_path, kind)
        images.append(image(i, name, w, h))
        anns.append(ann(i, i, [1, 1, 9, 9]))
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((30, 40, 3), np.uint8))
    images.append(image(99, "good.png"))
    anns.append(ann(99, 99, [1, 1, 9, 9]))
    ds = CocoDetection(write_ann(tmp_path / "a.json", images, anns), tmp_path, identity,
                       train=True, skip_bad=True)  # fmt: skip
    items = [ds[i] for i in range(len(ds))]
    assert [item is None for item in items] == [True] * len(BAD_FILES) + [False]
    warned = [r.getMessage() for r in warnings_of_gfldet.records if r.levelno == logging.WARNING]
    assert len(warned) == len(BAD_FILES)
    assert all("skipped an unreadable image" in m for m in warned)
    images, targets = collate_batch(items)  # the skipped ones are left out of the batch
    assert images.shape[0] == 1 and [t["image_id"] for t in targets] == [99]
    images, targets = collate_batch([None, None], size_divisor=32)
    assert images.shape == (0, 3, 32, 32) and targets == []


def test_image_of_another_size_than_annotated(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((30, 40, 3), np.uint8))
    f = write_ann(tmp_path / "a.json", [image(1, "x.png", w=30, h=40)], [ann(1, 1, [1, 1, 9, 9])])
    with pytest.raises(BadImageError, match=r"x.png is 40x30 .*a.json says 30x40"):
        CocoDetection(f, tmp_path, identity, train=True)[0]


def test_huge_image_limit_and_a_large_image(tmp_path, monkeypatch):
    big = np.zeros((1600, 2400, 3), np.uint8)
    big[400:800, 600:1200] = 255
    cv2.imwrite(str(tmp_path / "big.png"), big)
    f = write_ann(tmp_path / "a.json", [image(1, "big.png", 2400, 1600)],
                  [ann(1, 1, [600, 400, 600, 400])])  # fmt: skip
    ds = CocoDetection(f, tmp_path, TestTransform((96, 64)), train=True)
    img, t = ds[0]  # large but fine: decoded, resized by 1/25, boxes with it
    assert img.shape == (3, 64, 96) and img[:, 20, 30].tolist() == [255, 255, 255]
    torch.testing.assert_close(t["boxes"], torch.tensor([[24.0, 16, 48, 32]]))

    monkeypatch.setattr(coco, "MAX_IMAGE_PIXELS", 1000 * 1000)
    with pytest.raises(BadImageError, match=r"image too large: .*big.png is 2400x1600"):
        ds[0]
    skipping = CocoDetection(f, tmp_path, identity, train=True, skip_bad=True)
    assert skipping[0] is None


@pytest.mark.parametrize(
    "content, needle",
    [
        ([1, 2, 3], "top level must be a JSON object"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list"),
        ({"images": [{"id": 1, "file_name": "x.jpg", "height": 4}], "annotations": [],
          "categories": CATS}, r"images\[0\] \(id 1\) has no 'width'"),
        ({"images": [image(1, "x.jpg", w=0)], "annotations": [], "categories": CATS},
         "image 1 has an invalid size: width 0"),
        ({"images": [image(1, "x.jpg", w="640")], "annotations": [], "categories": CATS},
         "image 1 has an invalid size: width '640'"),
        ({"images": [image(1, "x.jpg"), image(1, "y.jpg")], "annotations": [],
          "categories": CATS}, "image id 1 appears more than once"),
        ({"images": [], "annotations": [], "categories": [{"id": 1}]},
         r"categories\[0\] needs an 'id' and a 'name'"),
        ({"images": [image(1, "x.jpg")], "annotations": [{"image_id": 1}], "categories": CATS},
         r"annotations\[0\] has no 'id'"),
    ],
    ids=["list", "images-not-list", "no-width", "zero-width", "string-width", "dup-image",
         "nameless-category", "annotation-without-id"],
)  # fmt: skip
def test_annotation_file_faults_name_file_and_key(tmp_path, content, needle):
    f = tmp_path / "broken.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=needle) as info:
        CocoDetection(f, tmp_path, identity, train=False)
    assert str(f) in str(info.value)


@pytest.mark.parametrize(
    "bbox, needle",
    [
        ([1, 2, float("nan"), 5], "non-finite value"),
        ([1, float("inf"), 3, 5], "non-finite value"),
        ([10, 2, -3, 5], "negative width or height"),
        ([1, 2, 3, -0.5], "negative width or height"),
        ([1, 2, 3], "must be 4 numbers"),
        (["1", 2, 3, 4], "must be 4 numbers"),
        (None, "must be 4 numbers"),
    ],
    ids=["nan", "inf", "negative-w", "negative-h", "three", "string", "none"],
)
def test_invalid_box_is_an_error_or_left_out(tmp_path, bbox, needle, warnings_of_gfldet):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((30, 40, 3), np.uint8))
    f = write_ann(tmp_path / "a.json", [image(1, "x.png")],
                  [ann(5, 1, [1, 1, 9, 9]), ann(6, 1, bbox, cat=2)])  # fmt: skip
    with pytest.raises(ValueError) as info:
        CocoDetection(f, tmp_path, identity, train=True)
    msg = str(info.value)
    assert str(f) in msg and "annotation 6 (image 1)" in msg and needle in msg
    assert "skip_bad_images" in msg

    ds = CocoDetection(f, tmp_path, identity, train=True, skip_bad=True)
    assert ds.box_stats["invalid"] == 1
    assert ds[0][1]["labels"].tolist() == [0]  # annotation 5 kept
    assert sorted(ds.coco.anns) == [5]  # also gone from the evaluation's ground truth
    assert any("left out annotation 6" in r.getMessage() for r in warnings_of_gfldet.records)


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path, warnings_of_gfldet):
    warnings_of_gfldet.set_level(logging.INFO, logger="gfldet")
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((30, 40, 3), np.uint8))
    anns = [
        ann(1, 1, [-5, -5, 15, 15]),  # clipped to (0, 0, 10, 10)
        ann(2, 1, [30, 20, 20, 20]),  # clipped to (30, 20, 40, 30)
        ann(3, 1, [50, 0, 10, 10]),  # entirely outside: dropped
        ann(4, 1, [5, 5, 0.5, 9]),  # under one pixel wide: dropped
        {**ann(5, 1, [5, 5, 9, 9]), "area": 0},  # no area: dropped
        ann(6, 1, [2, 3, 4, 5]),  # inside: kept as is
    ]
    f = write_ann(tmp_path / "a.json", [image(1, "x.png")], anns)
    ds = CocoDetection(f, tmp_path, identity, train=True)
    assert ds.box_stats == {"clipped": 2, "dropped": 3, "invalid": 0}
    torch.testing.assert_close(
        ds[0][1]["boxes"], torch.tensor([[0.0, 0, 10, 10], [30, 20, 40, 30], [2, 3, 6, 8]])
    )
    assert any("2 box(es) clipped" in r.getMessage() and "3 dropped" in r.getMessage()
               for r in warnings_of_gfldet.records)  # fmt: skip

    only_bad = write_ann(tmp_path / "b.json", [image(1, "x.png")], anns[2:5])
    with pytest.raises(ValueError, match=r"b.json: no image has a usable box .*3 boxes dropped"):
        CocoDetection(only_bad, tmp_path, identity, train=True)


def tiny_sets(paths: dict, work: Path, *extra: str) -> list[str]:
    return [
        f"work_dir={work}",
        *shapes_overrides(paths),
        "data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]",
        "data.train.batch_size=2", "data.train.num_workers=0", "data.val.num_workers=0",
        "model.backbone.base_width=8", "model.neck.out_channels=16", "model.head.feat_channels=16",
        "model.head.stacked_convs=1", "model.head.num_groups=4", "model.test.score_thr=0.001",
        "train.epochs=1", "train.log_interval=1", "train.warmup_iters=2", "train.eval_interval=0",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def damaged(shapes, tmp_path) -> dict:
    """A copy of the tiny dataset with one train image truncated and one val image missing."""
    paths = {}
    for split in ("train", "val"):
        ann_file = json.loads(Path(shapes[f"{split}_ann"]).read_text())
        img_dir = tmp_path / split
        img_dir.mkdir()
        for im in ann_file["images"]:
            src = Path(shapes[f"{split}_img_dir"]) / im["file_name"]
            (img_dir / im["file_name"]).write_bytes(src.read_bytes())
        paths[f"{split}_ann"], paths[f"{split}_img_dir"] = shapes[f"{split}_ann"], img_dir
    first = json.loads(Path(shapes["train_ann"]).read_text())["images"][0]["file_name"]
    data = (tmp_path / "train" / first).read_bytes()
    (tmp_path / "train" / first).write_bytes(data[: len(data) // 2])
    gone = json.loads(Path(shapes["val_ann"]).read_text())["images"][1]
    (tmp_path / "val" / gone["file_name"]).unlink()
    return {**paths, "bad_train": tmp_path / "train" / first, "gone_val_id": gone["id"]}


@pytest.mark.slow
def test_training_skips_unreadable_images_and_counts_them(damaged, tmp_path):
    work = tmp_path / "w"
    # One image per batch: the bad image's batch is empty and its step is skipped.
    metrics = train(
        load_config_with(
            damaged,
            work,
            "data.skip_bad_images=true",
            "train.eval_interval=1",
            "data.train.batch_size=1",
        )
    )
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 7 and steps[-1]["skipped_images"] == 1  # the bad image comes once
    log_text = (work / "train.log").read_text()
    assert "skipped an unreadable image" in log_text and str(damaged["bad_train"]) in log_text
    skipped_step = ({1, 2, 3, 4, 5, 6, 7, 8} - {r["iter"] for r in steps}).pop()
    assert f"iteration {skipped_step} skipped: no readable image in a batch" in log_text
    assert "1 unreadable image(s) were skipped in this run" in log_text
    assert "evaluation: 1 of 3 images could not be read" in log_text
    dets = json.loads((work / "detections.json").read_text())
    assert dets and damaged["gone_val_id"] not in {d["image_id"] for d in dets}
    assert 0.0 <= metrics["AP50"] <= 1.0


def load_config_with(paths: dict, work: Path, *extra: str) -> dict:
    from gfldet.config import load_config

    return load_config(DEMO, tiny_sets(paths, work, *extra))


def test_unreadable_image_without_skipping_is_a_one_line_error(damaged, tmp_path, capsys):
    sets = tiny_sets(damaged, tmp_path / "w", "data.train.num_workers=1")
    # The missing val image is found before training starts.
    assert main(["train", "--config", DEMO, "--set", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.val.img_dir" in err and "1 of 3" in err
    # The truncated train image is read in a DataLoader worker: still one line.
    assert main(["train", "--config", DEMO, "--set", *sets, "train.eval_interval=0",
                 f"data.val.img_dir={Path(damaged['train_img_dir']).parent / 'train'}",
                 f"data.val.ann_file={damaged['train_ann']}"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err == f"gfldet: error: truncated JPEG file (no end-of-image marker): " \
                  f"{damaged['bad_train']}"  # fmt: skip


def test_cli_misuse_is_a_one_line_error(shapes, tmp_path, capsys):
    sets = tiny_sets(shapes, tmp_path / "w")
    missing = tmp_path / "nope.json"
    assert main(["train", "--config", DEMO, "--set", *sets,
                 f"data.train.ann_file={missing}"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "annotation file not found" in err and str(missing) in err

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    img = str(Path(shapes["val_img_dir"]) / "*.jpg")
    assert main(["infer", "--config", DEMO, "--checkpoint", "x.pth", img,
                 "--out-dir", str(blocker / "out"), "--set", *sets]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(blocker / "out") in err
