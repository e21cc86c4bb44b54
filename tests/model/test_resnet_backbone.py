"""gfldet.model.backbones.ResNet: torchvision's layout, output strides, frozen stages and
norm_eval."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from gfldet.model.backbones import ResNet
from tests.helpers import bn_modules

pytestmark = pytest.mark.usefixtures("one_thread")


def param_shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    ("depth", "tv_builder", "out_channels"),
    [
        (18, torchvision.models.resnet18, [128, 256, 512]),
        (34, torchvision.models.resnet34, [128, 256, 512]),
        (50, torchvision.models.resnet50, [512, 1024, 2048]),
        (101, torchvision.models.resnet101, [512, 1024, 2048]),
    ],
)
def test_state_dict_matches_torchvision(depth, tv_builder, out_channels):
    with torch.device("meta"):
        ours, tv = ResNet(depth, 64), tv_builder()
    expect = {k: s for k, s in param_shapes(tv).items() if not k.startswith("fc.")}
    assert param_shapes(ours) == expect
    assert ours.out_channels == out_channels


def test_an_unknown_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42, 8)


def test_output_strides_and_channels():
    net = ResNet(18, 8).eval()
    c3, c4, c5 = net(torch.randn(1, 3, 64, 96))
    assert c3.shape == (1, 16, 8, 12)
    assert c4.shape == (1, 32, 4, 6)
    assert c5.shape == (1, 64, 2, 3)
    assert net.out_channels == [16, 32, 64]


def test_frozen_stages_1_freezes_the_stem_and_the_first_stage():
    net = ResNet(18, 8, frozen_stages=1, norm_eval=False)
    for name, p in net.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        assert p.requires_grad is not frozen, name
    net.train()
    for m in (net.conv1, net.bn1, *net.layer1.modules()):
        assert not m.training
    for m in (net, *net.layer2.modules(), *net.layer4.modules()):
        assert m.training
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert not net.layer1.training and net.layer2.training


def test_frozen_stages_0_freezes_the_stem_and_minus_1_nothing():
    net = ResNet(18, 8, frozen_stages=0, norm_eval=False)
    assert not net.conv1.weight.requires_grad and not net.bn1.weight.requires_grad
    assert all(p.requires_grad for p in net.layer1.parameters())
    net = ResNet(18, 8, frozen_stages=-1, norm_eval=False)
    assert all(p.requires_grad for p in net.parameters())


def test_norm_eval_freezes_batchnorm_statistics():
    torch.manual_seed(0)
    net = ResNet(18, 8, frozen_stages=-1, norm_eval=True).train()
    assert net.training and net.layer2.training
    assert all(not bn.training for bn in bn_modules(net))
    before = copy.deepcopy(net.state_dict())
    net(torch.randn(2, 3, 64, 64) * 3 + 1)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_without_norm_eval_batchnorm_trains():
    torch.manual_seed(0)
    net = ResNet(18, 8, frozen_stages=-1, norm_eval=False).train()
    assert all(bn.training for bn in bn_modules(net))
    before = net.layer2[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.equal(net.layer2[0].bn1.running_mean, before)
