"""log.jsonl and what is made of it (training curves, results.csv, TensorBoard events): a
damaged line is skipped with a warning naming it, never a traceback."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest

from gfldet.cli import main
from gfldet.data.synth import shapes_overrides
from gfldet.training.curves import read_log, write_training_curves
from gfldet.training.run_logs import write_results_csv
from tests.helpers import DEMO, TINY_RUN

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = [
    {"epoch": 1, "iter": 1, "lr": 0.01, "loss": 2.0, "loss_qfl": 1.0, "loss_dfl": 1.0},
    {"epoch": 1, "iter": 2, "lr": 0.01, "loss": 1.5, "loss_qfl": 0.7, "loss_dfl": 0.8},
    {"epoch": 1, "iter": 2, "lr": 0.01, "epoch_mean": {"loss": 1.7}},
    {"epoch": 1, "iter": 2, "val": {"AP": 0.1, "AP50": 0.2}},
]
BAD = [
    '{"epoch": 1, "iter": 1e400, "loss": 1.0}',
    '{"epoch": 1, "iter": "three", "loss": 1.0}',
    '{"epoch": NaN, "iter": 3, "val": {"AP": 0.3}}',
    '{"epoch": [1], "iter": 3, "epoch_mean": {"loss": 1.0}}',
    '{"iter": 4, "val": {"AP": 0.4}}',
    '{"epoch": 1, "iter": -1e400, "loss": 1.0}',
    "[1, 2]",
    '{"epoch": 1, "iter": 5, "lo',
]


@pytest.fixture
def damaged_log(tmp_path):
    lines = [json.dumps(r) for r in GOOD[:2]] + BAD + [json.dumps(r) for r in GOOD[2:]]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_curves_skip_bad_lines_with_a_warning_naming_them(damaged_log, capsys):
    with pytest.warns(UserWarning, match=r"skipped 8 unreadable line\(s\): 3, 4, 5") as w:
        train, val = read_log(damaged_log / "log.jsonl")
    assert [r["iter"] for r in train] == [1, 2] and [r["epoch"] for r in val] == [1]
    assert "log.jsonl" in str(w[0].message)
    with pytest.warns(UserWarning, match="unreadable"):
        assert main(["curves", str(damaged_log)]) == 0
    assert (damaged_log / "curves.png").is_file()


def test_results_csv_skips_bad_lines(damaged_log):
    rows = write_results_csv(damaged_log).read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,2,0.01,")


PNG = b"\x89PNG\r\n\x1a\n"


def _write_log(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")


@pytest.mark.slow
def test_results_csv_and_tensorboard_events_are_written(shapes, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    sets = [
        *TINY_RUN,
        *shapes_overrides(shapes),
        "train.max_iters=null",
        "train.epochs=2",
        "train.eval_interval=1",
        "train.tensorboard=true",
    ]
    assert main(["train", "--config", DEMO, "--set", *sets, f"work_dir={work}"]) == 0
    rows = list(csv.DictReader((work / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["iter"] for r in rows] == ["4", "8"]
    steps = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    first = [s["loss_qfl"] for s in steps if "loss" in s and s["epoch"] == 1]
    assert float(rows[0]["loss_qfl"]) == pytest.approx(sum(first) / len(first), abs=1e-3)
    assert all(0 <= float(r["AP"]) <= 1 for r in rows)
    events = list((work / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    # Without the package: one line saying what to install, before anything is written.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    other = tmp_path / "w2"
    assert main(["train", "--config", DEMO, "--set", *sets, f"work_dir={other}"]) == 2
    err = capsys.readouterr().err
    assert "pip install tensorboard" in err and not other.exists()
    shutil.rmtree(work)


def test_training_curves_from_a_resumed_and_cut_log(tmp_path):
    lines = [
        {
            "epoch": 1,
            "iter": i,
            "lr": 0.01 * i / 20,
            "loss": 3.0 / i,
            "loss_qfl": 1.0 / i,
            "loss_giou": 1.5 / i,
            "loss_dfl": 0.5 / i,
            "time": 1.0,
        }
        for i in (1, 10, 20)
    ]
    lines.append({"epoch": 1, "iter": 20, "val": {"AP": 0.1, "AP50": 0.2, "AP75": None}})
    # Resumed from iteration 10: iteration 20 is logged again and wins.
    lines.append(
        {
            "epoch": 2,
            "iter": 20,
            "lr": 0.01,
            "loss": 9.0,
            "loss_qfl": 3.0,
            "loss_giou": 3.0,
            "loss_dfl": 3.0,
            "time": 1.0,
        }
    )
    lines.append('{"epoch": 2, "iter": 3')  # cut by a crash
    lines.append({"epoch": 2, "iter": 40, "val": {"AP": 0.3, "AP50": 0.5, "AP75": 0.2}})
    _write_log(tmp_path / "log.jsonl", lines)
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        train, val = read_log(tmp_path / "log.jsonl")
    assert [r["iter"] for r in train] == [1, 10, 20] and train[-1]["loss"] == 9.0
    assert [r["val"]["AP"] for r in val] == [0.1, 0.3]
    with pytest.warns(UserWarning):
        out = write_training_curves(tmp_path)
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*tmp"))

    _write_log(tmp_path / "log.jsonl", [{"epoch": 1, "iter": 1, "lr": 0.0, "loss": 1.0}])
    assert write_training_curves(tmp_path, tmp_path / "c2.png").read_bytes()[:8] == PNG
    (tmp_path / "curves.png").unlink()
    assert main(["curves", str(tmp_path)]) == 0 and (tmp_path / "curves.png").is_file()
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="no training or validation records"):
        write_training_curves(tmp_path)
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        write_training_curves(tmp_path / "nowhere")
    assert main(["curves", str(tmp_path / "nowhere")]) == 2
