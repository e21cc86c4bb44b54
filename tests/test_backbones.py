"""Every backbone type, both necks and the head's options: they build, train a step, predict,
fold their BatchNorms and export to ONNX; a backbone written outside gfldet plugs in."""

from __future__ import annotations

import copy
import json
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import gfldet
from gfldet.cli import main
from gfldet.config import Config, load_config
from gfldet.core.checkpoint import load_model_weights
from gfldet.data.synth import shapes_overrides
from gfldet.inference.export import check_onnx, export_onnx
from gfldet.model.backbones import TorchvisionBackbone, hub_cache_file, load_backbone_weights
from gfldet.model.build import BACKBONES, NECKS, build_model
from gfldet.model.detector import GFL
from gfldet.model.fuse import fold_batchnorms, prepare_for_inference
from gfldet.model.head import GFLHead
from gfldet.model.necks import FPN, PAFPN
from gfldet.model.options import BACKBONE_TYPES, HeadOptions

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(backbone: str = "resnet", **head) -> dict:
    cfg = Config()
    m = cfg.model
    m.num_classes = 3
    vars(m.backbone).update(type=backbone, frozen_stages=-1, norm_eval=False)
    if backbone == "resnet":
        vars(m.backbone).update(depth=18, base_width=8)
    m.neck.out_channels = 16
    vars(m.head).update({"feat_channels": 16, "stacked_convs": 1, "num_groups": 4, **head})
    m.test.score_thr = 0.001  # keep an untrained model's detections
    return cfg


def batch() -> tuple[torch.Tensor, list[dict]]:
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    boxes = ([[10.0, 8, 50, 40], [60, 20, 90, 60]], [[5.0, 5, 30, 60], [40, 10, 80, 30]])
    targets = [{"img_size": (64, 96), "pad_size": (64, 96), "boxes": torch.tensor(b),
                "labels": torch.tensor([1, 2])} for b in boxes]  # fmt: skip
    return images, targets


def train_predict_fold_export(model: GFL, tmp_path: Path) -> int:
    """One training step, predictions, BatchNorm folding and ONNX; returns BatchNorms folded."""
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_qfl", "loss_giou", "loss_dfl"}
    sum(losses.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    model.eval()
    meta = [{"img_size": (64, 96)}]
    det = model.predict(images[:1], meta)[0]
    assert len(det["scores"]) > 0
    fast = prepare_for_inference(model)
    folded = fold_batchnorms(copy.deepcopy(model).eval())
    fast_det = fast.predict(images[:1].contiguous(memory_format=torch.channels_last), meta)[0]
    torch.testing.assert_close(fast_det["scores"], det["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_det["boxes"], det["boxes"], atol=1e-2, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / "m.onnx", (64, 96))
    assert max(check_onnx(path, model, (64, 96)).values()) < 1e-4
    return folded


@pytest.mark.parametrize("backbone", BACKBONE_TYPES)
def test_every_backbone_trains_predicts_folds_and_exports(backbone, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(backbone).model)
    assert model.backbone.strides == [8, 16, 32] and model.strides == [8, 16, 32, 64, 128]
    folded = train_predict_fold_export(model, tmp_path)
    # Every BatchNorm of the backbone is folded (ConvNeXt has LayerNorms only).
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert folded == bns and (bns > 0) == (backbone != "convnext_tiny")


def test_the_registry_covers_every_type():
    assert set(BACKBONES) == set(BACKBONE_TYPES) and set(NECKS) == {"fpn", "pafpn"}


@pytest.mark.parametrize(
    "head",
    [
        {"conv": "depthwise", "norm": "bn", "per_level_norm": True},
        {"conv": "depthwise", "norm": "gn"},
        {"conv": "standard", "norm": "bn"},
        {"conv": "standard", "norm": "bn", "per_level_norm": True, "stacked_convs": 3},
    ],
    ids=["dw-bn-per-level", "dw-gn", "bn", "bn-per-level-3"],
)
def test_head_variants_train_fold_and_export(head, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(**head)
    cfg.model.neck.type = "pafpn"
    model = build_model(cfg.model)
    folded = train_predict_fold_export(model, tmp_path)
    head_bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.head.modules())
    assert folded == head_bns + sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    if head.get("per_level_norm"):
        tower = model.head.cls_convs[0]
        norms = tower.pwnorm if head["conv"] == "depthwise" else tower.bn
        assert isinstance(norms, nn.ModuleList) and len(norms) == 5
        fast = prepare_for_inference(model).head.cls_convs[0]  # one folded conv per level
        conv = fast.pointwise if head["conv"] == "depthwise" else fast.conv
        assert isinstance(conv, nn.ModuleList) and len(conv) == 5


def test_pafpn_adds_a_bottom_up_path():
    torch.manual_seed(0)
    feats = [torch.randn(1, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    fpn, pafpn = FPN([8, 16, 32], 16, 1), PAFPN([8, 16, 32], 16, 1)
    assert pafpn.strides == fpn.strides == [8, 16, 32, 64]
    outs = pafpn(feats)
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16), (1, 16, 8, 8), (1, 16, 4, 4),
                                              (1, 16, 2, 2)]  # fmt: skip
    # A change in C3 reaches P5 through PAFPN's bottom-up path; in the FPN it cannot.
    bumped = [feats[0] + 1, feats[1], feats[2]]
    assert not torch.allclose(pafpn(bumped)[2], outs[2])
    torch.testing.assert_close(fpn(bumped)[2], fpn(feats)[2])
    # MMDetection's PAFPN names.
    names = {k.split(".")[0] for k in pafpn.state_dict()}
    assert names == {"lateral_convs", "fpn_convs", "downsample_convs", "pafpn_convs"}


def test_frozen_stages_of_a_torchvision_backbone():
    net = TorchvisionBackbone("mobilenet_v3_small", frozen_stages=1, norm_eval=True)
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if not p.requires_grad}
    # features 0 (stride 2) and 1 (stride 4) are frozen; from stride 8 on everything trains.
    assert frozen == {"0", "1"}
    net.train()
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert net.features[5].training


def test_torchvision_weights_load_by_name_without_the_classifier(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the file already in torch's hub cache
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    cached = hub_cache_file(torchvision.models.get_weight(name))
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    tv = torchvision.models.mobilenet_v3_small()
    torch.save(tv.state_dict(), cached)
    net = TorchvisionBackbone("mobilenet_v3_small")
    load_backbone_weights(net, name)
    assert torch.equal(net.features[3].block[0][0].weight, tv.features[3].block[0][0].weight)
    assert net.classifier_keys == ("features.12.", "avgpool.", "classifier.")
    # Another network's weights do not fit: an error, never a partial load.
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), cached)
    with pytest.raises(ValueError, match="do not fit"):
        load_backbone_weights(net, name)


def test_lite_model_is_small():
    cfg = load_config(ROOT / "configs" / "gfl_lite_320_coco.yaml",
                      ["model.num_classes=80", "model.backbone.pretrained=null"])  # fmt: skip
    model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) <= 4_000_000
    assert model.strides == [8, 16, 32, 64] and model.head.box.channels == 4 * 8


def test_checkpoints_from_before_the_neck_was_named_load(tmp_path):
    model = build_model(tiny_cfg().model)
    old = {("fpn." + k[5:] if k.startswith("neck.") else k): v
           for k, v in model.state_dict().items()}  # fmt: skip
    fresh = build_model(tiny_cfg().model)
    load_model_weights(fresh, {"model": old}, tmp_path / "old.pth")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values()))  # fmt: skip


def test_parts_that_miss_the_interface_are_named():
    head = GFLHead(3, 16, 5, HeadOptions(feat_channels=16, stacked_convs=1, num_groups=4))
    with pytest.raises(TypeError, match="backbone.*out_channels"):
        GFL(nn.Conv2d(3, 8, 3), FPN([8, 16, 32], 16), head)
    backbone = build_model(tiny_cfg().model).backbone
    with pytest.raises(ValueError, match="head has 5 levels, the neck 4"):
        GFL(backbone, FPN(backbone.out_channels, 16, 1), head)
    with pytest.raises(TypeError, match=r"head \(Conv2d\).*`num_classes`, `box` and `quality`"):
        GFL(backbone, FPN(backbone.out_channels, 16), nn.Conv2d(16, 3, 3))
    head.quality = "joint"
    with pytest.raises(TypeError, match="head's `quality` .* must be .*QualityRepresentation"):
        GFL(backbone, FPN(backbone.out_channels, 16), head)


def example_module(tmp_path: Path) -> Path:
    """docs/extending.md's backbone file, written where Python finds it."""
    text = (ROOT / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(# my_backbone\.py\n.*?)```", text, re.S).group(1)
    (tmp_path / "my_backbone.py").write_text(code)
    return tmp_path


def test_the_extending_example_plugs_in(shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(example_module(tmp_path)))
    sys.modules.pop("my_backbone", None)
    monkeypatch.setenv("GFLDET_ALLOW_CUSTOM_MODULES", "")  # restored after the test
    work = tmp_path / "w"
    sets = [f"work_dir={work}", "model.backbone.type=my_backbone:TinyBackbone",
            "model.backbone.kwargs={width: 8}",
            *shapes_overrides(shapes),
            "data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]",
            "data.train.num_workers=0", "data.val.num_workers=0", "train.max_iters=2",
            "train.epochs=1", "model.test.score_thr=0.001"]  # fmt: skip
    config = str(ROOT / "configs" / "shapes_demo.yaml")
    # A config alone does not import a module outside gfldet and torchvision.
    assert main(["train", "--config", config, "--set", *sets]) == 2
    assert "--allow-custom-modules my_backbone" in capsys.readouterr().err
    assert "my_backbone" not in sys.modules and not (work / "latest.pth").exists()
    allow = ["--allow-custom-modules", "my_backbone"]
    assert main(["train", "--config", config, *allow, "--set", *sets]) == 0
    assert json.loads((work / "metrics.json").read_text())["AP"] >= 0
    ckpt = str(work / "latest.pth")
    out = tmp_path / "infer"
    assert main(["infer", "--config", config, "--checkpoint", ckpt, str(shapes["val_img_dir"]),
                 "--out-dir", str(out), *allow, "--set", *sets]) == 0  # fmt: skip
    assert len(json.loads((out / "predictions.json").read_text())) == 3
    assert main(["export", "--config", config, "--checkpoint", ckpt, "--out",
                 str(tmp_path / "m.onnx"), *allow, "--set", *sets]) == 0  # fmt: skip
    model = gfldet.build_model(load_config(config, [*sets, "model.num_classes=6"]).model)
    assert type(model.backbone).__name__ == "TinyBackbone"
    assert fold_batchnorms(copy.deepcopy(model).eval()) == 10  # 5 stages x 2 conv-BN pairs
    capsys.readouterr()
    # Unimportable: a clear error.
    bad = load_config(config, [*sets, "model.num_classes=6", "model.backbone.type=nowhere:X"])
    monkeypatch.setenv("GFLDET_ALLOW_CUSTOM_MODULES", "nowhere")
    with pytest.raises(ValueError, match="cannot import"):
        gfldet.build_model(bad.model)
