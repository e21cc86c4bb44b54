"""train.keep_last: the oldest epoch files go, never the current run's newest nor another
branch's, and a run resumed from an epoch file trains the same weights again."""

from __future__ import annotations

import pytest
import torch

from gfldet.cli import main
from gfldet.core.checkpoint import (
    load_checkpoint,
)
from tests.helpers import DEMO, tiny_train_sets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_keep_last_deletes_only_checkpoints_of_the_current_run(shapes, tmp_path):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work, "train.epochs=3")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    old3 = (work / "epoch_3.pth").read_bytes()
    # Go back to epoch 1 and train epoch 2 again, keeping one epoch file.
    assert (
        main(
            [
                "train",
                "--config",
                DEMO,
                "--resume",
                str(work / "epoch_1.pth"),
                "--set",
                *sets,
                "train.epochs=2",
                "train.keep_last=1",
            ]
        )
        == 0
    )
    assert (work / "epoch_2.pth").is_file(), "keep_last deleted the checkpoint it just wrote"
    assert load_checkpoint(work / "epoch_2.pth")["epoch"] == 2
    assert not (work / "epoch_1.pth").exists()
    assert (work / "epoch_3.pth").read_bytes() == old3  # a later one of the first branch


@pytest.mark.slow
def test_keep_last_and_resume_from_an_epoch_file(shapes, tmp_path):
    work = tmp_path / "w"
    sets = tiny_train_sets(
        shapes, work, "train.epochs=3", "train.keep_last=2", "data.train.batch_size=4"
    )
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    names = sorted(p.name for p in work.iterdir() if p.suffix == ".pth")
    assert names == ["epoch_2.pth", "epoch_3.pth", "latest.pth"]
    assert not list(work.glob(".*tmp"))
    final = load_checkpoint(work / "latest.pth")
    assert (work / "latest.pth").read_bytes() == (work / "epoch_3.pth").read_bytes()

    # --resume PATH: epoch 3 again from the end of epoch 2 gives the same weights.
    assert (
        main(["train", "--config", DEMO, "--resume", str(work / "epoch_2.pth"), "--set", *sets])
        == 0
    )
    again = load_checkpoint(work / "latest.pth")
    assert again["iter"] == final["iter"] == 6
    for name, value in final["model"].items():
        assert torch.equal(again["model"][name], value), name
