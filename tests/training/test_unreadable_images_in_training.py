"""Training on a dataset with a truncated and a missing image: skipped and counted with
data.skip_bad_images, a one-line error without it (also from a DataLoader worker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gfldet.cli import main
from gfldet.training.trainer import train
from tests.helpers import DEMO, tiny_train_cfg, tiny_train_sets

pytestmark = pytest.mark.usefixtures("one_thread")


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
        tiny_train_cfg(
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


@pytest.mark.slow
def test_unreadable_image_without_skipping_is_a_one_line_error(damaged, tmp_path, capsys):
    sets = tiny_train_sets(damaged, tmp_path / "w", "data.train.num_workers=1")
    # The missing val image is found before training starts.
    assert main(["train", "--config", DEMO, "--set", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.val.img_dir" in err and "1 of 3" in err
    # The truncated train image is read in a DataLoader worker: still one line.
    assert (
        main(
            [
                "train",
                "--config",
                DEMO,
                "--set",
                *sets,
                "train.eval_interval=0",
                f"data.val.img_dir={Path(damaged['train_img_dir']).parent / 'train'}",
                f"data.val.ann_file={damaged['train_ann']}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert (
        err == f"gfldet: error: truncated JPEG file (no end-of-image marker): "
        f"{damaged['bad_train']}"
    )
