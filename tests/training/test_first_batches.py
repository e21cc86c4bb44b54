"""train_batch0.jpg ...: the first training batches of a new run, drawn with their boxes as the
model gets them; drawing them changes nothing of the training."""

from __future__ import annotations

import cv2
import pytest
import torch

from gfldet.core.checkpoint import load_checkpoint
from gfldet.training.trainer import Trainer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def test_a_new_run_draws_its_first_batches_and_training_is_unchanged(tiny_cfg, tmp_path):
    work, plain = tmp_path / "w", tmp_path / "plain"
    Trainer(tiny_cfg(work, "train.max_iters=2")).fit()
    names = sorted(p.name for p in work.glob("train_batch*.jpg"))
    assert names == ["train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg"]
    image = cv2.imread(str(work / "train_batch0.jpg"))
    assert image is not None and image.shape[2] == 3

    class NoPreviews(Trainer):
        preview_batches = 0

    NoPreviews(tiny_cfg(plain, "train.max_iters=2")).fit()
    assert not list(plain.glob("train_batch*.jpg"))
    a, b = load_checkpoint(work / "latest.pth"), load_checkpoint(plain / "latest.pth")
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for x, y in zip(a["rng"][0].values(), b["rng"][0].values()):
        assert str(x) == str(y)


def test_a_resumed_run_does_not_draw_them_again(tiny_cfg, tmp_path):
    work = tmp_path / "w"
    Trainer(tiny_cfg(work, "train.max_iters=1")).fit()
    for p in work.glob("train_batch*.jpg"):
        p.unlink()
    Trainer(tiny_cfg(work, "train.max_iters=2"), resume=True).fit()
    assert not list(work.glob("train_batch*.jpg"))
