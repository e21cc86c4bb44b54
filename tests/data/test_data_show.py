"""`gfldet data show`: the ground truth of N images of a split, drawn (data/show.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from gfldet.cli import main
from gfldet.config import load_config
from gfldet.data.show import show_ground_truth
from gfldet.data.synth import shapes_overrides
from tests.helpers import DEMO

SMALL = ["data.train.img_scale=[96,96]", "data.train.ms_short_range=null"]


@pytest.fixture
def cfg(shapes):
    return load_config(DEMO, [*shapes_overrides(shapes), *SMALL])


def test_show_draws_the_boxes_of_seeded_images(cfg, shapes, tmp_path):
    out = tmp_path / "show"
    files = show_ground_truth(cfg, "val", 2, out, seed=1)
    assert len(files) == 2 and all(f.parent == out for f in files)
    again = show_ground_truth(cfg, "val", 2, tmp_path / "again", seed=1)
    assert [f.name for f in again] == [f.name for f in files]  # the same seeded choice
    for f in files:
        assert f.name.startswith("val_")
        drawn = cv2.imread(str(f))
        original = cv2.imread(str(shapes["val_img_dir"] / (f.stem.split("_", 2)[2] + ".jpg")))
        assert drawn.shape == original.shape  # the image as it is on disk
        assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # boxes drawn
    manifest = json.loads((out / "data_show.json").read_text())["files"]
    assert sorted(manifest) == sorted(f.name for f in files)


def test_show_asks_for_more_than_the_split_holds(cfg, tmp_path):
    assert len(show_ground_truth(cfg, "val", 50, tmp_path / "all")) == 3


def test_show_augmented_draws_the_training_pipelines_output(cfg, tmp_path):
    files = show_ground_truth(cfg, "train", 3, tmp_path / "aug", seed=0, augmented=True)
    assert len(files) == 3
    for f in files:
        h, w = cv2.imread(str(f)).shape[:2]
        assert max(h, w) <= 96  # resized to data.train.img_scale, not the 64 px originals
        assert max(h, w) > 64
    with pytest.raises(ValueError, match="--augmented .* --split train"):
        show_ground_truth(cfg, "val", 1, tmp_path / "x", augmented=True)


def test_show_refuses_an_out_inside_a_splits_image_folder(cfg, shapes, tmp_path):
    before = sorted(p.name for p in shapes["train_img_dir"].iterdir())
    for split_dir in (shapes["train_img_dir"], shapes["val_img_dir"] / "drawn"):
        with pytest.raises(ValueError, match="inside the image folder of data"):
            show_ground_truth(cfg, "val", 1, split_dir)
    assert sorted(p.name for p in shapes["train_img_dir"].iterdir()) == before
    assert not (shapes["val_img_dir"] / "drawn").exists()


def test_show_never_overwrites_a_file_it_did_not_write(cfg, tmp_path):
    out = tmp_path / "show"
    files = show_ground_truth(cfg, "val", 3, out)
    show_ground_truth(cfg, "val", 3, out)  # its own files: replaced
    victim = files[0]
    (out / "data_show.json").unlink()
    victim.write_bytes(b"the user's")
    with pytest.raises(ValueError, match="was not written by gfldet data show"):
        show_ground_truth(cfg, "val", 3, out)
    assert victim.read_bytes() == b"the user's"


def test_show_bad_arguments(cfg, tmp_path):
    with pytest.raises(ValueError, match="--num must be >= 1"):
        show_ground_truth(cfg, "val", 0, tmp_path / "x")
    with pytest.raises(ValueError, match="--split must be one of"):
        show_ground_truth(cfg, "test", 1, tmp_path / "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        show_ground_truth(cfg, "val", 1, tmp_path / "f")


def test_data_show_command(shapes, tmp_path, capsys):
    out = tmp_path / "gt"
    argv = [
        "data",
        "show",
        "--config",
        str(DEMO),
        "--set",
        *shapes_overrides(shapes),
        "--split",
        "val",
        "--num",
        "2",
        "--out",
        str(out),
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    assert "drew the ground truth of 2 val images" in capsys.readouterr().out
    assert len(list(out.glob("val_*.jpg"))) == 2
    bad = [
        "data",
        "show",
        "--config",
        str(DEMO),
        "--set",
        *shapes_overrides(shapes),
        "--out",
        str(shapes["train_img_dir"]),
    ]
    assert main(bad) == 2
    assert "inside the image folder of data.train" in capsys.readouterr().err
