"""benchmarks.finetune_demo (the docs' fine-tuning figures) at smoke size."""

from __future__ import annotations

import json

import pytest

from benchmarks import finetune_demo as demo


@pytest.mark.slow
def test_the_three_runs_at_smoke_size_carry_classes_by_name(tmp_path, capsys):
    """The three runs, the same iterations for both B runs, and "circle" carried over by name."""
    out = tmp_path / "ft.json"
    assert demo.main(["--quick", "--work-dir", str(tmp_path / "ft"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    runs = res["runs"]
    assert set(runs) == {"A from scratch", "B from scratch", "B fine-tuned from A"}
    assert runs["B from scratch"]["iterations"] == runs["B fine-tuned from A"]["iterations"] > 0
    assert runs["B fine-tuned from A"]["init_from"].endswith("latest.pth")
    assert all(0 <= r["AP"] <= 1 for r in runs.values())  # (a NaN AP fails too)
    log = (tmp_path / "ft" / "b_finetune" / "train.log").read_text()
    assert "circle (3) <- circle (0)" in log
    capsys.readouterr()
