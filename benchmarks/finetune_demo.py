"""Fine-tuning from a detector trained on other classes (`model.init_from`), shown on shapes.

    python -m benchmarks.finetune_demo --out work_dirs/finetune_demo/finetune_demo.json
    python -m benchmarks.finetune_demo --quick --work-dir DIR  # smoke run: a tiny model

The shapes dataset (gfldet.data.synth: circle, square, triangle, star, cross, ellipse) is split
by classes into two detection tasks, written as COCO annotation files under WORK_DIR/splits
(the images are not copied):

    A = circle, square, triangle          (labels 0, 1, 2)
    B = star, cross, ellipse, circle      (labels 0, 1, 2, 3)

Each keeps only the annotations of its classes. Training images left without a box are dropped;
the val images are all kept (an image without a box of the split's classes still scores false
positives). "circle" is in both, at label 0 in A and label 3 in B, so it is found by name, not
by position.

Three runs of the demo model (configs/shapes_demo.yaml), in WORK_DIR/{a,b_scratch,b_finetune}:

    1. A, from scratch, --epochs-a epochs;
    2. B, from scratch, --epochs-b epochs;
    3. B from A's weights (model.init_from: WORK_DIR/a/latest.pth), the same epochs, data order
       and schedule as 2, so the same number of iterations: only the start differs. A's
       backbone, neck and head towers are loaded; the class conv starts fresh except the row of
       "circle", copied from A's row 0 into row 3.

It prints and writes (--out, default WORK_DIR/finetune_demo.json) each run's COCO AP (the
metrics train() returns after the last epoch), the AP of "circle" (per_class), and the
iterations of each run. --set items apply to every run (before the script's own data, work_dir,
epochs and init_from items). Each run's work dir is reused: an earlier run there is moved aside
into its previous/ folder (train(..., overwrite=True)).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gfldet.config import load_config
from gfldet.core.checkpoint import load_checkpoint
from gfldet.core.files import write_json_atomic
from gfldet.data.synth import CLASSES
from gfldet.training.trainer import train

from .models import DEMO, QUICK_DATA, ensure_shapes

SPLIT_A = ("circle", "square", "triangle")
SPLIT_B = ("star", "cross", "ellipse", "circle")
SHARED = "circle"
METRICS = ("AP", "AP50", "AP75")
# --quick: a tiny model on tiny images, no worker processes, a few iterations per run.
QUICK = [
    *QUICK_DATA,
    "model.backbone.base_width=8",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "model.head.num_groups=4",
    "model.test.score_thr=0.001",
    "train.warmup_iters=2",
    "train.log_interval=1",
    "train.max_iters=3",
]
QUICK_DATA = {"num_train": 16, "num_val": 6, "img_size": 64, "max_size": 40, "max_objects": 3}


def write_split(src: Path, classes: tuple[str, ...], dst: Path, train: bool) -> dict[str, int]:
    """Writes the COCO file `dst`: `src` restricted to `classes`, whose category ids become
    1..n in the order given (gfldet's label order is by id). Training files drop the images
    left without a box. Returns the numbers of images and boxes."""
    coco = json.loads(src.read_text())
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    missing = [n for n in classes if n not in by_name]
    if missing:
        raise SystemExit(f"finetune_demo: {src} has no categories {missing}: not a shapes set?")
    new_id = {by_name[n]: k + 1 for k, n in enumerate(classes)}
    anns = [
        {**a, "category_id": new_id[a["category_id"]]}
        for a in coco["annotations"]
        if a["category_id"] in new_id
    ]
    images = coco["images"]
    if train:
        with_boxes = {a["image_id"] for a in anns}
        images = [im for im in images if im["id"] in with_boxes]
    cats = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(classes)]
    info = {**coco.get("info", {}), "description": f"shapes, classes {', '.join(classes)}"}
    split = {"info": info, "licenses": [], "images": images, "annotations": anns}
    write_json_atomic({**split, "categories": cats}, dst)
    return {"images": len(images), "boxes": len(anns)}


def split_overrides(paths: dict[str, Path], split_dir: Path, name: str) -> list[str]:
    return [
        f"data.train.ann_file={split_dir / f'{name}_train.json'}",
        f"data.train.img_dir={paths['train_img_dir']}",
        f"data.val.ann_file={split_dir / f'{name}_val.json'}",
        f"data.val.img_dir={paths['val_img_dir']}",
    ]


def run(name: str, config: str, items: list[str]) -> dict[str, Any]:
    """Trains one run; returns its AP, the shared class's AP, iterations and seconds."""
    cfg = load_config(config, items)
    print(f"\n=== {name}: {cfg.work_dir}", flush=True)
    start = time.perf_counter()
    metrics = train(cfg, overwrite=True)
    seconds = time.perf_counter() - start
    latest = Path(cfg.work_dir) / "latest.pth"
    per_class = metrics.get("per_class", {})
    return {
        "work_dir": cfg.work_dir,
        "init_from": cfg.model.init_from,
        **{m: metrics.get(m) for m in METRICS},
        f"{SHARED}_AP": per_class.get(SHARED, {}).get("AP"),
        "per_class_AP": {n: m.get("AP") for n, m in per_class.items()},
        "iterations": int(load_checkpoint(latest)["iter"]),
        "seconds": round(seconds, 1),
    }


def fmt(v: Any) -> str:
    return "    -" if v is None or v != v else f"{100 * v:5.1f}"


def format_table(runs: dict[str, dict]) -> str:
    head = "  ".join(f"{m:>5}" for m in METRICS)
    lines = [f"{'run':<22}  iters  {head}  {SHARED} AP"]
    for name, r in runs.items():
        cells = "  ".join(fmt(r[m]) for m in METRICS)
        lines.append(f"{name:<22}  {r['iterations']:5d}  {cells}  {fmt(r[f'{SHARED}_AP']):>9}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.finetune_demo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--data",
        default=None,
        help="shapes dataset folder, generated if it has no annotation files (default: "
        "data/shapes; with --quick, WORK_DIR/shapes_quick)",
    )
    p.add_argument(
        "--work-dir", default="work_dirs/finetune_demo", help="splits/ and one folder per run"
    )
    p.add_argument("--config", default=str(DEMO), help="the config of every run")
    p.add_argument("--epochs-a", type=int, default=2, help="epochs of run 1 (on A)")
    p.add_argument("--epochs-b", type=int, default=1, help="epochs of runs 2 and 3 (on B)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every run, e.g. device=cuda",
    )
    p.add_argument(
        "--out", default=None, help="JSON results (default: WORK_DIR/finetune_demo.json)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny model, 64 px images, 3 iterations per run (and a tiny "
        "dataset when --data has none)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.epochs_a < 1 or a.epochs_b < 1:
        raise SystemExit("finetune_demo: --epochs-a and --epochs-b must be >= 1")
    assert set(SPLIT_A) | set(SPLIT_B) <= set(CLASSES) and SHARED in set(SPLIT_A) & set(SPLIT_B)
    work = Path(a.work_dir)
    common = (QUICK if a.quick else []) + list(a.set)
    load_config(a.config, common)  # a bad --set item fails now, not after training A

    data = Path(a.data) if a.data else work / "shapes_quick" if a.quick else Path("data/shapes")
    paths = ensure_shapes(data, **(QUICK_DATA if a.quick else {}))
    split_dir = work / "splits"
    counts = {}
    for name, classes in (("a", SPLIT_A), ("b", SPLIT_B)):
        for part in ("train", "val"):
            dst = split_dir / f"{name}_{part}.json"
            is_train = part == "train"
            counts[f"{name}_{part}"] = write_split(paths[f"{part}_ann"], classes, dst, is_train)
    sizes = (f"{k} {v['images']} images / {v['boxes']} boxes" for k, v in counts.items())
    print("splits:", ", ".join(sizes))

    def items(split: str, run_dir: str, epochs: int, init_from: Path | None) -> list[str]:
        # Evaluate and checkpoint once, at the end (the last epoch, or where max_iters stops).
        once = [f"train.eval_interval={epochs}", f"train.checkpoint_interval={epochs}"]
        return [
            *common,
            *split_overrides(paths, split_dir, split),
            f"work_dir={work / run_dir}",
            f"train.epochs={epochs}",
            *once,
            f"model.init_from={'null' if init_from is None else init_from}",
        ]

    runs = {}
    runs["A from scratch"] = run("1. A from scratch", a.config, items("a", "a", a.epochs_a, None))
    a_ckpt = work / "a" / "latest.pth"
    runs["B from scratch"] = run(
        "2. B from scratch", a.config, items("b", "b_scratch", a.epochs_b, None)
    )
    runs["B fine-tuned from A"] = run(
        "3. B fine-tuned from A", a.config, items("b", "b_finetune", a.epochs_b, a_ckpt)
    )
    scratch, tuned = runs["B from scratch"], runs["B fine-tuned from A"]
    if scratch["iterations"] != tuned["iterations"]:  # the comparison would not be fair
        n2, n3 = scratch["iterations"], tuned["iterations"]
        print(f"warning: runs 2 and 3 trained {n2} and {n3} iterations", flush=True)

    def diff(key: str) -> float | None:
        x, y = tuned[key], scratch[key]
        return None if x is None or y is None or x != x or y != y else x - y  # NaN: no gt

    gain = {k: diff(k) for k in ("AP", f"{SHARED}_AP")}
    table = format_table(runs)
    print(
        f"\nfine-tuning on shapes ({a.config}; A = {', '.join(SPLIT_A)}; "
        f"B = {', '.join(SPLIT_B)}):\n{table}"
    )
    print(
        "fine-tuned minus from scratch on B: "
        + ", ".join(f"{k} {'-' if v is None else f'{100 * v:+.1f}'}" for k, v in gain.items())
    )
    out = Path(a.out) if a.out else work / "finetune_demo.json"
    args = argv if argv is not None else sys.argv[1:]
    results = {
        "command": " ".join(["python -m benchmarks.finetune_demo", *args]),
        "config": a.config,
        "overrides": common,
        "quick": a.quick,
        "split_a": list(SPLIT_A),
        "split_b": list(SPLIT_B),
        "shared_class": SHARED,
        "split_sizes": counts,
        "runs": runs,
        "finetune_minus_scratch": gain,
        "table": table,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    write_json_atomic(results, out, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
