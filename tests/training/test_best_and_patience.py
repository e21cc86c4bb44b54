"""best.pth follows the best val AP; train.patience stops a run that no longer improves; both
survive a resume."""

from __future__ import annotations

import pytest

from gfldet.core.checkpoint import load_checkpoint
from gfldet.training import trainer as trainer_module
from gfldet.training.run_logs import VAL_KEYS
from gfldet.training.trainer import Trainer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture
def val_ap(monkeypatch):
    """val_ap(*aps): evaluations during training score these APs in turn (and draw no
    curves)."""

    def set_aps(*aps: float) -> list[float]:
        queue = list(aps)

        def evaluate(model, loader, device, out_dir):
            ap = queue.pop(0)
            return {k: ap for k in VAL_KEYS}

        monkeypatch.setattr(trainer_module, "evaluate", evaluate)
        monkeypatch.setattr(Trainer, "_plot_curves", lambda self: None)  # matplotlib: seconds
        return queue

    return set_aps


def test_best_checkpoint_follows_the_best_val_ap(tiny_cfg, log_records, val_ap, tmp_path):
    work = tmp_path / "w"
    val_ap(0.1, 0.3, 0.2, 0.25)
    Trainer(tiny_cfg(work, "train.epochs=4", "train.eval_interval=1")).fit()
    # Linked to the epoch's checkpoint: the same file, no second copy written.
    assert (work / "best.pth").read_bytes() == (work / "epoch_2.pth").read_bytes()
    assert (work / "best.pth").stat().st_ino == (work / "epoch_2.pth").stat().st_ino
    val = [r for r in log_records(work) if "val" in r]
    assert [r["best"] for r in val] == [{"epoch": 1, "AP": 0.1}] + [{"epoch": 2, "AP": 0.3}] * 3
    text = (work / "train.log").read_text()
    assert text.splitlines()[-1].endswith("best val AP 0.3000 at epoch 2 (best.pth)")
    assert load_checkpoint(work / "latest.pth")["best"]["ap"] == 0.3


def test_best_checkpoint_between_epoch_checkpoints_is_written(tiny_cfg, val_ap, tmp_path):
    work = tmp_path / "w"
    val_ap(0.3, 0.2)  # the best after epoch 1, which checkpoint_interval 2 does not save
    Trainer(
        tiny_cfg(work, "train.epochs=2", "train.eval_interval=1", "train.checkpoint_interval=2")
    ).fit()
    assert not (work / "epoch_1.pth").exists()
    best = load_checkpoint(work / "best.pth")
    assert (best["epoch"], best["iter"]) == (1, 4)


def test_patience_stops_training_and_a_resume_remembers(tiny_cfg, log_records, val_ap, tmp_path):
    work = tmp_path / "w"
    val_ap(0.1, 0.3, 0.2, 0.25)
    trainer = Trainer(tiny_cfg(work, "train.epochs=6", "train.eval_interval=1", "train.patience=2"))
    trainer.fit()
    assert (trainer.epoch, trainer.iter) == (4, 16)  # two evaluations without a better AP
    latest = load_checkpoint(work / "latest.pth")
    assert latest["iter"] == 16 and (work / "epoch_4.pth").is_file()
    stop = [r for r in log_records(work) if "early_stop" in r]
    assert stop == [
        {"epoch": 4, "iter": 16, "early_stop": {"patience": 2, "best_epoch": 2, "best_AP": 0.3}}
    ]
    assert "early stop after epoch 4" in (work / "train.log").read_text()

    # Resumed as it was, it stays stopped; with more patience it trains on.
    again = Trainer(
        tiny_cfg(work, "train.epochs=6", "train.eval_interval=1", "train.patience=2"), resume=True
    )
    again.fit()
    assert again.iter == 16
    val_ap(0.5, 0.4)
    more = Trainer(
        tiny_cfg(work, "train.epochs=6", "train.eval_interval=1", "train.patience=3"), resume=True
    )
    more.fit()
    assert more.epoch == 6 and more.best.ap == 0.5 and more.best.epoch == 5
    assert load_checkpoint(work / "best.pth")["epoch"] == 5


def test_resume_counts_the_evaluation_after_its_checkpoint(tiny_cfg, val_ap, tmp_path):
    work = tmp_path / "w"
    val_ap(0.3, 0.1, 0.2)
    Trainer(tiny_cfg(work, "train.epochs=3", "train.eval_interval=1")).fit()
    # epoch_2.pth was saved before epoch 2's evaluation (AP 0.1): log.jsonl has it.
    assert load_checkpoint(work / "epoch_2.pth")["best"]["stale"] == 0
    val_ap(0.25)
    resumed = Trainer(
        tiny_cfg(work, "train.epochs=3", "train.eval_interval=1"), resume=work / "epoch_2.pth"
    )
    assert (resumed.best.ap, resumed.best.epoch, resumed.best.stale) == (0.3, 1, 1)
    resumed.fit()
    assert resumed.best.stale == 2 and load_checkpoint(work / "best.pth")["epoch"] == 1
