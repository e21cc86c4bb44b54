"""log.jsonl read back (curves, results.csv, resume): a damaged line is skipped with a warning
naming it, never a traceback."""

from __future__ import annotations

import json

import pytest

from gfldet.cli import main
from gfldet.training.curves import read_log
from gfldet.training.run_logs import write_results_csv

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
