"""Seeing what GFL learns: edge uncertainty, score calibration statistics, training curves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gfldet.cli import main
from gfldet.core.draw import draw_detections, draw_edge_bands
from gfldet.core.records import prediction_record
from gfldet.evaluation.evaluator import _ranks, quality_calibration
from gfldet.inference.uncertainty import edge_uncertainty
from gfldet.training.curves import read_log, write_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _dist(*mass: tuple[int, float], n: int = 4) -> list[float]:
    p = [0.0] * (n + 1)
    for i, m in mass:
        p[i] = m
    return p


def test_edge_uncertainty_by_hand():
    dists = torch.tensor([
        # left: all mass on bin 3 -> std 0, top-2 mass 1
        # top: half on bins 2 and 3 -> mean 2.5, var 0.25, std 0.5 bins
        # right: uniform over 0..4 -> var ((n+1)^2 - 1) / 12 = 2, top-2 mass 0.4
        # bottom: 0.5 at bins 0 and 4 -> mean 2, var 4, std 2 bins, top-2 mass 1
        [_dist((3, 1.0)), _dist((2, 0.5), (3, 0.5)), [0.2] * 5, _dist((0, 0.5), (4, 0.5))],
    ])  # fmt: skip
    out = edge_uncertainty(dists, torch.tensor([8.0]))
    torch.testing.assert_close(out["edge_std"], torch.tensor([[0.0, 4.0, 8 * math.sqrt(2), 16.0]]))
    torch.testing.assert_close(out["edge_top2"], torch.tensor([[1.0, 1.0, 0.4, 1.0]]))
    # Bins of width 0.5 halve every spread; the resize scale (w 2, h 4) maps to original pixels.
    half = edge_uncertainty(dists, torch.tensor([8.0]), bin_width=0.5)["edge_std"]
    torch.testing.assert_close(half, out["edge_std"] / 2)
    orig = edge_uncertainty(dists, torch.tensor([8.0]), scale=(2.0, 4.0))["edge_std"]
    torch.testing.assert_close(orig, out["edge_std"] / torch.tensor([2.0, 4.0, 2.0, 4.0]))
    assert edge_uncertainty(torch.zeros(0, 4, 17), torch.zeros(0))["edge_std"].shape == (0, 4)
    with pytest.raises(ValueError, match="strides"):
        edge_uncertainty(dists, torch.tensor([8.0, 16.0]))
    with pytest.raises(ValueError, match="dists"):
        edge_uncertainty(dists[0], torch.tensor([8.0]))


def test_spearman_ranks_and_calibration():
    assert _ranks(np.array([3.0, 1.0, 2.0, 2.0])).tolist() == [3.0, 0.0, 1.5, 1.5]
    scores = np.array([0.1, 0.35, 0.5, 0.9])
    ious = np.array([0.55, 0.9, 0.7, 0.95])
    q = quality_calibration(scores, ious)
    s, i = scores - scores.mean(), ious - ious.mean()
    assert q["pearson"] == pytest.approx((s * i).sum() / math.sqrt((s * s).sum() * (i * i).sum()))
    # Ranks 0,1,2,3 vs 0,2,1,3: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert q["spearman"] == pytest.approx(0.8)
    assert q["num_matched"] == 4
    bins = {(b["score_lo"], b["score_hi"]): b for b in q["reliability"]}
    assert bins[(0.3, 0.4)]["count"] == 1 and bins[(0.3, 0.4)]["mean_iou"] == pytest.approx(0.9)
    assert bins[(0.9, 1.0)]["mean_score"] == pytest.approx(0.9)  # 0.9 falls in the last bin
    assert sum(b["count"] for b in q["reliability"]) == 4
    assert math.isnan(bins[(0.0, 0.1)]["mean_iou"])
    empty = quality_calibration(np.zeros(0), np.zeros(0))
    assert math.isnan(empty["pearson"]) and math.isnan(empty["spearman"])
    assert math.isnan(quality_calibration(np.ones(3), ious[:3])["pearson"])  # no spread


def _write_log(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")


def test_training_curves_from_log(tmp_path):
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
    lines.append({"epoch": 2, "iter": 20, "lr": 0.01, "loss": 9.0, "loss_qfl": 3.0,
                  "loss_giou": 3.0, "loss_dfl": 3.0, "time": 1.0})  # fmt: skip
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


def test_edge_bands_and_records():
    img = np.full((100, 120, 3), 255, np.uint8)
    boxes = torch.tensor([[30.0, 20.0, 90.0, 80.0]])
    scores, labels = torch.tensor([0.9]), torch.tensor([1])
    narrow = draw_edge_bands(img, boxes, scores, labels, torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
    wide = draw_edge_bands(img, boxes, scores, labels, torch.tensor([[8.0, 1.0, 1.0, 1.0]]))
    changed = lambda out: (out != img).any(-1)  # noqa: E731
    assert changed(wide).sum() > changed(narrow).sum()
    assert changed(wide)[50, 24] and not changed(narrow)[50, 24]  # 6 px left of the left edge
    assert not changed(wide)[50, 60]  # the box interior stays clear
    assert not changed(draw_edge_bands(img, boxes, torch.tensor([0.1]), labels, torch.ones(1, 4)))[
        50
    ].any()  # below score_thr
    with pytest.raises(ValueError, match="rows"):
        draw_edge_bands(img, boxes, scores, labels, torch.ones(2, 4))
    drawn = draw_detections(img, boxes, scores, labels, ["a", "b"], edge_std=torch.ones(1, 4) * 5)
    plain = draw_detections(img, boxes, scores, labels, ["a", "b"])
    assert changed(drawn).sum() > changed(plain).sum()

    det = {"boxes": boxes, "scores": scores, "labels": labels,
           "edge_std": torch.tensor([[1.23456, 2.0, 3.0, 4.0]]),
           "edge_top2": torch.tensor([[0.9, 0.8, 0.7, 0.61234]])}  # fmt: skip
    rec = prediction_record("a.jpg", (100, 120, 3), det, [4, 7], ["a", "b"])
    d = rec["detections"][0]
    assert d["category_id"] == 7 and d["edge_std"] == [1.235, 2.0, 3.0, 4.0]
    assert d["edge_top2"] == [0.9, 0.8, 0.7, 0.612]
