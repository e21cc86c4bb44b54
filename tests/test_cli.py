"""End to end through the command line: synth data -> train -> eval -> infer, and CLI misuse."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfldet.cli import main
from gfldet.data.synth import shapes_overrides, write_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "shapes_demo.yaml")


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
        "model.backbone.base_width=8",
        "model.neck.out_channels=16",
        "model.head.feat_channels=16",
        "model.head.stacked_convs=1",
        "model.head.num_groups=4",
        "model.test.score_thr=0.001",  # an untrained model scores ~0.01: keep its detections
        "train.epochs=2",
        "train.max_iters=3",
        "train.log_interval=1",
        "train.warmup_iters=2",
    ]
    return root, paths, sets


def test_train_eval_infer(tiny, capsys):
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


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
    _, _, sets = tiny
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {DEMO}\ntrain:\n  epochz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.epochz" in err and "bad.yaml" in err

    assert main(["train", "--config", DEMO, "--set", "train.epochs=many"]) == 2
    assert "train.epochs" in capsys.readouterr().err

    assert (
        main(["eval", "--config", DEMO, "--checkpoint", str(tmp_path / "none.pth"), "--set", *sets])
        == 2
    )
    assert "none.pth" in capsys.readouterr().err

    assert main(["infer", "--config", DEMO, "--checkpoint", "x.pth", str(tmp_path / "*.png")]) == 2
    assert "no images matched" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "gfldet", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert "train" in out.stdout and "infer" in out.stdout
