"""End to end through the command line: train -> eval -> infer (and export), for GFL, GFLv2
and images of extreme aspect ratio."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfldet.cli import main
from gfldet.core.checkpoint import load_checkpoint
from gfldet.data.synth import shapes_overrides, write_shapes_dataset
from tests.helpers import CATS_AB, DEMO, REPO, TINY_MODEL, write_coco_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny shapes dataset and the --set items that point a small model at it."""
    root = tmp_path_factory.mktemp("e2e")
    paths = write_shapes_dataset(
        root / "shapes", num_train=8, num_val=4, img_size=96, max_size=48, max_objects=4
    )
    sets = [
        *shapes_overrides(paths),
        "data.train.img_scale=[96,96]",
        "data.val.img_scale=[96,96]",
        "data.train.batch_size=2",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        *TINY_MODEL,
        "model.test.score_thr=0.001",  # an untrained model scores ~0.01: keep its detections
        "train.epochs=2",
        "train.max_iters=3",
        "train.log_interval=1",
        "train.warmup_iters=2",
    ]
    return root, paths, sets


@pytest.mark.slow
def test_extreme_aspect_ratio_trains_evaluates_and_infers(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(imgs / "strip.jpg"), rng.integers(0, 255, (10, 10000, 3), dtype=np.uint8))
    cv2.imwrite(str(imgs / "box.jpg"), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    images = [
        {"id": 1, "file_name": "strip.jpg", "width": 10000, "height": 10},
        {"id": 2, "file_name": "box.jpg", "width": 80, "height": 60},
    ]
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [100, 1, 4000, 8],
            "area": 3.2e4,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 2,
            "category_id": 1,
            "bbox": [10, 10, 30, 30],
            "area": 900.0,
            "iscrowd": 0,
        },
    ]
    ann = write_coco_file(tmp_path / "a.json", images, anns, cats=CATS_AB[:1])
    work = tmp_path / "w"
    sets = [
        f"work_dir={work}",
        f"data.train.ann_file={ann}",
        f"data.train.img_dir={imgs}",
        f"data.val.ann_file={ann}",
        f"data.val.img_dir={imgs}",
        "data.train.img_scale=[128,128]",
        "data.val.img_scale=[128,128]",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        "data.train.batch_size=2",
        *TINY_MODEL,
        "train.epochs=1",
        "train.warmup_iters=1",
    ]
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    assert (work / "metrics.json").is_file()
    assert (
        main(
            [
                "infer",
                "--config",
                DEMO,
                "--checkpoint",
                str(work / "latest.pth"),
                str(imgs),
                "--out-dir",
                str(tmp_path / "out"),
                "--set",
                *sets,
            ]
        )
        == 0
    )
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 2
    capsys.readouterr()


@pytest.mark.slow
def test_train_eval_infer_and_resume_a_finished_run(tiny, capsys):
    root, paths, sets = tiny
    work = root / "work"
    assert main(["train", "--config", DEMO, "--work-dir", str(work), "--set", *sets]) == 0
    for name in (
        "latest.pth",
        "epoch_1.pth",
        "config.yaml",
        "log.jsonl",
        "train.log",
        "metrics.json",
        "detections.json",
    ):
        assert (work / name).is_file(), name
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == [1, 2, 3]
    assert all(set(r) >= {"loss_qfl", "loss_giou", "loss_dfl", "lr"} for r in steps)
    assert any("val" in r for r in records)
    state = torch.load(work / "latest.pth", weights_only=True)
    assert state["iter"] == 3 and state["cat_ids"] == [1, 2, 3, 5, 7, 9]
    assert state["classes"][0] == "circle"

    out = root / "eval"
    ckpt = str(work / "latest.pth")
    assert (
        main(
            ["eval", "--config", DEMO, "--checkpoint", ckpt, "--out-dir", str(out), "--set", *sets]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in metrics.items() if k.startswith("AP"))
    printed = capsys.readouterr().out
    assert "Average Precision" in printed and "circle" in printed and "Spearman" in printed
    assert set(metrics["quality"]) >= {"pearson", "spearman", "num_matched", "reliability"}
    assert set(metrics["per_class"]["circle"]) == {"AP", "AP50", "recall", "num_gt", "num_det"}
    for name in ("per_class.csv", "calibration.png", "pr_curves_1.png"):
        assert (out / name).is_file(), name
    dets = json.loads((out / "detections.json").read_text())
    val_ids = {im["id"] for im in json.loads(paths["val_ann"].read_text())["images"]}
    assert all(d["image_id"] in val_ids and d["category_id"] in {1, 2, 3, 5, 7, 9} for d in dets)

    infer_out = root / "infer"
    pattern = str(paths["val_img_dir"] / "*.jpg")
    assert (
        main(
            [
                "infer",
                "--config",
                DEMO,
                "--checkpoint",
                ckpt,
                pattern,
                "--out-dir",
                str(infer_out),
                "--score-thr",
                "0.0",
                "--show-uncertainty",
                "--set",
                *sets,
            ]
        )
        == 0
    )
    preds = json.loads((infer_out / "predictions.json").read_text())
    assert len(preds) == 4 and {p["width"] for p in preds} == {96}
    assert sum(len(p["detections"]) for p in preds) > 0
    for p in preds:
        assert (infer_out / (Path(p["file"]).stem + ".jpg")).is_file()
        for d in p["detections"]:
            x1, y1, x2, y2 = d["bbox_xyxy"]
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 96
            assert d["category_name"] in state["classes"]
            # Edge spreads: std in pixels, at most the spread of a uniform distribution over
            # 17 bins (sqrt(24) bins) at the largest stride (128); top-2 mass >= 2/17.
            assert len(d["edge_std"]) == 4 and all(0 <= v <= 4.9 * 128 for v in d["edge_std"])
            assert all(2 / 17 - 1e-3 <= v <= 1 + 1e-3 for v in d["edge_top2"])

    # Resuming a finished run trains nothing more and keeps the iteration count.
    assert (
        main(
            [
                "train",
                "--config",
                DEMO,
                "--work-dir",
                str(work),
                "--resume",
                "--set",
                *sets[:-3],
                "train.epochs=1",
            ]
        )
        == 0
    )
    assert torch.load(work / "latest.pth", weights_only=True)["iter"] == 3


@pytest.mark.slow
def test_gflv2_trains_evaluates_infers_and_exports(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = [
        f"work_dir={work}",
        "model.head.quality=dgqp",
        *TINY_MODEL,
        "model.test.score_thr=0.001",
        *shapes_overrides(shapes),
        "data.train.img_scale=[64,64]",
        "data.val.img_scale=[64,64]",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        "train.max_iters=2",
    ]
    demo = str(REPO / "configs" / "shapes_demo.yaml")
    assert main(["train", "--config", demo, "--set", *sets]) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert "pearson" in metrics["quality"]
    ckpt = str(work / "latest.pth")
    # The checkpoint holds a trained DGQP: its quality predictor, and no centerness branch.
    weights = load_checkpoint(ckpt)["model"]
    assert {k for k in weights if k.startswith("head.reg_conf.")} == {
        f"head.reg_conf.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    assert not any(k.startswith("head.gfl_quality") for k in weights)
    out = tmp_path / "infer"
    assert (
        main(
            [
                "infer",
                "--config",
                demo,
                "--checkpoint",
                ckpt,
                str(shapes["val_img_dir"]),
                "--out-dir",
                str(out),
                "--score-thr",
                "0",
                "--set",
                *sets,
            ]
        )
        == 0
    )
    preds = json.loads((out / "predictions.json").read_text())
    detections = [d for p in preds for d in p["detections"]]
    assert len(preds) == 3 and detections and all("edge_std" in d for d in detections)
    for nms in ([], ["--nms"]):
        assert (
            main(
                [
                    "export",
                    "--config",
                    demo,
                    "--checkpoint",
                    ckpt,
                    "--out",
                    str(tmp_path / "m.onnx"),
                    *nms,
                    "--set",
                    *sets,
                ]
            )
            == 0
        )
        assert "onnxruntime vs PyTorch" in capsys.readouterr().out
