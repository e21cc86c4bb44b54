"""docs/extending.md's new head and new quality representation, as the page shows them: written
to files of their own, registered by importing them, named by a YAML config, then built,
trained, folded, exported, and trained through the CLI. Nothing in gfldet is edited."""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

import gfldet
from gfldet.cli import main
from gfldet.config import ConfigError, load_config
from gfldet.data.synth import shapes_overrides
from gfldet.inference.export import check_onnx, export_onnx
from gfldet.model.build import build_model
from gfldet.model.fuse import fold_batchnorms, prepare_for_inference
from gfldet.model.registry import HEADS, QUALITIES
from tests.helpers import REPO

PAGE = (REPO / "docs" / "extending.md").read_text()
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.base_width=8",
    "model.backbone.frozen_stages=-1",
    "model.backbone.norm_eval=false",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "model.head.num_groups=4",
    "model.test.score_thr=0.001",
]


def block(lang: str, first_line: str) -> str:
    """The page's fenced `lang` block whose first line is `first_line`."""
    found = re.search(rf"```{lang}\n({re.escape(first_line)}\n.*?)```", PAGE, re.S)
    assert found, f"docs/extending.md has no {lang} block starting with {first_line!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """The two example modules imported (which registers them) and their configs written
    (their `_base_` left out: the tests give the base settings)."""
    folder = tmp_path_factory.mktemp("extending")
    configs = {}
    for name in ("my_head", "my_quality"):
        (folder / f"{name}.py").write_text(block("python", f"# {name}.py"))
        text = block("yaml", f"# configs/{name}.yaml")
        configs[name] = folder / f"{name}.yaml"
        configs[name].write_text(re.sub(r"^_base_:.*\n", "", text, flags=re.M))
    sys.path.insert(0, str(folder))
    try:
        for name in ("my_head", "my_quality"):
            sys.modules.pop(name, None)
            importlib.import_module(name)
        yield configs
    finally:
        sys.path.remove(str(folder))
        HEADS.unregister("shared_tower")
        QUALITIES.unregister("joint_centerness")
        for name in ("my_head", "my_quality"):
            sys.modules.pop(name, None)


def batch() -> tuple[torch.Tensor, list[dict]]:
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    boxes = ([[10.0, 8, 50, 40], [60, 20, 90, 60]], [[5.0, 5, 30, 60], [40, 10, 80, 30]])
    targets = [
        {
            "img_size": (64, 96),
            "pad_size": (64, 96),
            "boxes": torch.tensor(b),
            "labels": torch.tensor([1, 2]),
        }
        for b in boxes
    ]
    return images, targets


def step_and_predict(model) -> dict[str, torch.Tensor]:
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    det = model.predict(images[:1], [{"img_size": (64, 96)}])[0]
    assert len(det["scores"]) > 0
    return losses


@pytest.mark.parametrize(
    ("quality", "cls", "layer"),
    [("joint", "qfl", None), ("centerness", "focal", "gfl_quality"), ("dgqp", "qfl", "reg_conf")],
)
def test_the_new_head_works_with_the_quality_representations(examples, quality, cls, layer):
    cfg = load_config(
        examples["my_head"], [*TINY, f"model.head.quality={quality}", f"model.loss.cls={cls}"]
    )
    assert cfg.model.head.type == "shared_tower"
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert type(model.head).__name__ == "SharedTowerHead"
    if layer:  # the quality representation's own layers, under their names
        assert any(k.startswith(f"head.{layer}.") for k in model.state_dict())
    losses = step_and_predict(model)
    assert ("loss_quality" in losses) == (quality == "centerness")


def test_the_new_head_is_prepared_for_inference_and_exports_to_onnx(examples, tmp_path):
    torch.manual_seed(0)
    model = build_model(load_config(examples["my_head"], TINY).model).eval()
    images = batch()[0][:1]
    meta = [{"img_size": (64, 96)}]
    fast = prepare_for_inference(model)  # the backbone's BatchNorms folded
    torch.testing.assert_close(
        fast.predict(images, meta)[0]["scores"], model.predict(images, meta)[0]["scores"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / "m.onnx", (64, 96))
    assert max(check_onnx(path, model, (64, 96)).values()) < 1e-4


def test_the_new_quality_trains_the_class_score_towards_its_target(examples):
    cfg = load_config(examples["my_quality"], TINY)
    assert (cfg.model.head.quality, cfg.model.loss.cls) == ("joint_centerness", "qfl")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert type(model.head.quality).__name__ == "JointCenterness"
    torch.manual_seed(0)
    plain = build_model(
        load_config(examples["my_quality"], [*TINY, "model.head.quality=joint"]).model
    )
    # Same network, same box losses; only the class targets differ.
    new, old = step_and_predict(model), step_and_predict(plain)
    assert new["loss_giou"] == old["loss_giou"] and new["loss_qfl"] != old["loss_qfl"]
    # Its soft targets need QFL or VFL, as GFL's joint score: the config check says so.
    with pytest.raises(ConfigError, match="'model.loss.cls'.*'focal'.*'joint_centerness'"):
        load_config(examples["my_quality"], [*TINY, "model.loss.cls=focal"])


def test_both_train_from_a_yaml_config_through_the_cli(examples, shapes, tmp_path):
    config = tmp_path / "both.yaml"
    config.write_text(examples["my_head"].read_text() + "    quality: joint_centerness\n")
    work = tmp_path / "w"
    sets = [
        f"work_dir={work}",
        "device=cpu",
        *TINY[1:],
        *shapes_overrides(shapes),
        "data.train.img_scale=[64,64]",
        "data.val.img_scale=[64,64]",
        "data.train.batch_size=4",
        "data.val.batch_size=4",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        "train.epochs=1",
        "train.max_iters=1",
    ]
    assert main(["train", "--config", str(config), "--set", *sets]) == 0
    assert json.loads((work / "metrics.json").read_text())["AP"] >= 0
    saved = load_config(work / "config.yaml")
    assert (saved.model.head.type, saved.model.head.quality) == ("shared_tower", "joint_centerness")
    model = build_model(copy.deepcopy(saved.model))
    assert type(model.head).__name__ == "SharedTowerHead"


def example_module(tmp_path: Path) -> Path:
    """docs/extending.md's backbone file, written where Python finds it."""
    text = (REPO / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(# my_backbone\.py\n.*?)```", text, re.S).group(1)
    (tmp_path / "my_backbone.py").write_text(code)
    return tmp_path


@pytest.mark.slow
def test_the_pages_backbone_plugs_in_through_the_cli(shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(example_module(tmp_path)))
    sys.modules.pop("my_backbone", None)
    monkeypatch.setenv("GFLDET_ALLOW_CUSTOM_MODULES", "")  # restored after the test
    work = tmp_path / "w"
    sets = [
        f"work_dir={work}",
        "model.backbone.type=my_backbone:TinyBackbone",
        "model.backbone.kwargs={width: 8}",
        *shapes_overrides(shapes),
        "data.train.img_scale=[64,64]",
        "data.val.img_scale=[64,64]",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        "train.max_iters=2",
        "train.epochs=1",
        "model.test.score_thr=0.001",
    ]
    config = str(REPO / "configs" / "shapes_demo.yaml")
    # A config alone does not import a module outside gfldet and torchvision.
    assert main(["train", "--config", config, "--set", *sets]) == 2
    assert "--allow-custom-modules my_backbone" in capsys.readouterr().err
    assert "my_backbone" not in sys.modules and not (work / "latest.pth").exists()
    allow = ["--allow-custom-modules", "my_backbone"]
    assert main(["train", "--config", config, *allow, "--set", *sets]) == 0
    assert json.loads((work / "metrics.json").read_text())["AP"] >= 0
    ckpt = str(work / "latest.pth")
    out = tmp_path / "infer"
    assert (
        main(
            [
                "infer",
                "--config",
                config,
                "--checkpoint",
                ckpt,
                str(shapes["val_img_dir"]),
                "--out-dir",
                str(out),
                *allow,
                "--set",
                *sets,
            ]
        )
        == 0
    )
    assert len(json.loads((out / "predictions.json").read_text())) == 3
    assert (
        main(
            [
                "export",
                "--config",
                config,
                "--checkpoint",
                ckpt,
                "--out",
                str(tmp_path / "m.onnx"),
                *allow,
                "--set",
                *sets,
            ]
        )
        == 0
    )
    model = gfldet.build_model(load_config(config, [*sets, "model.num_classes=6"]).model)
    assert type(model.backbone).__name__ == "TinyBackbone"
    assert fold_batchnorms(copy.deepcopy(model).eval()) == 10  # 5 stages x 2 conv-BN pairs
    capsys.readouterr()
    # Unimportable: a clear error.
    bad = load_config(config, [*sets, "model.num_classes=6", "model.backbone.type=nowhere:X"])
    monkeypatch.setenv("GFLDET_ALLOW_CUSTOM_MODULES", "nowhere")
    with pytest.raises(ValueError, match="cannot import"):
        gfldet.build_model(bad.model)
