"""Regenerates the pictures of docs/insight.md from a trained work dir, in one command:

    python -m tools.make_doc_images --work-dir work_dirs/shapes_demo

Reads WORK_DIR/config.yaml, WORK_DIR/latest.pth and WORK_DIR/log.jsonl (what `gfldet train`
writes); runs `gfldet eval` and `gfldet infer --show-uncertainty` into a temporary folder and
writes to --out (default docs/images):

    insight_uncertainty.png   val images with a band of ±std across every box edge
    insight_edges.png         one detection's four edge distributions (the paper's Fig. 3)
    insight_calibration.png   reliability of scores as IoU predictors (`gfldet eval`)
    insight_pr_curves.png     precision-recall per class (`gfldet eval`, first class group)
    insight_curves.png        training curves (gfldet.training.curves)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gfldet.cli import main as gfldet_main
from gfldet.config import load_config
from gfldet.core.draw import draw_detections
from gfldet.data.coco import load_image
from gfldet.data.transforms import rescale_size
from gfldet.inference.predictor import Predictor
from gfldet.inference.uncertainty import edge_uncertainty
from gfldet.training.curves import write_training_curves

MAX_BYTES = 300 * 1024
EDGES = ("left", "top", "right", "bottom")


def _run(args: list[str]) -> None:
    if gfldet_main(args) != 0:
        sys.exit(f"gfldet {args[0]} failed")


def uncertainty_montage(infer_dir: Path, out: Path, cols: int) -> None:
    """The drawn val images of `gfldet infer`, side by side."""
    tiles = [cv2.imread(str(p)) for p in sorted(infer_dir.glob("*.jpg"))][:cols]
    h = min(t.shape[0] for t in tiles)
    tiles = [cv2.resize(t, (t.shape[1] * h // t.shape[0], h)) for t in tiles]
    cv2.imwrite(str(out), cv2.hconcat(tiles), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def edge_figure(
    cfg: Any, checkpoint: Path, images: list[Path], out: Path, score_thr: float
) -> None:
    """One detection (score >= score_thr) whose edges differ most in sharpness, over
    `images`: its crop with the ±std bands, and the distribution of each edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    predictor = Predictor(cfg, checkpoint, "cpu")
    model = predictor.model
    best = None
    for path in images:
        rgb = load_image(path)
        det = predictor([rgb])[0]
        keep = det["scores"] >= score_thr
        if not keep.any():
            continue
        strides = det["strides"]
        scale = rescale_size(rgb.shape[1], rgb.shape[0], predictor.transform.img_scale)[2:]
        unc = edge_uncertainty(det["dists"].cpu(), strides, model.head.box.bin_width, scale)
        top2 = unc["edge_top2"]
        contrast = (top2.amax(1) - top2.amin(1)).masked_fill(~keep, -1)
        k = int(contrast.argmax())
        if best is None or contrast[k] > best[0]:
            best = (float(contrast[k]), rgb, det, k, unc, int(strides[k]))
    if best is None:
        print(f"no detection with score >= {score_thr}: skipped {out}")
        return
    _, rgb, det, k, unc, stride = best
    one = slice(k, k + 1)
    boxes, scores, labels = det["boxes"][one], det["scores"][one], det["labels"][one]
    names, bands = predictor.class_names, unc["edge_std"][one]
    bgr = draw_detections(rgb[:, :, ::-1], boxes, scores, labels, names, 0.0, edge_std=bands)
    drawn = bgr[:, :, ::-1]
    x1, y1, x2, y2 = det["boxes"][k].tolist()
    pad = 0.5 * max(x2 - x1, y2 - y1)
    h, w = rgb.shape[:2]
    rows = slice(max(int(y1 - pad), 0), min(int(y2 + pad) + 1, h))
    cols = slice(max(int(x1 - pad), 0), min(int(x2 + pad) + 1, w))
    crop = drawn[rows, cols]

    fig = Figure(figsize=(12, 2.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5, width_ratios=[1.2, 1, 1, 1, 1])
    axes[0].imshow(crop)
    axes[0].set_title(f"stride {stride}, bands ±std", fontsize=9)
    axes[0].axis("off")
    probs = det["dists"][k].cpu().numpy()
    bins = np.arange(probs.shape[1]) * model.head.box.bin_width
    for i, ax in enumerate(axes[1:]):
        ax.bar(bins, probs[i], width=0.8 * model.head.box.bin_width, color="tab:blue")
        std, top2 = float(unc["edge_std"][k, i]), float(unc["edge_top2"][k, i])
        ax.set_title(f"{EDGES[i]}: std {std:.1f} px, top-2 {top2:.2f}", fontsize=8.5)
        ax.set(xlabel="distance (strides)", ylim=(0, 1))
    axes[1].set_ylabel("probability")
    fig.savefig(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m tools.make_doc_images",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--work-dir", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    p.add_argument("--images", type=int, default=2, help="val images in the uncertainty montage")
    p.add_argument("--score-thr", type=float, default=0.4, help="drawn detections")
    a = p.parse_args(argv)
    cfg_path, ckpt = a.work_dir / "config.yaml", a.work_dir / "latest.pth"
    cfg = load_config(cfg_path)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trained = ["--config", str(cfg_path), "--checkpoint", str(ckpt)]
        _run(["eval", *trained, "--out-dir", str(tmp / "eval")])
        shutil.copy(tmp / "eval" / "calibration.png", a.out / "insight_calibration.png")
        shutil.copy(tmp / "eval" / "pr_curves_1.png", a.out / "insight_pr_curves.png")

        val_dir = Path(cfg.data.val.img_dir)
        images = sorted(val_dir.glob("*.jpg"))[: a.images]
        drawn = ["--out-dir", str(tmp / "infer"), "--show-uncertainty"]
        _run(["infer", *trained, *map(str, images), *drawn, "--score-thr", str(a.score_thr)])
        uncertainty_montage(tmp / "infer", a.out / "insight_uncertainty.png", a.images)
    candidates = sorted(val_dir.glob("*.jpg"))[:20]
    edge_figure(cfg, ckpt, candidates, a.out / "insight_edges.png", a.score_thr)
    write_training_curves(a.work_dir, a.out / "insight_curves.png")
    for name in ("uncertainty", "edges", "calibration", "pr_curves", "curves"):
        path = a.out / f"insight_{name}.png"
        if path.is_file():
            size = path.stat().st_size
            note = "" if size <= MAX_BYTES else "  (over 300 KB: reduce --images)"
            print(f"{path}  {size / 1024:.0f} KB{note}")


if __name__ == "__main__":
    main()
