"""A config is data: issue 19's hostile config (`model.backbone.type: "os:system"` with a shell
command in `kwargs`) runs nothing under any command that builds a model, even with
`--allow-custom-modules '*'`, and each command says why in one line."""

from __future__ import annotations

import pytest
import torch

from gfldet.cli import main
from gfldet.core.checkpoint import save_checkpoint
from gfldet.data.synth import shapes_overrides


@pytest.fixture
def hostile(tmp_path, shapes):
    """The hostile config (pointing at the tiny shapes data), a checkpoint, and the file its
    command would create."""
    target = tmp_path / "pwned"
    config = tmp_path / "hostile.yaml"
    config.write_text(
        f'model:\n  backbone:\n    type: "os:system"\n    kwargs: {{command: "touch {target}"}}\n'
    )
    checkpoint = tmp_path / "model.pth"
    save_checkpoint({"model": {"w": torch.zeros(1)}, "classes": list("abcdef")}, checkpoint)
    return config, checkpoint, target


def command_line(command: str, config: str, ckpt: str, tmp: str) -> list[str]:
    model = ["--config", config, "--checkpoint", ckpt]
    return {
        "train": ["train", "--config", config, "--work-dir", f"{tmp}/run"],
        "eval": ["eval", *model, "--out-dir", f"{tmp}/eval"],
        "infer": ["infer", *model, f"{tmp}/none.jpg", "--out-dir", f"{tmp}/infer"],
        "export": ["export", *model, "--out", f"{tmp}/m.onnx"],
        "data stats": ["data", "stats", "--config", config],
    }[command]


COMMANDS = ["train", "eval", "infer", "export", "data stats"]


@pytest.mark.parametrize("allow", [None, "*"])
@pytest.mark.parametrize("command", COMMANDS)
def test_the_hostile_config_runs_nothing_under_any_command(
    hostile, shapes, tmp_path, capsys, command, allow
):
    config, checkpoint, target = hostile
    (tmp_path / "none.jpg").write_bytes(b"")
    argv = command_line(command, str(config), str(checkpoint), str(tmp_path))
    argv += ["--set", *shapes_overrides(shapes), "model.num_classes=6"]
    if allow:
        argv += ["--allow-custom-modules", allow]
    assert main(argv) == 2
    assert not target.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "os:system" in err
    assert "standard library" in err or "--allow-custom-modules" in err
