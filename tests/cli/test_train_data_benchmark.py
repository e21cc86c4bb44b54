"""The your-data benchmark (benchmarks.your_data) and its real-content dataset
(benchmarks.digits), at tiny sizes: what `make bench-converge` runs with large ones."""

from __future__ import annotations

import json

import pytest

from benchmarks import your_data
from benchmarks.digits import NAMES, write_digits_dataset
from gfldet.data.sources import data_source
from gfldet.data.yolo import read_yolo


def test_the_digits_set_is_a_yolo_dataset_with_backgrounds_and_unseen_val_photos(tmp_path):
    data_yaml = write_digits_dataset(tmp_path / "digits", num_train=30, num_val=10, seed=3)
    source = data_source(data_yaml)
    assert source.kind == "yolo" and list(source.classes) == NAMES
    train = read_yolo(data_yaml, source.train.img_dir)
    assert len(train["images"]) == 30 and train["annotations"]
    with_boxes = {a["image_id"] for a in train["annotations"]}
    assert len(with_boxes) < 30  # some images are background only
    write_digits_dataset(tmp_path / "again", num_train=30, num_val=10, seed=3)
    first = sorted((tmp_path / "digits" / "labels" / "train").iterdir())
    second = sorted((tmp_path / "again" / "labels" / "train").iterdir())
    assert [p.read_text() for p in first] == [p.read_text() for p in second]  # deterministic


def test_the_today_recipe_turns_every_new_part_off():
    items = dict(i.split("=", 1) for i in your_data.recipe_items("today", 8))
    assert items["data.train.mosaic_prob"] == "0" and items["train.lr_schedule"] == "step"
    assert items["data.train.filter_empty"] == "true" and items["train.ema"] == "false"
    assert items["train.lr_steps"] == "[6]"
    assert your_data.recipe_items("new", 8) == []


@pytest.mark.slow
def test_the_benchmark_trains_both_recipes_at_equal_cpu_time(shapes, tmp_path, monkeypatch):
    from gfldet.data.convert import convert_annotations

    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        convert_annotations(
            "coco",
            "yolo",
            shapes[f"{split}_ann"],
            tmp_path / "yolo",
            shapes[f"{split}_img_dir"],
            split=split,
        )
    small = ["data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]", "device=cpu"]
    argv = [
        "--data",
        str(tmp_path / "yolo" / "data.yaml"),
        "--minutes",
        "0.01",
        "--seeds",
        "0",
        "--work-dir",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "b.json"),
        "--set",
        *small,
    ]
    assert your_data.main(argv) == 0
    out = json.loads((tmp_path / "b.json").read_text())
    assert set(out["epoch_cpu_s"]) == {"new", "today"} and out["machine"]["cpu"]
    assert [r["recipe"] for r in out["runs"]] == ["new", "today"]
    assert all(r["epochs"] >= 1 and r["cpu_s"] > 0 and 0 <= r["AP"] <= 1 for r in out["runs"])
