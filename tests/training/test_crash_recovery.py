"""A run that dies keeps its work: exact resume after SIGKILL, SIGINT/SIGTERM save and print the
resume command, a NaN loss stops at the last good checkpoint, a full disk keeps the last
checkpoint whole."""

from __future__ import annotations

import errno
import os
import shlex
import signal

import pytest
import torch

from gfldet.cli import main
from gfldet.core import checkpoint as ckpt_module
from gfldet.core.checkpoint import (
    load_checkpoint,
)
from gfldet.training.trainer import Trainer, TrainingInterrupted, train, unwrap
from tests.helpers import (
    DEMO,
    one_line_error,
    read_log_records,
    tiny_train_cfg,
    tiny_train_sets,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


# A training run that dies by SIGKILL inside iteration KILL_AT, after that step's weight update:
# nothing gets a chance to clean up or save.
KILLED_RUN = r"""
import os, signal, sys
from gfldet.config import load_config
from gfldet.training.trainer import Trainer

class KilledMidRun(Trainer):
    def train_step(self, *args):
        out = super().train_step(*args)
        if self.iter + 1 == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

KilledMidRun(load_config(sys.argv[1], sys.argv[3:])).fit()
"""


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_resume(
    shapes, tmp_path, capsys, monkeypatch
):
    work = tmp_path / "w"
    sets = tiny_train_sets(shapes, work, "train.epochs=2")
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    assert main(["train", "--config", DEMO, "--set", *sets]) == 2
    err = one_line_error(capsys)
    assert "no space left" in err and "--resume" in err and str(work) in err
    assert load_checkpoint(work / "latest.pth")["epoch"] == 1  # the last good one, intact
    assert not list(work.glob(".*.tmp"))  # no half-written file left behind


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(
    shapes, tmp_path, restore_determinism, run_python
):
    common = (
        "train.epochs=2",
        "train.deterministic=true",
        "train.ema=true",
        "train.ema_decay=0.9",
        "train.checkpoint_interval_iters=3",
    )
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # The killed run loads images in a worker process; the others in the main process: the
    # augmentation must not depend on it.
    sets = tiny_train_sets(shapes, killed, *common, "data.train.num_workers=1")
    proc = run_python("-c", KILLED_RUN, DEMO, "8", *sets)  # one thread: as this process
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Killed in iteration 8 of 8: the last checkpoint is the mid-epoch one of iteration 6.
    state = load_checkpoint(killed / "latest.pth")
    assert (state["epoch"], state["iter"], state["epoch_iter"]) == (1, 6, 2)
    assert [r["iter"] for r in read_log_records(killed) if "loss" in r] == list(range(1, 8))

    # Resume with the command a user would type (workers off this time).
    args = [
        "train",
        "--config",
        str(killed / "config.yaml"),
        "--resume",
        "--set",
        "data.train.num_workers=0",
    ]
    assert main(args) == 0
    train(tiny_train_cfg(shapes, whole, *common))

    resumed = load_checkpoint(killed / "latest.pth")
    reference = load_checkpoint(whole / "latest.pth")
    assert resumed["iter"] == reference["iter"] == 8 and resumed["epoch"] == 2
    for key in ("model", "ema"):
        assert resumed[key].keys() == reference[key].keys()
        for name, value in reference[key].items():
            assert torch.equal(resumed[key][name], value), (key, name)
    # The optimizer's state too (SGD's momentum, AdamW's moments and step counts).
    opt, opt_resumed = reference["optimizer"]["state"], resumed["optimizer"]["state"]
    assert opt.keys() == opt_resumed.keys() and len(opt) > 0
    for i, per_param in opt.items():
        assert per_param.keys() == opt_resumed[i].keys()
        for name, value in per_param.items():
            assert torch.equal(torch.as_tensor(opt_resumed[i][name]), torch.as_tensor(value))
    # The log lost the records of the redone iteration 7 and has every iteration once.
    records = [r for r in read_log_records(killed) if "loss" in r]
    assert [r["iter"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] == [r for r in read_log_records(whole) if "loss" in r][-1]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_prints_the_resume_command(shapes, tmp_path, sig):
    work = tmp_path / "w"
    before = signal.getsignal(sig)

    class Signalled(Trainer):
        def train_step(self, *args):
            out = super().train_step(*args)
            if self.iter + 1 == 3:
                os.kill(os.getpid(), sig)  # arrives in the middle of iteration 3
            return out

    with pytest.raises(TrainingInterrupted) as info:
        Signalled(tiny_train_cfg(shapes, work, "train.epochs=2")).fit()
    assert signal.getsignal(sig) == before  # handlers are put back
    msg = str(info.value)
    assert f"stopped by {sig.name} after iteration 3 (epoch 1, 3/4 batches)" in msg
    state = load_checkpoint(work / "latest.pth")  # iteration 3 finished, then saved
    assert (state["epoch"], state["iter"], state["epoch_iter"]) == (0, 3, 3)
    command = msg.splitlines()[-1].strip()
    assert command == f"gfldet train --config {work / 'config.yaml'} --resume"
    assert main(shlex.split(command)[1:]) == 0  # the printed command finishes the run
    state = load_checkpoint(work / "latest.pth")
    assert (state["epoch"], state["iter"], state["epoch_iter"]) == (2, 8, 0)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    work = tmp_path / "w"
    trainer = Trainer(tiny_train_cfg(shapes, work, "train.checkpoint_interval_iters=2"))
    model = unwrap(trainer.model)
    losses = model.losses

    def nan_at_iteration_3(*args):
        out = losses(*args)
        if trainer.iter == 2:
            out["loss_dfl"] = out["loss_dfl"] * float("nan")
        return out

    model.losses = nan_at_iteration_3
    with pytest.raises(FloatingPointError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "iteration 3 (epoch 1)" in msg and "loss_dfl = nan" in msg
    assert "loss_qfl" not in msg and str(work / "latest.pth") in msg
    state = load_checkpoint(work / "latest.pth")
    assert state["iter"] == 2
    for name, value in model.named_parameters():  # the bad step changed no weight
        assert torch.equal(state["model"][name], value), name
        assert torch.isfinite(value).all()
    assert [r["iter"] for r in read_log_records(work) if "loss" in r] == [1, 2]
