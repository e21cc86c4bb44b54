"""A config is data (issue 19): a `module:Class` backbone builds only nn.Module classes, from
gfldet, torchvision or modules the user allowed (checked before anything is imported); a
hostile config runs nothing, and every mistake is one line naming the key."""

from __future__ import annotations

import sys

import pytest
import torch

from gfldet.cli import main
from gfldet.config import Config, load_config
from gfldet.core.checkpoint import save_checkpoint
from gfldet.model.build import ALLOW_ENV, allowed_module, build_model
from gfldet.model.options import ModelOptions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_allowance(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "")  # whatever the environment says; restored afterwards


def model_options(type_name: str, **kwargs) -> ModelOptions:
    m = Config().model
    m.num_classes = 3
    m.backbone.type, m.backbone.kwargs = type_name, kwargs
    return m


def build_error(type_name: str, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        build_model(model_options(type_name, **kwargs))
    msg = str(info.value)
    assert "\n" not in msg and f"model.backbone.type {type_name!r}" in msg
    return msg


def hostile_config(tmp_path, target):
    path = tmp_path / "hostile.yaml"
    path.write_text(
        f'model:\n  backbone:\n    type: "os:system"\n    kwargs: {{command: "touch {target}"}}\n'
    )
    return path


@pytest.mark.parametrize("allow", ["", "*", "os"])
def test_the_hostile_config_of_the_issue_writes_no_file(tmp_path, monkeypatch, allow):
    monkeypatch.setenv(ALLOW_ENV, allow)  # not even `*` allows the standard library
    target = tmp_path / "pwned"
    cfg = load_config(hostile_config(tmp_path, target), ["model.num_classes=3"])
    with pytest.raises(ValueError, match="refused.*standard library"):
        build_model(cfg.model)
    assert not target.exists()


def test_the_hostile_config_through_the_cli_writes_no_file(tmp_path, capsys):
    target = tmp_path / "pwned"
    config = hostile_config(tmp_path, target)
    checkpoint = tmp_path / "model.pth"
    save_checkpoint({"model": {"w": torch.zeros(1)}, "classes": ["a", "b", "c"]}, checkpoint)
    args = [
        "--config",
        str(config),
        "--checkpoint",
        str(checkpoint),
        "--allow-custom-modules",
        "*",
        "--set",
        "model.num_classes=3",
    ]
    code = main(["export", *args, "--out", str(tmp_path / "m.onnx")])
    assert code == 2 and not target.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "standard library" in err


@pytest.mark.parametrize(
    "type_name",
    ["subprocess:Popen", "builtins:eval", "os:system", "shutil:rmtree", "importlib:import_module"],
)
def test_the_standard_library_is_refused(type_name):
    assert "standard library" in build_error(type_name)


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [
        ("torchvision.models:resnet18", "function"),
        ("gfldet.model.build:ALLOW_ENV", "str"),
        ("gfldet.model.options:ModelOptions", "type"),
    ],
)
def test_anything_but_an_nn_module_class_is_refused(type_name, kind):
    msg = build_error(type_name)
    assert f"it is a {kind}, not an nn.Module class" in msg


def test_a_module_outside_gfldet_and_torchvision_needs_an_opt_in_before_it_is_imported(
    tmp_path, monkeypatch
):
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom torch import nn\nclass Net(nn.Module):\n"
        "    out_channels, strides = [8, 16, 32], [8, 16, 32]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = build_error("side_effect_mod:Net")
    assert "--allow-custom-modules side_effect_mod" in msg and f"{ALLOW_ENV}=side_effect_mod" in msg
    assert not marker.exists() and "side_effect_mod" not in sys.modules
    monkeypatch.setenv(ALLOW_ENV, "other, side_effect_mod")
    # Allowed: imported and built (its forward is not a backbone's, which GFL does not check).
    msg = build_error("side_effect_mod:Net", width=3)
    assert marker.exists() and "cannot build it with model.backbone.kwargs {'width': 3}" in msg
    sys.modules.pop("side_effect_mod", None)


def test_allowed_modules_match_whole_names():
    assert allowed_module("gfldet.model.backbones") and allowed_module("torchvision.models")
    assert not allowed_module("torch.nn") and not allowed_module("gfldetx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ALLOW_ENV, "my_pkg.nets")
        assert allowed_module("my_pkg.nets") and allowed_module("my_pkg.nets.tiny")
        assert not allowed_module("my_pkg") and not allowed_module("my_pkg.netsx")
        mp.setenv(ALLOW_ENV, "*")
        assert allowed_module("anything.at_all") and not allowed_module("os.path")


def test_custom_backbone_mistakes_are_one_line_errors(monkeypatch):
    assert "--allow-custom-modules torch" in build_error("torch.nn:Identity")
    monkeypatch.setenv(ALLOW_ENV, "torch")
    assert "Identity is not a backbone: it needs `out_channels` and `strides`" in build_error(
        "torch.nn:Identity"
    )
    msg = build_error("torchvision.models:MobileNetV2", no_such_arg=1)
    assert "cannot build it with model.backbone.kwargs {'no_such_arg': 1}" in msg
    assert "cannot import" in build_error("torchvision.models:NoSuchNet")
    # A torchvision network that is an nn.Module but not a backbone.
    assert "not a backbone" in build_error("torchvision.models:MobileNetV2")


def test_an_allowed_backbone_class_of_gfldet_builds(one_thread):
    m = model_options("gfldet.model.backbones:ResNet", depth=18, base_width=8)
    model = build_model(m)
    assert type(model.backbone).__name__ == "ResNet"
    det = model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), [{"img_size": (64, 64)}])
    assert len(det) == 1
