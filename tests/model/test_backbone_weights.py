"""model.backbone.pretrained as users meet it: ResNet weights from a file or by torchvision's
name, torchvision's ImageNet weights from torch's hub cache (TORCH_HOME honoured, nothing
downloaded when the file is there), an offline error that says where to put the file, and
weight files read with the checkpoints' safe loader."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
import torchvision

from gfldet.config import Config
from gfldet.model.backbones import (
    ResNet,
    TorchvisionBackbone,
    hub_cache_file,
    load_backbone_weights,
)
from gfldet.model.build import build_model
from tests.helpers import bn_modules

pytestmark = pytest.mark.usefixtures("one_thread")

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


def _save_tv_resnet18(tmp_path, wrap: str | None = None):
    tv = torchvision.models.resnet18()
    with torch.no_grad():  # non-trivial BN statistics, so that they are checked too
        for bn in bn_modules(tv):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    state = tv.state_dict()
    path = tmp_path / "r18.pth"
    torch.save({wrap: state} if wrap else state, path)
    return path, state


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


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_load_pretrained_from_file(tmp_path, wrap):
    path, state = _save_tv_resnet18(tmp_path, wrap)
    net = ResNet(18, 64)
    assert not torch.equal(net.conv1.weight, state["conv1.weight"])
    load_backbone_weights(net, str(path))
    own = net.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


def test_load_pretrained_by_torchvision_name_without_network(monkeypatch, tmp_path):
    # The file torchvision would download, already in torch's hub cache ($TORCH_HOME/hub).
    tv = torchvision.models.resnet18()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1")
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), cached)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    net = ResNet(18, 64)
    load_backbone_weights(net, "ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_load_pretrained_without_num_batches_tracked(tmp_path):
    # Older torchvision weight files have no num_batches_tracked entries.
    path, state = _save_tv_resnet18(tmp_path)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    net = ResNet(18, 64)
    load_backbone_weights(net, str(path))
    assert torch.equal(net.layer3[0].bn2.running_var, state["layer3.0.bn2.running_var"])


def test_load_pretrained_wrong_depth_names_keys(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_backbone_weights(ResNet(18, 64), str(path))
    msg = str(info.value)
    assert "unexpected keys" in msg and "layer1.2.conv1.weight" in msg
    assert "missing keys" in msg
    assert str(path) in msg


def test_load_pretrained_wrong_width_mentions_shape(tmp_path):
    path, _ = _save_tv_resnet18(tmp_path)
    with pytest.raises(ValueError, match="shape") as info:
        load_backbone_weights(ResNet(18, 32), str(path))
    assert "conv1.weight" in str(info.value)


@pytest.mark.parametrize(
    "name", ["NoSuch_Weights.X", "ResNet18_Weights.NOPE", "nonsense", "no/such/file.pth"]
)
def test_load_pretrained_unknown_name_is_file_not_found(monkeypatch, name):
    def no_download(*args, **kwargs):
        raise AssertionError("load_pretrained tried to download")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(FileNotFoundError, match="model.backbone.pretrained") as info:
        load_backbone_weights(ResNet(18, 8), name)
    assert name in str(info.value)
