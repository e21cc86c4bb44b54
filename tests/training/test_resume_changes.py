"""What `--resume` does with optimizer settings changed on its command line."""

from __future__ import annotations

import pytest
import yaml

from gfldet.cli import main
from gfldet.core.checkpoint import load_checkpoint
from gfldet.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
DEMO = "configs/shapes_demo.yaml"


@pytest.mark.parametrize(
    "optimizer, changes",
    [
        ("adamw", {"weight_decay": 0.5}),
        ("sgd", {"weight_decay": 0.5, "momentum": 0.5}),
    ],
)
def test_resume_applies_changed_optimizer_hyperparameters(
    tiny_sets, tiny_cfg, tmp_path, optimizer, changes
):
    work = tmp_path / "w"
    sets = tiny_sets(work, f"train.optimizer={optimizer}", "train.max_iters=1")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    old = load_checkpoint(work / "latest.pth")["optimizer"]["param_groups"][0]
    assert all(old[k] != v for k, v in changes.items())

    changed = [f"train.{k}={v}" for k, v in changes.items()]
    resumed = Trainer(tiny_cfg(work, f"train.optimizer={optimizer}", *changed), resume=True)
    for group in resumed.optimizer.param_groups:  # what the run does ...
        assert {k: group[k] for k in changes} == changes
    saved = yaml.safe_load((work / "config.yaml").read_text())["train"]
    assert {k: saved[k] for k in changes} == changes  # ... is what config.yaml says
    text = (work / "train.log").read_text()
    for k, v in changes.items():
        assert f"train.{k} {old[k]:g} -> {v:g}" in text
    # The optimizer's state (AdamW moments, SGD momentum buffers) is the checkpoint's.
    assert len(resumed.optimizer.state) > 0
