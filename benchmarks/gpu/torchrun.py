"""torchrun: `torchrun --nproc_per_node=1 -m gfldet train` (NCCL on CUDA, gloo on the CPU) with
AMP, EMA and SyncBN on a tiny shapes set, then `gfldet eval`, then `--resume` to a second
epoch: exit codes, durations, whether the process group was joined and whether the resume
really continued."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gfldet.core.checkpoint import load_checkpoint
from gfldet.data.synth import shapes_overrides, write_shapes_dataset

from ..models import DEMO
from . import Sizes

ROOT = Path(__file__).resolve().parents[2]


def run_command(cmd: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Runs `cmd` in the repository root in its own process group (killed whole on timeout:
    torchrun's workers too). Returns its command line, exit code, seconds and output tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc, output = None, output + f"\n[bench_gpu: killed after {timeout:g} s]"
    return {
        "command": shlex.join(cmd),
        "returncode": rc,
        "seconds": time.perf_counter() - start,
        "output_tail": output[-3000:],
    }


def commands(work: Path, sets: list[str]) -> dict[str, list[str]]:
    """The three runs: train one epoch, evaluate its checkpoint, resume to a second epoch."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc_per_node=1", "-m", "gfldet"]
    config = ["--config", str(DEMO)]
    train = [*launch, "train", *config, "--work-dir", str(work)]
    evaluate = [*launch, "eval", *config, "--checkpoint", str(work / "latest.pth")]
    return {
        "train": [*train, "--set", *sets, "train.epochs=1"],
        "eval": [*evaluate, "--out-dir", str(work / "eval"), "--set", *sets],
        "resume": [*train, "--resume", "--set", *sets, "train.epochs=2"],
    }


def run(sz: Sizes, device: torch.device, res: dict, tmp: Path) -> None:
    """Train one epoch, evaluate, resume to epoch 2, each through the CLI under torchrun."""
    paths = write_shapes_dataset(tmp / "shapes", **sz.torchrun_data)
    work = tmp / "work"
    sets = [*shapes_overrides(paths), f"device={device.type}", "train.amp=true"]
    sets += ["train.ema=true", "train.sync_bn=true", "train.eval_interval=0"]
    sets += ["train.log_interval=1", "train.warmup_iters=5", *sz.torchrun_set]
    env = dict(os.environ)
    if device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # one process on shared cores
    res.update(backend="nccl" if device.type == "cuda" else "gloo", runs={})
    for name, cmd in commands(work, sets).items():
        print(f"  torchrun {name} ...", flush=True)
        run = res["runs"][name] = run_command(cmd, sz.timeout_s, env)
        if run["returncode"] != 0:
            raise RuntimeError(
                f"torchrun {name} exited {run['returncode']}:\n{run['output_tail'][-1500:]}"
            )

    # The trainer converts to SyncBN, or warns that it cannot, only inside a process group.
    train_log = (work / "train.log").read_text()
    said = res["runs"]["train"]["output_tail"] + train_log
    res["process_group_joined"] = any(
        s in said for s in ("BatchNorm synchronised over 1 process", "SyncBatchNorm needs CUDA")
    )
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    res["eval_AP"] = metrics.get("AP")
    state = load_checkpoint(work / "latest.pth")
    records = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    res.update(
        checkpoints=sorted(p.name for p in work.glob("*.pth")),
        latest={k: state.get(k) for k in ("epoch", "iter", "world_size")},
        epochs_logged=sorted({r["epoch"] for r in records if "loss" in r}),
        resumed_logged="resumed from" in train_log,
        scaler_state=bool(state.get("scaler")),
        ema_in_checkpoint="ema" in state,
        all_finite=bool(losses) and all(map(math.isfinite, losses)),
    )
    res["resume_ok"] = (
        res["runs"]["resume"]["returncode"] == 0
        and res["resumed_logged"]
        and state.get("epoch") == 2
        and (work / "epoch_2.pth").is_file()
        and res["epochs_logged"] == [1, 2]
    )
    if not (res["resume_ok"] and res["process_group_joined"]):
        raise RuntimeError(
            f"torchrun: resume_ok {res['resume_ok']} (latest {res['latest']}, epochs logged "
            f"{res['epochs_logged']}), process_group_joined {res['process_group_joined']}"
        )


def report(run: dict[str, Any]) -> list[str]:
    """The runs' exit codes and durations (nothing when none ran)."""
    if not run.get("runs"):
        return []
    steps = ", ".join(
        f"{k} exit {r['returncode']} ({r['seconds']:.0f} s)" for k, r in run["runs"].items()
    )
    return [
        f"\ntorchrun --nproc_per_node=1 ({run['backend']}): {steps}; process "
        f"group joined {run.get('process_group_joined')}, resume ok {run.get('resume_ok')}"
    ]
