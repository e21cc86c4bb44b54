"""The trainer's parts on their own: a trainer for the step alone (benchmarks), the run
directory's rules and the checkpointer."""

from __future__ import annotations

import pytest
import torch

from gfldet.core.checkpoint import load_checkpoint
from gfldet.model.build import build_model
from gfldet.training.checkpointer import BestAP, Checkpointer
from gfldet.training.run_dir import PREVIOUS, RunDir
from gfldet.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_trainer_for_the_step_alone_needs_no_data_or_work_dir(tiny_cfg, tmp_path, one_thread):
    cfg = tiny_cfg(tmp_path / "w", "train.ema=true")
    cfg.model.num_classes = 3
    torch.manual_seed(0)
    trainer = Trainer.for_model(cfg, build_model(cfg.model), torch.device("cpu"), batch_size=4)
    assert trainer.base_lr == cfg.train.lr * 4 / cfg.train.base_batch_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=gen)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    targets = [
        {"boxes": box, "labels": torch.tensor([i % 3]), "img_size": (64, 64), "pad_size": (64, 64)}
        for i in range(4)
    ]
    before = trainer.model.head.gfl_cls.weight.detach().clone()
    losses = trainer.train_step(images, targets, trainer.base_lr)
    assert {"loss_qfl", "loss_dfl"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert not torch.equal(before, trainer.model.head.gfl_cls.weight)
    assert int(trainer.ema.n_averaged) == 1
    assert not (tmp_path / "w").exists()  # nothing written


def test_run_dir_moves_an_old_run_aside_and_finds_its_files(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "latest.pth").write_bytes(b"old")
    (work / "notes.txt").write_text("the user's")
    run = RunDir(work)
    run.claim(new_run=True, overwrite=True)
    (moved,) = (work / PREVIOUS).iterdir()
    assert run.moved_to == moved and (moved / "latest.pth").read_bytes() == b"old"
    assert run.moved(work / "latest.pth") == moved / "latest.pth"
    assert run.moved(work / "notes.txt") is None and (work / "notes.txt").is_file()
    assert run.moved(tmp_path / "latest.pth") is None


def test_checkpointer_links_best_to_latest_when_it_holds_the_iteration(tmp_path):
    run = RunDir(tmp_path)
    ckpt = Checkpointer(run, torch.device("cpu"), keep_last=1)
    calls = []

    def state(rng):
        calls.append(len(rng))
        return {"model": {"w": torch.full((1,), float(len(calls)))}, "rng": rng}

    ckpt.save(state, 4, "epoch_1.pth", 1)
    ckpt.save(state, 8, "epoch_2.pth", 2)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_2.pth", "latest.pth"]
    ckpt.save_best(state, 8)  # a link: no state built
    assert (
        len(calls) == 2
        and (tmp_path / "best.pth").stat().st_ino == (tmp_path / "epoch_2.pth").stat().st_ino
    )
    ckpt.save_best(state, 9)  # not saved yet: written
    assert len(calls) == 3 and load_checkpoint(tmp_path / "best.pth")["model"]["w"].item() == 3
    assert ckpt.last == tmp_path / "latest.pth" and ckpt.saved_iter == 8


def test_best_ap_counts_evaluations_and_replays_the_log():
    best = BestAP()
    assert best.update(None, 1, 4) is False and best.stale == 1  # no AP: not a best
    assert best.update(0.2, 2, 8) and best.update(float("nan"), 3, 12) is False
    assert (best.ap, best.epoch, best.stale) == (0.2, 2, 1) and best.exhausted(1)
    assert not best.exhausted(0) and not best.exhausted(2)
    saved = BestAP.from_state(best.state_dict())
    saved.replay(
        [
            {"iter": 12, "epoch": 3, "val": {"AP": 0.9}},  # counted already
            {"iter": 16, "epoch": 4, "val": {"AP": 0.5}},
            {"iter": 20, "epoch": 5, "val": {"AP": 0.9}},
        ],
        up_to=16,
    )
    assert (saved.ap, saved.epoch, saved.stale, saved.evaluated_iter) == (0.5, 4, 0, 16)
    assert BestAP.from_state({"junk": 1}) == BestAP() and BestAP.from_state(None) == BestAP()
