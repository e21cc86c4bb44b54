"""The your-data recipe against the flip-only recipe, trained as a user would, at equal CPU time.

Every run is `gfldet train --data DATA.yaml --model MODEL --epochs N` in its own process, on one
thread with the data loaded in that process (num_workers 0), so that its CPU time is the whole
cost of training: augmentation, steps and the evaluations. The recipes:

  new     the preset as shipped (photometric distortion, random zoom and shift, mosaic closed
          for the last epochs, background images kept, cosine lr, EMA with a ramped decay)
  today   the same model, optimizer and lr with what gfldet trained before the preset: resize
          and horizontal flip only, images without boxes dropped, step decay at 3/4 of the
          epochs, no EMA

Equal CPU time: for each dataset and recipe a 2-epoch run measures the CPU seconds of an epoch
(evaluation included); a budget of B minutes then trains N = B / (seconds per epoch) epochs, as
a user who has B minutes would choose. The CPU time each run really took is recorded beside its
AP (the final evaluation of the run's weights, EMA where the recipe keeps one, and the best).

    python -m benchmarks.your_data --data data/digits/data.yaml --minutes 4 15 30 --seeds 0 1 \
        --out bench_your_data.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from gfldet.core.files import write_json_atomic

from .timing import load_average, machine, run_one_thread

TODAY = [
    "data.train.brightness=0",
    "data.train.contrast=0",
    "data.train.saturation=0",
    "data.train.hue=0",
    "data.train.affine_scale=null",
    "data.train.affine_translate=0",
    "data.train.mosaic_prob=0",
    "data.train.mixup_prob=0",
    "data.train.filter_empty=true",
    "train.lr_schedule=step",
    "train.ema=false",
    "train.ema_ramp_iters=0",
]
# Both recipes: one process, one thread, no download (the benchmark runs offline).
COMMON = ["data.train.num_workers=0", "data.val.num_workers=0", "model.backbone.pretrained=null"]


def recipe_items(recipe: str, epochs: int) -> list[str]:
    """The --set items of a recipe for a run of `epochs` epochs."""
    if recipe == "new":
        return []
    return [*TODAY, f"train.lr_steps=[{max(1, round(0.75 * epochs))}]"]


def train_run(
    data: str, model: str, recipe: str, epochs: int, seed: int, work_dir: Path, extra: list[str]
) -> dict[str, Any]:
    """One `gfldet train --data` run in a subprocess; its metrics, CPU and wall seconds."""
    items = [*COMMON, *recipe_items(recipe, epochs), f"seed={seed}", f"work_dir={work_dir}", *extra]
    cmd = [
        sys.executable,
        "-m",
        "gfldet",
        "train",
        "--data",
        data,
        "--model",
        model,
        "--epochs",
        str(epochs),
        "--overwrite",
        "--set",
        *items,
    ]
    cpu, wall = run_one_thread(cmd)
    metrics = json.loads((work_dir / "metrics.json").read_text())
    best = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
    aps = [r["val"]["AP"] for r in best if "val" in r and r["val"].get("AP") is not None]
    return {
        "recipe": recipe,
        "seed": seed,
        "epochs": epochs,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "best_AP": max(aps) if aps else None,
        "command": " ".join(cmd),
    }


def calibrate(data: str, model: str, recipe: str, work: Path, extra: list[str]) -> float:
    """CPU seconds per epoch (training and its evaluation) of a recipe on this dataset."""
    run = train_run(data, model, recipe, 2, 0, work / f"calibrate-{recipe}", extra)
    return run["cpu_s"] / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a dataset path that `gfldet train --data` takes")
    p.add_argument("--model", default="lite", help="the preset (default lite, from scratch)")
    p.add_argument("--minutes", type=float, nargs="+", default=[4, 15, 30])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipes", nargs="+", default=["new", "today"], choices=["new", "today"])
    p.add_argument("--work-dir", default="work_dirs/bench_your_data")
    p.add_argument("--out", default="bench_your_data.json")
    p.add_argument("--set", nargs="*", default=[], help="more --set items for every run")
    p.add_argument(
        "--epoch-cpu-s",
        nargs="+",
        default=[],
        metavar="RECIPE=S",
        help="CPU seconds per epoch of a recipe from an earlier run (skips its calibration)",
    )
    a = p.parse_args(argv)
    known = {k: float(v) for k, v in (item.split("=", 1) for item in a.epoch_cpu_s)}
    work = Path(a.work_dir)
    out: dict[str, Any] = {
        "command": "python -m benchmarks.your_data " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "data": a.data,
        "model": a.model,
        "epoch_cpu_s": {},
        "runs": [],
    }
    for recipe in a.recipes:
        seconds = known.get(recipe) or calibrate(a.data, a.model, recipe, work, a.set)
        out["epoch_cpu_s"][recipe] = round(seconds, 1)
        print(f"{recipe}: {out['epoch_cpu_s'][recipe]} CPU s per epoch", flush=True)
    for minutes in a.minutes:
        for seed in a.seeds:
            for recipe in a.recipes:
                epochs = max(1, math.floor(minutes * 60 / out["epoch_cpu_s"][recipe]))
                name = f"{recipe}-{minutes:g}min-seed{seed}"
                run = train_run(a.data, a.model, recipe, epochs, seed, work / name, a.set)
                run.update(minutes=minutes, load_average=load_average())
                out["runs"].append(run)
                write_json_atomic(out, a.out, indent=1)
                print(
                    f"{name}: {epochs} epochs, {run['cpu_s'] / 60:.1f} CPU min, AP "
                    f"{run['AP']:.3f} (AP50 {run['AP50']:.3f}, best {run['best_AP']})",
                    flush=True,
                )
    print(report(out))
    return 0


def report(out: dict[str, Any]) -> str:
    """AP and AP50 per budget and recipe: mean over seeds (and each seed's)."""
    lines = [f"{out['data']} ({out['model']}), {out['machine']['cpu']}:"]
    lines.append("budget  recipe  epochs  CPU min  AP (seeds)               AP50")
    groups: dict[tuple, list[dict]] = {}
    for r in out["runs"]:
        groups.setdefault((r["minutes"], r["recipe"]), []).append(r)
    for (minutes, recipe), runs in groups.items():
        ap = sum(r["AP"] for r in runs) / len(runs)
        ap50 = sum(r["AP50"] for r in runs) / len(runs)
        each = ", ".join(f"{r['AP']:.3f}" for r in runs)
        cpu = sum(r["cpu_s"] for r in runs) / len(runs) / 60
        lines.append(
            f"{minutes:>4g} min {recipe:<7} {runs[0]['epochs']:>6} {cpu:>8.1f}  "
            f"{ap:.3f} ({each}){'':<4} {ap50:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
