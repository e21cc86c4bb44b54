"""model.backbone.pretrained as users meet it: torchvision's ImageNet weights from torch's hub
cache (TORCH_HOME honoured, nothing downloaded when the file is there), an offline error that
says where to put the file, and weight files read with the checkpoints' safe loader."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
import torchvision

from gfldet.config import Config
from gfldet.model.backbones import ResNet, hub_cache_file, load_backbone_weights
from gfldet.model.build import build_model

NAME = "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"
FILE = "shufflenetv2_x0.5-f707e7126e.pth"  # the file name of its url


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty hub cache under TORCH_HOME, and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def shufflenet_options(pretrained: str | None):
    m = Config().model
    m.num_classes = 3
    m.backbone.type, m.backbone.pretrained = "shufflenet_v2_x0_5", pretrained
    m.neck.out_channels, m.head.feat_channels, m.head.stacked_convs = 16, 16, 1
    m.head.num_groups = 4
    return m


def test_offline_the_error_says_where_to_put_the_file_and_how_to_train_from_scratch(
    offline, tmp_path
):
    with pytest.raises(FileNotFoundError) as info:
        build_model(shufflenet_options(NAME))
    msg = str(info.value)
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / FILE
    assert "\n" not in msg and len(offline) == 1
    assert f"model.backbone.pretrained: cannot download '{NAME}'" in msg
    assert f"put the file https://download.pytorch.org/models/{FILE} at {expected}" in msg
    assert "TORCH_HOME" in msg and "model.backbone.pretrained=null to train from scratch" in msg


def test_a_weight_file_placed_in_the_hub_cache_loads_without_network(offline, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.shufflenet_v2_x0_5()
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / FILE
    assert hub_cache_file(torchvision.models.get_weight(NAME)) == cached
    cached.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), cached)
    model = build_model(shufflenet_options(NAME))
    assert not offline  # nothing downloaded
    backbone = model.backbone.state_dict()
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in backbone.items())
    assert torch.equal(model.backbone.stage4[0].branch1[0].weight, tv.stage4[0].branch1[0].weight)


class RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("where", ["file", "hub_cache"])
@pytest.mark.parametrize("kind", ["text", "zip_pickle", "legacy_pickle", "not_a_state_dict"])
def test_a_bad_or_hostile_weight_file_is_a_one_line_error(offline, tmp_path, kind, where):
    marker = tmp_path / "code_ran"
    if where == "file":
        path = tmp_path / "weights.pth"
    else:
        path = tmp_path / "torch_home" / "hub" / "checkpoints" / FILE
        path.parent.mkdir(parents=True)
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "zip_pickle":
        torch.save({"state_dict": RunsCode(marker)}, path)
    elif kind == "legacy_pickle":
        path.write_bytes(pickle.dumps({"conv1.weight": RunsCode(marker)}, protocol=2))
    else:
        torch.save({"model": 5, "epoch": 3}, path)
    options = shufflenet_options(str(path) if where == "file" else NAME)
    with pytest.raises(ValueError) as info:
        build_model(options)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("model.backbone.pretrained: ")
    assert str(path) in msg or NAME in msg
    assert not marker.exists()
    if kind.endswith("pickle"):
        assert "refused" in msg


def test_a_state_dict_file_still_loads(tmp_path):
    tv = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": tv.state_dict()}, path)
    net = ResNet(18, 64)
    load_backbone_weights(net, str(path))
    assert torch.equal(net.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
