"""`--resume`: a clear error when there is nothing (or no checkpoint) to resume, settings that
cannot fit the saved state refused before anything is written, and what it does with optimizer
settings and the batch size changed on its command line."""

from __future__ import annotations

import pytest
import yaml

from gfldet.cli import main
from gfldet.core.checkpoint import (
    load_checkpoint,
)
from gfldet.training.trainer import Trainer
from tests.helpers import DEMO, one_line_error, snapshot, tiny_train_cfg, tiny_train_sets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "optimizer, changes",
    [
        ("adamw", {"weight_decay": 0.5}),
        ("sgd", {"weight_decay": 0.5, "momentum": 0.5}),
    ],
)
def test_resume_applies_changed_optimizer_hyperparameters(
    tiny_sets, tiny_cfg, tmp_path, optimizer, changes
):
    work = tmp_path / "w"
    sets = tiny_sets(work, f"train.optimizer={optimizer}", "train.max_iters=1")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    old = load_checkpoint(work / "latest.pth")["optimizer"]["param_groups"][0]
    assert all(old[k] != v for k, v in changes.items())

    changed = [f"train.{k}={v}" for k, v in changes.items()]
    resumed = Trainer(tiny_cfg(work, f"train.optimizer={optimizer}", *changed), resume=True)
    for group in resumed.optimizer.param_groups:  # what the run does ...
        assert {k: group[k] for k in changes} == changes
    saved = yaml.safe_load((work / "config.yaml").read_text())["train"]
    assert {k: saved[k] for k in changes} == changes  # ... is what config.yaml says
    text = (work / "train.log").read_text()
    for k, v in changes.items():
        assert f"train.{k} {old[k]:g} -> {v:g}" in text
    # The optimizer's state (AdamW moments, SGD momentum buffers) is the checkpoint's.
    assert len(resumed.optimizer.state) > 0


@pytest.mark.slow
def test_resume_with_another_optimizer_fails_before_writing(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work, "train.max_iters=2")  # shapes_demo.yaml trains with adamw
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    before = snapshot(work)
    config = str(work / "config.yaml")
    args = ["train", "--config", config, "--resume", "--set", "train.max_iters=4"]
    assert main([*args, "train.optimizer=sgd"]) == 2
    err = one_line_error(capsys)
    assert "train.optimizer" in err and "'adamw'" in err and "'sgd'" in err
    assert snapshot(work) == before  # config.yaml, log and checkpoints untouched
    # Frozen stages change what is tiny_trained: the optimizer state cannot fit either.
    assert main([*args, "model.backbone.frozen_stages=2"]) == 2
    assert "frozen_stages" in one_line_error(capsys)
    assert snapshot(work) == before
    assert main(args) == 0  # the documented command still works


def test_nothing_to_resume_and_a_junk_checkpoint_are_one_line_errors(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work)
    assert main(["train", "--config", DEMO, "--resume", "--set", *sets]) == 2
    err = one_line_error(capsys)
    assert "no checkpoint to resume from" in err and "latest.pth" in err
    # It says how to start anew, never to start over in (and so clobber) this work dir.
    assert "start over" not in err and "empty --work-dir" in err
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    assert main(["train", "--config", DEMO, "--resume", str(junk), "--set", *sets]) == 2
    assert "junk.pth" in one_line_error(capsys)


def test_resume_with_another_batch_size_continues_after_the_same_images(shapes, tmp_path):
    work = tmp_path / "w"
    trainer = Trainer(tiny_train_cfg(shapes, work))  # 2 images per batch
    trainer.iter = trainer.epoch_iter = 2  # 4 images of epoch 1 seen
    trainer.save()
    resumed = Trainer(tiny_train_cfg(shapes, work, "data.train.batch_size=4"), resume=True)
    assert (resumed.epoch, resumed.iter, resumed.epoch_iter) == (0, 2, 1)
    assert (
        "was trained with 1 process(es) x 2 images per batch, this run has 1 x 4"
        in (work / "train.log").read_text()
    )
