"""Localization Distillation on the shapes data: the real-time model with and without a teacher.

1. The teacher: the shapes demo model (`configs/shapes_demo.yaml`, R-18 at base width 32, FPN,
   its 4-epoch schedule) with the student's bins and levels (model.head.reg_max 7,
   model.neck.extra_levels 1), trained once.
2. The student: gfldet-lite (`configs/gfl_lite_shapes.yaml`; its schedule cut to
   --student-epochs, default 3, with the lr step before the last epoch as the config's 4 have
   it, so that the whole benchmark fits about 90 CPU minutes) trained per seed twice, plain and
   with `distill.teacher_checkpoint` (LD's defaults: T 10, weight 0.25, main region only,
   unless --set says otherwise). Both runs of a seed see the same data order and augmentation:
   the same epochs, not the same CPU time (the distilled step costs more, see 3).
3. The step cost: the plain and the distilled student's training step on the same batches,
   alternated in one process on one thread, in CPU seconds (the teacher forward, the second
   ATSS assignment and the KL on top of the student's step).

Every training is `gfldet train` in its own process with one thread and the data loaded in that
process (num_workers 0), so its CPU time is its whole cost, evaluation included.

    gfldet data synth --out data/shapes
    python -m benchmarks.distill --seeds 0 1 2 --out bench_distill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gfldet.core.files import write_json_atomic
from gfldet.data.synth import shapes_overrides, shapes_paths

from .timing import load_average, machine, run_one_thread

STUDENT = "configs/gfl_lite_shapes.yaml"
TEACHER = "configs/shapes_demo.yaml"
# The teacher's bins and pyramid levels made the student's: 8 bins (reg_max 7), P3-P6.
MATCH = ["model.head.reg_max=7", "model.neck.extra_levels=1"]
# One process, one thread, no download (the benchmark runs offline).
COMMON = ["data.train.num_workers=0", "data.val.num_workers=0"]


def data_items(data: Path) -> list[str]:
    """The --set items of the shapes dataset in `data`."""
    return shapes_overrides(shapes_paths(data))


def train_run(config: str, work_dir: Path, items: list[str]) -> dict[str, Any]:
    """One `gfldet train` run in a subprocess: its final AP, CPU and wall seconds, command."""
    args = ["train", "--config", config, "--overwrite", "--set", *COMMON, f"work_dir={work_dir}"]
    cmd = [sys.executable, "-m", "gfldet", *args, *items]
    cpu, wall = run_one_thread(cmd)
    metrics = json.loads((work_dir / "metrics.json").read_text())
    return {
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "load_average": load_average(),
        "command": "OMP_NUM_THREADS=1 " + " ".join(["gfldet", *cmd[3:]]),
    }


def step_cost(teacher: Path, data: Path, steps: int, extra: list[str]) -> dict[str, Any]:
    """CPU seconds per training step of the plain and the distilled student, side by side."""
    from gfldet.config import load_config
    from gfldet.data.loader import build_dataloader, build_dataset
    from gfldet.model.build import build_model
    from gfldet.training.trainer import Trainer

    torch.set_num_threads(1)
    items = [*COMMON, *data_items(data), "model.num_classes=6"]
    plain_cfg = load_config(STUDENT, items)
    ld_cfg = load_config(STUDENT, [*items, f"distill.teacher_checkpoint={teacher}", *extra])
    d = plain_cfg.data
    ds = build_dataset(d.train, True, False, None)
    loader = build_dataloader(ds, d.train.batch_size, 0, True, 0, 1, 0, d.size_divisor)
    batches = [b for _, b in zip(range(steps + 1), loader)]
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    plain = Trainer.for_model(plain_cfg, build_model(plain_cfg.model), cpu)
    torch.manual_seed(0)
    ld = Trainer.for_model(ld_cfg, build_model(ld_cfg.model), cpu)
    times: dict[str, list[float]] = {"plain": [], "distill": [], "teacher_forward": []}
    for i, (images, targets) in enumerate(batches):
        for name, trainer in (("plain", plain), ("distill", ld)):
            t0 = time.thread_time()
            trainer.train_step(images, targets, 1e-4)
            if i:  # the first step warms up
                times[name].append(time.thread_time() - t0)
        if i:
            t0 = time.thread_time()
            ld.distiller.teacher_outputs(images, targets)
            times["teacher_forward"].append(time.thread_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "steps": steps,
        "batch_size": d.train.batch_size,
        "plain_step_cpu_s": round(med["plain"], 4),
        "distill_step_cpu_s": round(med["distill"], 4),
        "teacher_forward_cpu_s": round(med["teacher_forward"], 4),
        "ratio": round(med["distill"] / med["plain"], 3),
        "load_average": load_average(),
    }


def summary(runs: list[dict], key: str = "AP") -> dict[str, float]:
    values = [r[key] for r in runs]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.mean(values), 4), "std": round(sd, 4), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/shapes", help="the shapes dataset (gfldet data synth)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work-dir", default="work_dirs/bench_distill")
    p.add_argument("--out", default="bench_distill.json")
    p.add_argument("--teacher", help="a trained teacher checkpoint to use instead of training one")
    p.add_argument("--set", nargs="*", default=[], help="more --set items for the distilled runs")
    p.add_argument("--student-epochs", type=int, default=3, help="epochs of every student run")
    p.add_argument("--cost-steps", type=int, default=20, help="steps of the step-cost comparison")
    p.add_argument("--cost-only", action="store_true", help="only the step cost (needs --teacher)")
    a = p.parse_args(argv)
    if a.cost_only:
        if not a.teacher:
            p.error("--cost-only needs --teacher")
        print(json.dumps(step_cost(Path(a.teacher), Path(a.data), a.cost_steps, a.set), indent=1))
        return 0
    data, work = Path(a.data), Path(a.work_dir)
    if not (data / "annotations" / "train.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "gfldet", "data", "synth", "--out", str(data)], check=True
        )
    out: dict[str, Any] = {
        "command": "python -m benchmarks.distill " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "data": str(data),
        "student": STUDENT,
        "teacher_config": TEACHER,
        "teacher_items": MATCH,
        "distill_items": a.set,
        "student_epochs": a.student_epochs,
        "runs": [],
    }
    if a.teacher:
        teacher = Path(a.teacher)
    else:
        run = train_run(TEACHER, work / "teacher", [*data_items(data), *MATCH, "seed=0"])
        out["teacher"] = run
        teacher = work / "teacher" / "latest.pth"
        write_json_atomic(out, a.out, indent=1)
        print(f"teacher: AP {run['AP']:.3f}, {run['cpu_s'] / 60:.1f} CPU min", flush=True)
    for seed in a.seeds:
        for mode in ("plain", "distill"):
            e = a.student_epochs
            items = [
                *data_items(data),
                f"seed={seed}",
                f"train.epochs={e}",
                f"train.lr_steps=[{max(e - 1, 1)}]",
            ]
            if mode == "distill":
                items += [f"distill.teacher_checkpoint={teacher}", *a.set]
            run = train_run(STUDENT, work / f"{mode}-seed{seed}", items)
            run.update(mode=mode, seed=seed)
            out["runs"].append(run)
            write_json_atomic(out, a.out, indent=1)
            print(
                f"{mode} seed {seed}: AP {run['AP']:.3f} (AP50 {run['AP50']:.3f}, AP75 "
                f"{run['AP75']:.3f}), {run['cpu_s'] / 60:.1f} CPU min",
                flush=True,
            )
    for mode in ("plain", "distill"):
        runs = [r for r in out["runs"] if r["mode"] == mode]
        out[mode] = {k: summary(runs, k) for k in ("AP", "AP50", "AP75", "cpu_s")}
    out["step_cost"] = step_cost(teacher, data, a.cost_steps, a.set)
    write_json_atomic(out, a.out, indent=1)
    print(report(out))
    return 0


def report(out: dict[str, Any]) -> str:
    """The table of docs/distill.md: AP mean ± std over seeds, CPU time, step cost."""
    lines = [
        "| student | AP | AP50 | AP75 | CPU min per run | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for mode, name in (("plain", "gfldet-lite"), ("distill", "gfldet-lite + LD")):
        s = out[mode]
        each = ", ".join(f"{r['AP']:.3f}" for r in out["runs"] if r["mode"] == mode)
        lines.append(
            f"| {name} | {s['AP']['mean']:.3f} ± {s['AP']['std']:.3f} | "
            f"{s['AP50']['mean']:.3f} ± {s['AP50']['std']:.3f} | "
            f"{s['AP75']['mean']:.3f} ± {s['AP75']['std']:.3f} | "
            f"{s['cpu_s']['mean'] / 60:.1f} | {each} |"
        )
    c = out["step_cost"]
    lines.append(
        f"\nstep (batch {c['batch_size']}, 1 thread): plain {c['plain_step_cpu_s']:.3f} CPU s, "
        f"distilled {c['distill_step_cpu_s']:.3f} CPU s (x{c['ratio']:.2f}); the teacher's "
        f"forward alone {c['teacher_forward_cpu_s']:.3f} CPU s"
    )
    if "teacher" in out:
        t = out["teacher"]
        lines.append(
            f"teacher: AP {t['AP']:.3f} (AP50 {t['AP50']:.3f}), {t['cpu_s'] / 60:.1f} CPU min"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
