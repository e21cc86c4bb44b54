"""gfldet's speed beside torchvision's detectors, measured side by side in one process.

    python -m benchmarks.bench --out bench.json            # `make bench`
    python -m benchmarks.bench --quick --out /tmp/b.json   # tiny sizes, 1 run each: a smoke test
    python -m benchmarks.bench --only infer atss           # some of the sections

Sections (one module each in benchmarks/cpu/; docs/benchmarks.md says what every number means):
  infer   latency, batch 1, 800x1216: gfldet's R-50 GFL (prepared by
          gfldet.model.fuse.prepare_for_inference) vs torchvision's FCOS and RetinaNet, each
          with its own pre- and post-processing; gfldet's post-processing share, with random
          weights and with scores arranged so that a few thousand (box, class) pairs pass the
          score threshold, as a trained model's do
  train   one training step (forward, targets, loss, backward, SGD step), 2 images 512x512
          with 5 boxes each, vs torchvision's FCOS
  atss    batched ATSS vs a per-image loop of the same function, 16 images x 30 gts at
          800x1216 anchors, and its share of the training step
  loader  training-loader images/s on the shapes dataset with 0 and 2 workers, and how long
          the demo model's training waits for data with 2 workers
  coco    COCO evaluation (pycocotools, gfldet's evaluator) of the shapes val set
  data    reading 20k images' annotations as COCO json, Pascal VOC and YOLO (into a dataset,
          every check included), and the memory of a 100k-image dataset in memory
  lite    latency, batch 1, 320x320, from a uint8 RGB image: gfldet-lite
          (configs/gfl_lite_320_coco.yaml) through gfldet.Predictor vs torchvision's
          ssdlite320_mobilenet_v3_large and fasterrcnn_mobilenet_v3_large_320_fpn

Every model has random weights. Every time is a wall-clock median of --repeats runs after
--warmup runs; the contenders of one comparison run in turn (a, b, c, a, b, c, ...) so that a
change in the machine's load hits them alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gfldet.core.files import write_json_atomic

from .cpu import QUICK, Settings, Sizes, atss, coco, data, infer, lite, loader, train
from .timing import load_average, machine

# Run in this order; the table shows them in REPORT_ORDER.
SECTIONS = {
    "infer": infer,
    "train": train,
    "atss": atss,
    "loader": loader,
    "coco": coco,
    "data": data,
    "lite": lite,
}
REPORT_ORDER = ("infer", "train", "atss", "loader", "data", "lite", "coco")

# What the headline numbers of bench.json are (written into it, so that the file explains itself).
DEFINITIONS = {
    "infer_ratio_fcos": "gfldet inference latency / torchvision FCOS's (batch 1, pre- and "
    "post-processing included; gfldet prepared by gfldet.model.fuse.prepare_for_inference)",
    "infer_ratio_retinanet": "the same against torchvision RetinaNet",
    "infer_ratio_gflv2_gfl": "gfldet's GFLv2 R-50 (DGQP) inference latency / its GFL R-50's, both "
    "prepared, same input",
    "train_ratio_fcos": "gfldet training step / torchvision FCOS's (fcos_resnet50_fpn with "
    "random weights, which torchvision trains whole, BatchNorm in training mode)",
    "train_ratio_fcos_same_recipe": "the same against torchvision FCOS with gfldet's recipe "
    "(FrozenBatchNorm2d, stem + stage 1 frozen)",
    "train_gfldet_layout": "the memory format of gfldet's model as built (and trained)",
    "atss_speedup": "per-image loop of atss_assign / one batched call, same anchors and gts",
    "atss_share": "batched ATSS time per image (at the ATSS section's size, e.g. 800x1216 with "
    "30 gts) / gfldet training step time per image (at the train section's size, e.g. "
    "512x512): an upper bound of ATSS's share of a step at the larger size",
    "postprocess_share": "gfldet post-processing time / its inference time, scores arranged "
    "so that ~3000 (box, class) pairs pass the score threshold",
    "postprocess_share_random": "the same with the random weights' scores (almost none pass)",
    "loader_wait_share": "share of the demo model's training time spent waiting for batches "
    "of the training loader with 2 workers",
    "coco_eval_s": "seconds of gfldet.evaluation.evaluator.coco_evaluate on the shapes val set "
    "with 100 synthetic detections per image",
    "lite_ratio_ssdlite": "gfldet-lite latency / torchvision SSDlite320-MobileNetV3's, batch 1, "
    "320x320 uint8 RGB in, detections out (gfldet: gfldet.Predictor with scores arranged so "
    "that ~3000 (box, class) pairs pass the threshold, as a trained model's; torchvision's "
    "models: their own transform and post-processing)",
    "lite_ratio_frcnn": "the same against torchvision's Faster R-CNN MobileNetV3-320-FPN",
    "data_read_s": "seconds to read the annotations of 20k images (7 boxes each) into a gfldet "
    "dataset (gfldet.data.loader.build_dataset: parsing, every check, the image files' presence; "
    "YOLO also reads every image's header), the slowest of COCO json, VOC and YOLO",
    "data_memory_mib": "resident memory taken by a dataset of 100k images (700k boxes) built "
    "from a COCO json, MiB",
}

# name -> (bench.json key, comparison, limit): the CPU targets.
TARGETS = {
    "inference / FCOS": ("infer_ratio_fcos", "<=", 0.90),
    "train step / FCOS": ("train_ratio_fcos", "<=", 0.90),
    "ATSS loop / batched": ("atss_speedup", ">=", 5.0),
    "ATSS share of step": ("atss_share", "<=", 0.05),
    "post-process share": ("postprocess_share", "<=", 0.03),
    "data wait share (2 workers)": ("loader_wait_share", "<=", 0.05),
    "lite / SSDlite latency": ("lite_ratio_ssdlite", "<=", 0.80),
    "GFLv2 / GFL inference": ("infer_ratio_gflv2_gfl", "<=", 1.03),
    "annotations of 20k images (s)": ("data_read_s", "<=", 10.0),
    "memory of 100k images (MiB)": ("data_memory_mib", "<=", 1024.0),
}


def atss_share(out: dict[str, Any], sz: Sizes) -> float:
    """Batched ATSS per image over the training step per image. ATSS runs on the atss
    section's anchors (e.g. 800x1216, 30 gts), the step at the train section's size (e.g.
    512x512), so this overstates ATSS's share of a step at the larger size: an upper bound."""
    atss_per_image = out["medians"]["atss"]["batched"] / sz.atss_images
    step_per_image = out["medians"]["train"]["gfldet"] / sz.train_images
    return atss_per_image / step_per_image


def check_targets(out: dict) -> dict[str, dict]:
    res = {}
    for name, (key, op, limit) in TARGETS.items():
        value = out.get(key)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        res[name] = {"key": key, "value": value, "target": f"{op} {limit:g}", "met": met}
    return res


def report(out: dict) -> str:
    """The table printed at the end (also stored in the JSON)."""
    s = out["settings"]
    lines = [
        f"gfldet benchmark: {out['machine']['cpu']}, {s['threads']} threads, torch "
        f"{out['machine']['torch']}, torchvision {out['machine']['torchvision']}; median of "
        f"{s['repeats']} after {s['warmup']} warm-up; load average {out['load_average_start']}"
        f" -> {out['load_average_end']}" + ("; QUICK (tiny sizes)" if s["quick"] else ""),
    ]
    for name in REPORT_ORDER:
        if name in out["medians"]:
            lines += SECTIONS[name].report(out)
    lines.append("\ntargets:")
    for name, t in out["targets"].items():
        v = t["value"]
        shown = "-" if v is None else f"{v:.3f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {name:<28} {shown:>8}  (target {t['target']})  {verdict}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="bench.json", help="JSON results")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 3, quick 1)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed runs before (default 1, quick 0)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 run: a smoke test")
    p.add_argument("--data", default="data/shapes", help="shapes dataset (made if missing)")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else 3)
    warmup = a.warmup if a.warmup is not None else (0 if a.quick else 1)
    if repeats < 1 or warmup < 0 or a.threads < 1:
        raise SystemExit("bench: --repeats and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(a.threads)
    sz = QUICK if a.quick else Sizes()
    settings = Settings(sz, repeats, warmup, Path(a.data))
    out: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.bench", *argv]),
        "machine": machine(),
        "settings": {
            "threads": a.threads,
            "repeats": repeats,
            "warmup": warmup,
            "quick": a.quick,
            "sections": a.only,
            "sizes": asdict(sz),
        },
        "load_average_start": load_average(),
        "definitions": DEFINITIONS,
        "times": {},
        "medians": {},
    }
    start = time.perf_counter()
    for name, section in SECTIONS.items():
        if name in a.only:
            print(f"[{time.perf_counter() - start:5.0f} s] {name} ...", flush=True)
            section.run(settings, out)
    if "atss" in out["medians"] and "train" in out["medians"]:
        out["atss_share"] = atss_share(out, sz)
    out["seconds"] = time.perf_counter() - start
    out["load_average_end"] = load_average()
    out["targets"] = check_targets(out)
    table = report(out)
    out["table"] = table
    print("\n" + table)
    write_json_atomic(out, a.out, indent=1)
    print(f"\nwrote {a.out} ({out['seconds']:.0f} s)")
    if a.check and any(t["met"] is False for t in out["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
