"""gfldet.model.head: the GFL head's outputs, their location order and per-level scales, and
its conv/norm variants (a training step, BatchNorm folding, ONNX export)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gfldet.model.build import build_model
from gfldet.model.fuse import prepare_for_inference
from gfldet.model.head import GFLHead, Scale
from gfldet.model.options import HeadOptions
from tests.helpers import tiny_backbone_config, train_predict_fold_export

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(
            {"conv": "depthwise", "norm": "bn", "per_level_norm": True}, id="dw-bn-per-level"
        ),
        pytest.param({"conv": "depthwise", "norm": "gn"}, id="dw-gn", marks=pytest.mark.slow),
        pytest.param({"conv": "standard", "norm": "bn"}, id="bn"),
        pytest.param(
            {"conv": "standard", "norm": "bn", "per_level_norm": True, "stacked_convs": 3},
            id="bn-per-level-3",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_head_variants_train_a_step_fold_and_export(head, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_backbone_config(**head)
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


def test_head_output_shapes_prior_and_scales():
    torch.manual_seed(0)
    opts = HeadOptions(feat_channels=16, stacked_convs=1, num_groups=4)
    head = GFLHead(num_classes=5, in_channels=16, options=opts)
    sizes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    feats = [torch.randn(2, 16, h, w) for h, w in sizes]
    with torch.no_grad():
        cls, reg, quality = head(feats)
    a = sum(h * w for h, w in sizes)
    assert quality is None and not hasattr(head, "gfl_quality")  # GFL: no separate branch
    assert cls.shape == (2, a, 5)
    assert reg.shape == (2, a, 4 * 17)
    assert abs(cls.sigmoid().mean().item() - 0.01) < 1e-3
    assert len(head.scales) == 5
    assert all(isinstance(s, Scale) and s.scale.item() == 1.0 for s in head.scales)
    assert torch.allclose(head.gfl_cls.bias, torch.full((5,), -math.log(99)))


def test_head_location_order_and_per_level_scale():
    # Locations are row-major within a level, levels in order; the Scale acts per level.
    torch.manual_seed(0)
    opts = HeadOptions(feat_channels=8, stacked_convs=1, num_groups=4, reg_max=4)
    head = GFLHead(num_classes=2, in_channels=8, num_levels=2, options=opts)
    feats = [torch.randn(1, 8, 2, 3), torch.randn(1, 8, 1, 2)]
    with torch.no_grad():
        head.scales[1].scale.fill_(3.0)
        cls, reg, _ = head(feats)
        c0 = head.gfl_cls(head.cls_convs[0](feats[0]))  # [1, 2, 2, 3]
        r1 = head.gfl_reg(head.reg_convs[0](feats[1]))  # [1, 20, 1, 2]
    torch.testing.assert_close(cls[0, 4], c0[0, :, 1, 1])  # (row 1, col 1) of level 0
    torch.testing.assert_close(reg[0, 7], 3.0 * r1[0, :, 0, 1])  # 6 + 1: level 1, col 1
