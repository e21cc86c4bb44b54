"""Where a run may write: never over another run (--overwrite moves it aside), never inside an
image split or into a file, never losing the weights it starts from; and what it checks before
the first iteration."""

from __future__ import annotations

import json

import pytest
import yaml

from gfldet.cli import main
from gfldet.core.checkpoint import (
    load_checkpoint,
)
from gfldet.training.run_dir import PREVIOUS
from tests.helpers import DEMO, one_line_error, snapshot, tiny_train_sets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("split", ["train", "val"])
def test_work_dir_inside_an_image_split_is_refused(shapes, tiny_sets, tmp_path, capsys, split):
    # Its curves.png and train_batch*.jpg would become images of the split.
    img_dir = shapes[f"{split}_img_dir"]
    before = sorted(p.name for p in img_dir.rglob("*"))
    work = img_dir / "runs" / "a"
    assert main(["train", "--config", DEMO, "--set", *tiny_sets(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(work) in err and f"data.{split}.img_dir" in err
    assert sorted(p.name for p in img_dir.rglob("*")) == before  # nothing written


@pytest.mark.slow
def test_overwrite_starting_from_the_latest_checkpoint_of_the_same_work_dir(
    tiny_sets, tmp_path, capsys
):
    work = tmp_path / "w"
    assert main(["train", "--config", DEMO, "--set", *tiny_sets(work, "train.max_iters=1")]) == 0
    first = load_checkpoint(work / "latest.pth")
    sets = tiny_sets(work, "train.max_iters=1", f"model.init_from={work / 'latest.pth'}")
    assert main(["train", "--config", DEMO, "--overwrite", "--set", *sets]) == 0
    (moved,) = (work / PREVIOUS).iterdir()
    # The old run is kept whole, and the new run says which file it started from.
    assert (moved / "latest.pth").is_file()
    saved = yaml.safe_load((work / "config.yaml").read_text())
    assert saved["model"]["init_from"] == str(moved / "latest.pth")
    assert f"init_from {moved / 'latest.pth'}" in (work / "train.log").read_text()
    second = load_checkpoint(work / "latest.pth")
    assert second["iter"] == 1 and second["config"]["model"]["init_from"] == str(
        moved / "latest.pth"
    )
    assert not all(first["model"][k].equal(v) for k, v in second["model"].items())


def test_a_new_run_refuses_a_work_dir_that_holds_a_run(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work, "train.max_iters=1")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    before = snapshot(work)
    assert main(["train", "--config", DEMO, "--set", *sets, "train.epochs=2"]) == 2
    err = one_line_error(capsys)
    assert str(work) in err and "--resume" in err and "--work-dir" in err and "--overwrite" in err
    assert snapshot(work) == before


@pytest.mark.slow
def test_overwrite_moves_the_old_run_aside(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work, "train.max_iters=3")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    before = snapshot(work)
    assert (
        main(["train", "--config", DEMO, "--overwrite", "--set", *sets, "train.max_iters=2"]) == 0
    )
    [old] = list((work / "previous").iterdir())
    assert snapshot(old) == before  # every file of the old run, byte for byte
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2]  # only the new run's
    assert load_checkpoint(work / "latest.pth")["iter"] == 2
    assert "previous" in capsys.readouterr().out


def test_train_checks_the_val_set_before_the_first_iteration(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work, f"data.val.img_dir={tmp_path / 'nowhere'}")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 2
    err = one_line_error(capsys)
    assert "nowhere" in err and "data.val.img_dir" in err
    assert not (work / "log.jsonl").exists() and not (work / "latest.pth").exists()


def test_a_work_dir_that_is_a_file_is_a_one_line_error(shapes, tmp_path, capsys):
    blocker = tmp_path / "w"
    blocker.write_text("a file")
    assert main(["train", "--config", DEMO, "--set", *tiny_train_sets(shapes, blocker)]) == 2
    err = one_line_error(capsys)
    assert "is a file" in err and "File exists" not in err


def test_unusable_work_dir_is_a_one_line_error(shapes, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--config", DEMO, "--set", *tiny_train_sets(shapes, blocker / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(blocker / "w") in err
