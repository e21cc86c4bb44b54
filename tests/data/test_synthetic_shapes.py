"""gfldet.data.synth: the synthetic shapes dataset (layout, determinism, valid COCO, tight
boxes) and `gfldet data synth`, which checks its arguments and writes only where it may."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from gfldet.cli import main
from gfldet.data import synth
from gfldet.data.synth import write_shapes_dataset
from tests.helpers import one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_train": 12, "num_val": 4, "img_size": 128, "seed": 3}


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synth.write_shapes_dataset(tmp_path_factory.mktemp("shapes"), **SMALL)


def _snapshot(paths: dict[str, Path]) -> dict[str, bytes]:
    """JSON bytes and decoded pixels of every file of a generated dataset."""
    snap = {}
    for split in synth.SPLITS:
        snap[split] = paths[f"{split}_ann"].read_bytes()
        for f in sorted(paths[f"{split}_img_dir"].glob("*.jpg")):
            snap[f"{split}/{f.name}"] = cv2.imread(str(f)).tobytes()
    return snap


def test_the_dataset_has_the_documented_layout(small_ds: dict[str, Path]) -> None:
    assert set(small_ds) == {"train_ann", "train_img_dir", "val_ann", "val_img_dir"}
    root = small_ds["train_ann"].parent.parent
    assert small_ds["train_ann"] == root / "annotations" / "train.json"
    assert small_ds["val_img_dir"] == root / "val" / "images"
    assert len(list(small_ds["train_img_dir"].glob("*.jpg"))) == 12
    assert len(list(small_ds["val_img_dir"].glob("*.jpg"))) == 4


def test_output_is_deterministic_and_independent_of_workers(
    small_ds: dict[str, Path], tmp_path: Path
) -> None:
    again = synth.write_shapes_dataset(tmp_path / "a", **SMALL, workers=2)
    assert _snapshot(again) == _snapshot(small_ds)
    other = synth.write_shapes_dataset(tmp_path / "b", **{**SMALL, "seed": 4})
    assert other["train_ann"].read_bytes() != small_ds["train_ann"].read_bytes()


def test_annotations_are_valid_coco_with_non_contiguous_ids(small_ds: dict[str, Path]) -> None:
    for split in synth.SPLITS:
        coco = COCO(str(small_ds[f"{split}_ann"]))
        cat_ids = sorted(coco.getCatIds())
        assert len(cat_ids) >= 5 and cat_ids != list(range(1, len(cat_ids) + 1))
        assert [c["name"] for c in coco.loadCats(cat_ids)] == list(synth.CLASSES)
        assert min(coco.getImgIds()) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            assert (img["width"], img["height"]) == (128, 128)
            assert (small_ds[f"{split}_img_dir"] / img["file_name"]).is_file()
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
        for a in coco.loadAnns(ann_ids):
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
            assert w >= synth.MIN_BOX_SIDE and h >= synth.MIN_BOX_SIDE
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
            assert a["category_id"] in cat_ids


def test_written_images_and_boxes_match_the_renderer(small_ds: dict[str, Path]) -> None:
    coco = json.loads(small_ds["train_ann"].read_text())
    for i in range(3):
        img, objects = synth.render_sample(3, 0, i, img_size=128)
        image_id = synth.IMAGE_ID_OFFSET + i
        written = [
            (a["category_id"], a["bbox"], a["area"])
            for a in coco["annotations"]
            if a["image_id"] == image_id
        ]
        assert written == [(o["category_id"], o["bbox"], o["area"]) for o in objects]
        on_disk = cv2.imread(str(small_ds["train_img_dir"] / f"{i:06d}.jpg"))[..., ::-1]
        assert np.abs(on_disk.astype(int) - img).mean() < 6  # RGB order kept, JPEG q95


def test_visible_boxes_are_tight_and_occlusion_bounded() -> None:
    seen = set()
    for i in range(40):
        img, objects = synth.render_sample(0, 0, i)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        union = np.zeros((256, 256), int)
        for o in objects:
            m = o["mask"]
            x, y, w, h = (int(v) for v in o["bbox"])
            assert m.sum() == o["area"] and not m[:, :x].any() and not m[:y].any()
            assert not m[:, x + w :].any() and not m[y + h :].any()
            box = m[y : y + h, x : x + w]  # object pixels touch all four sides of its box
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert o["area"] >= synth.MIN_VISIBLE * o["full_area"]
            union += m
            seen.add(o["category_id"])
        assert union.max() <= 1  # visible masks are disjoint
    assert seen == set(synth.CATEGORY_IDS)  # every class appears in a modest set


def test_some_images_have_no_objects() -> None:
    rngs = [np.random.default_rng([0, 0, i]).random() for i in range(400)]
    empty = [i for i, r in enumerate(rngs) if r < synth.EMPTY_PROB]
    assert 1 <= len(empty) <= 20
    assert synth.render_sample(0, 0, empty[0])[1] == []


def test_an_unchanged_dataset_is_skipped_and_a_changed_one_redone(tmp_path: Path) -> None:
    args = {"num_train": 3, "num_val": 2, "img_size": 64, "seed": 1}
    paths = synth.write_shapes_dataset(tmp_path, **args)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["num_train"] == 3 and meta["generator_version"] == synth.GENERATOR_VERSION
    marker = paths["val_img_dir"] / "000000.jpg"
    marker.write_bytes(b"sentinel")  # untouched if generation is skipped
    synth.write_shapes_dataset(tmp_path, **args)
    assert marker.read_bytes() == b"sentinel"
    synth.write_shapes_dataset(tmp_path, **{**args, "num_train": 2})  # args differ: regenerate
    assert marker.read_bytes() != b"sentinel"
    assert len(list(paths["train_img_dir"].glob("*.jpg"))) == 2
    assert len(json.loads(paths["train_ann"].read_text())["images"]) == 2
    (paths["train_img_dir"] / "000001.jpg").unlink()  # incomplete output: regenerate
    synth.write_shapes_dataset(tmp_path, **{**args, "num_train": 2})
    assert (paths["train_img_dir"] / "000001.jpg").is_file()


def test_the_command_prints_one_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    rc = synth.main(
        ["--out", str(out), "--num-train", "3", "--num-val", "2", "--img-size", "64", "--seed", "5"]
    )
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "train 3 images" in line and "val 2 images" in line
    assert json.loads((out / "meta.json").read_text())["seed"] == 5
    assert cv2.imread(str(out / "train" / "images" / "000002.jpg")).shape == (64, 64, 3)


def test_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "holiday"
    (mine / "train" / "images" / "2019").mkdir(parents=True)
    (mine / "train" / "images" / "2019" / "beach.jpg").write_bytes(b"my photo")
    (mine / "val" / "images").mkdir(parents=True)
    (mine / "val" / "images" / "dog.png").write_bytes(b"my dog")
    (mine / "annotations").mkdir()
    (mine / "annotations" / "train.json").write_text("{}")
    before = snapshot(mine)
    assert main(["data", "synth", "--out", str(mine), "--num-train", "2", "--num-val", "1"]) == 2
    err = one_line_error(capsys)
    assert str(mine) in err and "was not written by gfldet data synth" in err
    assert snapshot(mine) == before


def test_regenerates_only_its_own_files(tmp_path):
    out = tmp_path / "shapes"
    small = dict(num_val=2, img_size=32, max_size=16, max_objects=2)
    write_shapes_dataset(out, num_train=6, **small)
    extra = out / "train" / "images" / "mine.png"
    extra.write_bytes(b"a file the generator did not write")
    write_shapes_dataset(out, num_train=3, **small)
    assert extra.read_bytes() == b"a file the generator did not write"
    names = sorted(p.name for p in (out / "train" / "images").iterdir())
    assert names == ["000000.jpg", "000001.jpg", "000002.jpg", "mine.png"]
    assert len(json.loads((out / "annotations" / "train.json").read_text())["images"]) == 3
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    write_shapes_dataset(tmp_path / "empty", num_train=1, **small)


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--img-size", "0"], "--img-size"),
        (["--num-train", "0"], "--num-train"),
        (["--num-val", "-1"], "--num-val"),
        (["--min-size", "50", "--max-size", "10"], "--min-size"),
        (["--max-objects", "0"], "--max-objects"),
    ],
)
def test_the_command_checks_its_arguments_before_writing(tmp_path, capsys, args, word):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), *args]) == 2
    assert word in one_line_error(capsys)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--img-size", 200000),
        ("--num-train", 10**9),
        ("--max-objects", 10**6),
        ("--max-size", 10**7),
    ],
)
def test_refuses_absurd_sizes_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), flag, str(value)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "<=" in err, err
    assert not out.exists()
