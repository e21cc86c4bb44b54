"""Checkpoint files that are not what they claim: one-line errors wherever they are loaded."""

from __future__ import annotations

import pytest
import torch

from gfldet.cli import main
from gfldet.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
DEMO = "configs/shapes_demo.yaml"
ODD = {
    "int": {"model": 5},
    "strings": {"model": {"k": "str"}},
    "list": {"model": [1, 2]},
    "int_keys": {"model": {0: torch.zeros(1)}},
    "ema": {"model": {"w": torch.zeros(1)}, "ema": 5},
    "classes": {"model": {"w": torch.zeros(1)}, "classes": 7},
}


@pytest.mark.parametrize("kind", ODD)
def test_load_checkpoint_refuses_entries_of_the_wrong_type(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    torch.save(ODD[kind], path)
    with pytest.raises(ValueError, match=rf"{kind}\.pth: not a gfldet checkpoint") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["int", "strings"])
@pytest.mark.parametrize("command", ["eval", "infer", "train"])
def test_commands_loading_an_odd_checkpoint_give_one_line(
    shapes, tiny_sets, tmp_path, capsys, kind, command
):
    path = tmp_path / f"{kind}.pth"
    torch.save(ODD[kind], path)
    sets = tiny_sets(tmp_path / "w")
    if command == "train":
        args = ["train", "--config", DEMO, "--set", *sets, f"model.init_from={path}"]
    elif command == "eval":
        args = ["eval", "--config", DEMO, "--checkpoint", str(path), "--set", *sets]
    else:
        args = [
            "infer",
            "--config",
            DEMO,
            "--checkpoint",
            str(path),
            "--out-dir",
            str(tmp_path / "out"),
            str(shapes["val_img_dir"]),
            "--set",
            *sets,
        ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{kind}.pth" in err, err
