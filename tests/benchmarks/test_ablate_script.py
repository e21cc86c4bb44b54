"""benchmarks.ablate: rows of the paper's tables trained to a tiny budget and evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_MODEL


@pytest.mark.slow
def test_two_rows_train_to_the_budget_and_are_evaluated(tmp_path, capsys):
    from benchmarks import ablate

    assert ablate.switches(REPO / "configs" / "ablations" / "t3_atss_baseline.yaml") == [
        'model.head.quality="centerness"',
        'model.head.box="dirac"',
        'model.loss.cls="focal"',
    ]
    sets = [
        "data.train.img_scale=[96,96]",
        "data.val.img_scale=[96,96]",
        "data.train.batch_size=2",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        *TINY_MODEL,
        "model.test.score_thr=0.001",
        "train.warmup_iters=2",
    ]
    out = tmp_path / "ablate.json"
    argv = [
        "t3_qfl_dfl",
        "t3_atss_baseline",
        "--data",
        str(tmp_path / "gen"),
        "--num-train",
        "8",
        "--num-val",
        "4",
        "--img-size",
        "96",
        "--max-iters",
        "2",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--set",
        *sets,
    ]
    assert ablate.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["results"]] == ["t3_qfl_dfl", "t3_atss_baseline"]
    assert result["max_iters"] == 2 and result["seed"] == 0
    for r in result["results"]:
        assert set(r["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert r["metrics"]["AP"] is not None and 0.0 <= r["metrics"]["AP"] <= 1.0
        log = (Path(r["work_dir"]) / "log.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in log if '"val"' in line]
        assert [e["iter"] for e in evals] == [2]  # the budget, then one evaluation
    first = [
        json.loads(line)
        for line in (tmp_path / "work" / "t3_atss_baseline" / "log.jsonl").read_text().splitlines()
    ][0]
    assert {"loss_focal", "loss_quality", "loss_giou"} <= set(first)
    printed = capsys.readouterr().out
    assert "t3_atss_baseline" in printed and "AP50" in printed
    with pytest.raises(SystemExit, match="unknown variant"):
        ablate.main(
            [
                "no_such_row",
                "--data",
                str(tmp_path / "gen"),
                "--num-train",
                "8",
                "--num-val",
                "4",
                "--img-size",
                "96",
            ]
        )
