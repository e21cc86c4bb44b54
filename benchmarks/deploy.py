"""Deployment measurements for docs/deploy.md: the CPU runtimes side by side, and what int8
costs in AP.

    # latency of every runtime and precision (gfldet benchmark), lite at 320, R-50 at 800x1216;
    # the weights are random (speed does not depend on them), 80 classes as on COCO
    python -m benchmarks.deploy speed --model lite --threads 1 \
        --out work_dirs/deploy/speed_lite.json
    python -m benchmarks.deploy speed --model r50 --threads 1 --repeats 5 \
        --out work_dirs/deploy/speed_r50.json

    # AP on a val split: PyTorch, the fp32 export and int8 exports (--int8's default: 7-bit
    # weights, the head's last convs float; 8-bit weights; every conv), in onnxruntime and OpenVINO
    python -m benchmarks.deploy accuracy --config configs/gfl_lite_shapes.yaml \
        --checkpoint work_dirs/gfl_lite_shapes/latest.pth --out work_dirs/deploy/ap_lite.json

Latencies are medians of contenders run in turn in one process (gfldet.inference.benchmark), so
ratios hold on a shared machine; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import gfldet
from gfldet.core.checkpoint import save_checkpoint
from gfldet.core.files import write_json_atomic
from gfldet.core.records import detections_to_coco
from gfldet.data.loader import build_dataset
from gfldet.deploy.compare import detection_agreement
from gfldet.deploy.machine import load_average, machine
from gfldet.deploy.quantize import KEEP_FLOAT, quantize_onnx
from gfldet.deploy.sessions import runtime_installed
from gfldet.evaluation.evaluator import coco_evaluate
from gfldet.inference.benchmark import benchmark_checkpoint
from gfldet.inference.export import calibration_files, default_img_size, export_onnx
from gfldet.inference.onnx_predictor import OnnxPredictor
from gfldet.inference.predictor import Predictor, load_trained_model

MODELS = {
    "lite": ("configs/gfl_lite_320_coco.yaml", (320, 320)),
    "r50": ("configs/gfl_r50_fpn_1x_coco.yaml", (800, 1216)),
}
SHAPES = [
    "data.val.ann_file=data/shapes/annotations/val.json",
    "data.val.img_dir=data/shapes/val/images",
]


def speed(a: argparse.Namespace) -> dict[str, Any]:
    """gfldet benchmark on a random-weight model of `a.model` (80 classes), int8 calibrated on
    the shapes val images."""
    config, size = MODELS[a.model]
    sets = ["model.backbone.pretrained=null", "model.num_classes=80", "device=cpu", *SHAPES]
    cfg = gfldet.load_config(config, sets)
    torch.manual_seed(0)
    model = gfldet.build_model(cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "random.pth"
        save_checkpoint({"model": model.state_dict()}, ckpt)
        return benchmark_checkpoint(
            cfg,
            ckpt,
            img_size=size,
            threads=a.threads,
            repeats=a.repeats,
            warmup=a.warmup,
            calib_num=a.calib_num,
            out=a.out,
        )


def evaluate_predictor(predictor: Any, dataset: Any) -> tuple[dict[str, float], list[dict]]:
    """COCO AP of `predictor` (any gfldet predictor) on every image of `dataset`; returns the
    metrics and the detections per image."""
    results, dets = [], []
    for img_id in dataset.img_ids:
        info = dataset.coco.imgs[img_id]
        det = predictor([dataset.img_dir / info["file_name"]])[0]
        dets.append(det)
        results.extend(detections_to_coco(img_id, det, dataset.cat_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        m = coco_evaluate(
            dataset.coco, results, dataset.class_names, dataset.cat_ids, None, plots=False
        )
    return {k: round(float(m[k]) * 100, 2) for k in ("AP", "AP50", "AP75")}, dets


def accuracy(a: argparse.Namespace) -> dict[str, Any]:
    """AP of a trained checkpoint on its val split: PyTorch, fp32 ONNX, int8 variants."""
    cfg = gfldet.load_config(a.config, ["device=cpu", *a.set])
    torch.set_num_threads(a.threads)
    dataset = build_dataset(cfg.data.val, train=False)
    size = tuple(a.img_size) if a.img_size else default_img_size(cfg)
    model, state = load_trained_model(cfg, a.checkpoint, torch.device("cpu"))
    meta = {
        "classes": state.get("classes"),
        "cat_ids": state.get("cat_ids"),
        "img_scale": cfg.data.val.img_scale,
    }
    calib = calibration_files(cfg.data.val, None, a.calib_num)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", size, **meta)
        files = {"fp32": fp32}
        variants = {  # (convs kept float, 7-bit weights); the first is --int8's default
            "int8 (7-bit weights, head convs float)": (KEEP_FLOAT, True),
            "int8 (8-bit weights, head convs float)": (KEEP_FLOAT, False),
            "int8 (8-bit weights, every conv)": ((), False),
        }
        for name, (keep, reduce_range) in variants.items():
            files[name] = Path(tmp) / f"{len(files)}.onnx"
            quantize_onnx(fp32, files[name], calib, keep_float=keep, reduce_range=reduce_range)
        start = time.perf_counter()
        rows["torch fp32"], ref = evaluate_predictor(Predictor(cfg, a.checkpoint, "cpu"), dataset)
        rows["torch fp32"]["seconds"] = round(time.perf_counter() - start, 1)
        runtimes = [r for r in ("onnxruntime", "openvino") if runtime_installed(r)]
        for runtime in runtimes:
            for name, path in files.items():
                start = time.perf_counter()
                metrics, dets = evaluate_predictor(OnnxPredictor(path, runtime, a.threads), dataset)
                matched, counted = detection_agreement(ref, dets)
                metrics["matched_torch_detections"] = round(matched / max(counted, 1), 4)
                metrics["seconds"] = round(time.perf_counter() - start, 1)
                rows[f"{runtime} {name}"] = metrics
                print(f"{runtime} {name}: {metrics}", flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_average": load_average(),
        "config": a.config,
        "checkpoint": str(a.checkpoint),
        "input": [1, 3, *size],
        "val_images": len(dataset),
        "calibration_images": len(calib),
        "rows": rows,
    }
    for name, m in rows.items():
        print(f"{name:<40} AP {m['AP']:6.2f}  AP50 {m['AP50']:6.2f}")
    if a.out:
        write_json_atomic(result, Path(a.out), indent=1)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed", help="every runtime and precision side by side")
    s.add_argument("--model", choices=sorted(MODELS), required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--calib-num", type=int, default=8)
    s.add_argument("--out")
    s.set_defaults(func=speed)
    s = sub.add_parser("accuracy", help="AP of PyTorch, fp32 and int8 exports on a val split")
    s.add_argument("--config", required=True)
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--set", nargs="+", default=[])
    s.add_argument("--img-size", type=int, nargs=2)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--calib-num", type=int, default=32)
    s.add_argument("--out")
    s.set_defaults(func=accuracy)
    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
