"""Every backbone type (model.backbone.type) trains a step, predicts, folds its BatchNorms and
exports to ONNX; torchvision backbones freeze their early stages. The larger torchvision
networks only run in the full suite (slow)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfldet.model.backbones import TorchvisionBackbone
from gfldet.model.build import BACKBONES, NECKS, build_model
from gfldet.model.options import BACKBONE_TYPES
from tests.helpers import tiny_backbone_config, train_predict_fold_export

pytestmark = pytest.mark.usefixtures("one_thread")

# gfldet's ResNet and the smallest torchvision network in the fast run; every other type
# (seconds each to build, train and export) in the full suite.
FAST = ("resnet", "mobilenet_v3_small")


@pytest.mark.parametrize(
    "backbone",
    [b if b in FAST else pytest.param(b, marks=pytest.mark.slow) for b in BACKBONE_TYPES],
)
def test_every_backbone_trains_a_step_predicts_folds_and_exports(backbone, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_backbone_config(backbone).model)
    assert model.backbone.strides == [8, 16, 32] and model.strides == [8, 16, 32, 64, 128]
    folded = train_predict_fold_export(model, tmp_path)
    # Every BatchNorm of the backbone is folded (ConvNeXt has LayerNorms only).
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert folded == bns and (bns > 0) == (backbone != "convnext_tiny")


def test_the_registry_covers_every_backbone_and_neck_type():
    assert set(BACKBONES) == set(BACKBONE_TYPES) and set(NECKS) == {"fpn", "pafpn"}


def test_frozen_stages_of_a_torchvision_backbone_freeze_up_to_stride_4():
    net = TorchvisionBackbone("mobilenet_v3_small", frozen_stages=1, norm_eval=True)
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if not p.requires_grad}
    # features 0 (stride 2) and 1 (stride 4) are frozen; from stride 8 on everything trains.
    assert frozen == {"0", "1"}
    net.train()
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert net.features[5].training
