"""Localization Distillation under torchrun: two CPU processes (gloo), each with its own frozen
teacher, the student DDP-wrapped; the checkpoint holds the student alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gfldet.core.checkpoint import load_checkpoint
from gfldet.training.trainer import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_distill_under_torchrun(tiny_cfg, tiny_sets, tmp_path, one_thread):
    teacher = tmp_path / "teacher"
    train(tiny_cfg(teacher, "train.max_iters=1"))
    work = tmp_path / "student"
    ld = [f"distill.teacher_checkpoint={teacher / 'latest.pth'}", "distill.vlr_weight=0.25"]
    sets = tiny_sets(work, *ld, "train.max_iters=2")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    gfldet = ["-m", "gfldet", "train", "--config", "configs/shapes_demo.yaml", "--set"]
    cmd = [*torchrun, "--nproc_per_node=2", *gfldet, *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    state = load_checkpoint(work / "latest.pth")
    assert state["world_size"] == 2 and state["iter"] == 2
    assert not any(k.startswith(("teacher", "module.")) for k in state["model"])
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == [1, 2]
    assert all(r["loss_ld"] >= 0 and "loss_ld_vlr" in r for r in steps)
