"""Fixtures of the training tests: a tiny model on the tiny shapes dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gfldet.config import Config, load_config
from gfldet.data.synth import shapes_overrides

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "shapes_demo.yaml")


@pytest.fixture
def tiny_sets(shapes) -> Callable[..., list[str]]:
    """tiny_sets(work, *extra): --set items of a tiny model (base width 8, FPN 16, one conv)
    on the shapes fixture, 4 iterations per epoch, no evaluation; `extra` items come last."""

    def sets(work: Path, *extra: str) -> list[str]:
        return [
            f"work_dir={work}",
            *shapes_overrides(shapes),
            "data.train.img_scale=[64,64]",
            "data.val.img_scale=[64,64]",
            "data.train.ms_short_range=[48,64]",
            "data.train.batch_size=2",
            "data.train.num_workers=0",
            "data.val.num_workers=0",
            "model.backbone.base_width=8",
            "model.neck.out_channels=16",
            "model.head.feat_channels=16",
            "model.head.stacked_convs=1",
            "model.head.num_groups=4",
            "model.test.score_thr=0.001",
            "train.epochs=1",
            "train.log_interval=1",
            "train.warmup_iters=2",
            "train.eval_interval=0",
            *extra,
        ]

    return sets


@pytest.fixture
def tiny_cfg(tiny_sets) -> Callable[..., Config]:
    """tiny_cfg(work, *extra): the config of tiny_sets."""
    return lambda work, *extra: load_config(DEMO, tiny_sets(work, *extra))


@pytest.fixture
def log_records() -> Callable[[Path], list[dict]]:
    """log_records(work): the records of WORK/log.jsonl."""

    def read(work: Path) -> list[dict]:
        return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]

    return read
