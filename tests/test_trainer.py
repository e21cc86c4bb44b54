"""Trainer: exact resume after SIGKILL, SIGINT/SIGTERM, NaN losses, keep_last, EMA, AMP, clipping.

Tiny model (base width 8, FPN 16, one conv) on 8 generated 64x64 images, CPU only.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfldet.cli import main
from gfldet.config import load_config
from gfldet.core.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gfldet.data.synth import shapes_overrides
from gfldet.inference.predictor import load_trained_model
from gfldet.training.trainer import Trainer, TrainingInterrupted, train, unwrap

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "shapes_demo.yaml")


def tiny_sets(paths: dict, work: Path, *extra: str) -> list[str]:
    """--set items: a tiny model on the tiny dataset, 4 iterations per epoch, no evaluation."""
    return [
        f"work_dir={work}",
        *shapes_overrides(paths),
        "data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]",
        "data.train.ms_short_range=[48,64]", "data.train.batch_size=2",
        "data.train.num_workers=0", "data.val.num_workers=0",
        "model.backbone.base_width=8", "model.neck.out_channels=16", "model.head.feat_channels=16",
        "model.head.stacked_convs=1", "model.head.num_groups=4", "model.test.score_thr=0.001",
        "train.epochs=1", "train.log_interval=1", "train.warmup_iters=2", "train.eval_interval=0",
        *extra,
    ]  # fmt: skip


def tiny_cfg(paths: dict, work: Path, *extra: str) -> dict:
    return load_config(DEMO, tiny_sets(paths, work, *extra))


def log_records(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


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
def test_sigkill_then_resume_gives_the_same_weights(shapes, tmp_path, restore_determinism):
    common = ("train.epochs=2", "train.deterministic=true", "train.ema=true",
              "train.ema_decay=0.9", "train.checkpoint_interval_iters=3")  # fmt: skip
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # The killed run loads images in a worker process; the others in the main process: the
    # augmentation must not depend on it.
    sets = tiny_sets(shapes, killed, *common, "data.train.num_workers=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process (bitwise comparison)
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, DEMO, "8", *sets], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Killed in iteration 8 of 8: the last checkpoint is the mid-epoch one of iteration 6.
    state = load_checkpoint(killed / "latest.pth")
    assert (state["epoch"], state["iter"], state["epoch_iter"]) == (1, 6, 2)
    assert [r["iter"] for r in log_records(killed) if "loss" in r] == list(range(1, 8))

    # Resume with the command a user would type (workers off this time).
    args = ["train", "--config", str(killed / "config.yaml"), "--resume",
            "--set", "data.train.num_workers=0"]  # fmt: skip
    assert main(args) == 0
    train(tiny_cfg(shapes, whole, *common))

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
    records = [r for r in log_records(killed) if "loss" in r]
    assert [r["iter"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] == [r for r in log_records(whole) if "loss" in r][-1]["loss"]


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
        Signalled(tiny_cfg(shapes, work, "train.epochs=2")).fit()
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
    trainer = Trainer(tiny_cfg(shapes, work, "train.checkpoint_interval_iters=2"))
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
    assert [r["iter"] for r in log_records(work) if "loss" in r] == [1, 2]


@pytest.mark.slow
def test_keep_last_and_resume_from_an_epoch_file(shapes, tmp_path):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, "train.epochs=3", "train.keep_last=2",
                     "data.train.batch_size=4")  # fmt: skip
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    names = sorted(p.name for p in work.iterdir() if p.suffix == ".pth")
    assert names == ["epoch_2.pth", "epoch_3.pth", "latest.pth"]
    assert not list(work.glob(".*tmp"))
    final = load_checkpoint(work / "latest.pth")
    assert (work / "latest.pth").read_bytes() == (work / "epoch_3.pth").read_bytes()

    # --resume PATH: epoch 3 again from the end of epoch 2 gives the same weights.
    assert main(["train", "--config", DEMO, "--resume", str(work / "epoch_2.pth"), "--set",
                 *sets]) == 0  # fmt: skip
    again = load_checkpoint(work / "latest.pth")
    assert again["iter"] == final["iter"] == 6
    for name, value in final["model"].items():
        assert torch.equal(again["model"][name], value), name


@pytest.mark.slow
def test_ema_is_averaged_saved_and_preferred(shapes, tmp_path):
    work = tmp_path / "w"
    cfg = tiny_cfg(shapes, work, "train.ema=true", "train.ema_decay=0.5", "train.max_iters=2")
    seen: list[dict] = []

    class Recording(Trainer):
        def train_step(self, *args):
            out = super().train_step(*args)
            seen.append({k: v.clone() for k, v in unwrap(self.model).state_dict().items()})
            return out

    Recording(cfg).fit()
    state = load_checkpoint(work / "latest.pth")
    assert state["ema_updates"] == 2
    name = "head.gfl_cls.weight"
    # The first update copies the weights; then ema = 0.5 * ema + 0.5 * weights.
    torch.testing.assert_close(state["ema"][name], 0.5 * seen[0][name] + 0.5 * seen[1][name])
    assert not torch.equal(state["ema"][name], state["model"][name])
    # (That evaluation during training uses the EMA weights is checked in test_distributed.)

    model, _ = load_trained_model(cfg, work / "latest.pth", torch.device("cpu"))
    assert torch.equal(model.state_dict()[name], state["ema"][name])
    model, _ = load_trained_model(cfg, work / "latest.pth", torch.device("cpu"), use_ema=False)
    assert torch.equal(model.state_dict()[name], state["model"][name])


@pytest.mark.slow
def test_amp_bf16_on_cpu_and_gradient_clipping(shapes, tmp_path):
    cfg = tiny_cfg(shapes, tmp_path / "w", "train.amp=true", "train.grad_clip=0.001",
                   "train.max_iters=2")  # fmt: skip
    trainer = Trainer(cfg)
    model = unwrap(trainer.model)
    dtypes, norms = [], []
    model.backbone.conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    assert dtypes == [torch.bfloat16] * 2
    assert len(norms) == 2 and all(n <= 0.001 * 1.001 for n in norms)
    state = load_checkpoint(tmp_path / "w" / "latest.pth")
    assert state["scaler"] == {}  # bf16 needs no loss scaling
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())


def test_resume_errors_are_clear(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work)
    assert main(["train", "--config", DEMO, "--resume", "--set", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint to resume from" in err and "latest.pth" in err
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    assert main(["train", "--config", DEMO, "--resume", str(junk), "--set", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "junk.pth" in err


def test_unusable_work_dir_is_a_one_line_error(shapes, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--config", DEMO, "--set", *tiny_sets(shapes, blocker / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(blocker / "w") in err


def test_resume_with_another_batch_size_continues_after_the_same_images(shapes, tmp_path):
    work = tmp_path / "w"
    trainer = Trainer(tiny_cfg(shapes, work))  # 2 images per batch
    trainer.iter = trainer.epoch_iter = 2  # 4 images of epoch 1 seen
    trainer.save()
    resumed = Trainer(tiny_cfg(shapes, work, "data.train.batch_size=4"), resume=True)
    assert (resumed.epoch, resumed.iter, resumed.epoch_iter) == (0, 2, 1)
    assert "was trained with 1 process(es) x 2 images per batch, this run has 1 x 4" in (
        work / "train.log").read_text()  # fmt: skip


def test_checkpoint_helpers(tmp_path):
    for n in (1, 2, 3, 10):
        save_checkpoint({"model": {"w": torch.full((1,), float(n))}}, tmp_path / f"epoch_{n}.pth")
    link_checkpoint(tmp_path / "epoch_10.pth", tmp_path / "latest.pth")
    (tmp_path / "epoch_x.pth").write_text("not ours")
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["epoch_1.pth", "epoch_2.pth"]  # numeric order
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_10.pth", "epoch_3.pth", "epoch_x.pth", "latest.pth"]  # fmt: skip
    (tmp_path / "epoch_10.pth").unlink()  # latest.pth is a file of its own
    assert load_checkpoint(tmp_path / "latest.pth")["model"]["w"].item() == 10
    assert prune_checkpoints(tmp_path, 0) == []

    import random

    import numpy as np

    state = rng_state()
    save_checkpoint({"model": {}, "rng": [state]}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"][0])  # through weights_only
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
