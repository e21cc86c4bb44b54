"""The network: ResNet backbone, FPN, GFL head, box utilities, the detector, checkpoints."""

from __future__ import annotations

import copy
import math
import os
import pickle
import stat

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import box_iou

from gfldet.config import Config
from gfldet.core.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from gfldet.core.options import to_dict
from gfldet.model.backbones import ResNet, load_backbone_weights
from gfldet.model.box_ops import aligned_box_iou, bbox2distance, distance2bbox, grid_points
from gfldet.model.build import build_model
from gfldet.model.detector import GFL
from gfldet.model.head import GFLHead, Scale
from gfldet.model.necks import FPN
from gfldet.model.options import HeadOptions
from gfldet.model.representations import Integral

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CPU is shared with other work: one intra-op thread is several times faster here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(num_classes: int = 3, **test_cfg) -> dict:
    cfg = Config()
    m = cfg.model
    m.num_classes = num_classes
    vars(m.backbone).update(depth=18, base_width=8, frozen_stages=-1, norm_eval=False)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    vars(m.test).update(test_cfg)
    return cfg


def tiny_model(seed: int = 0, num_classes: int = 3, **test_cfg) -> GFL:
    torch.manual_seed(seed)
    return build_model(tiny_cfg(num_classes, **test_cfg).model)


def shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def bn_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------- backbone


def test_default_model_has_official_gfl_r50_parameter_count():
    cfg = Config()
    cfg.model.num_classes = 80
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == 32_440_537
    # default frozen_stages=1: the stem and layer1 are not trained
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stem_l1 = sum(
        p.numel() for m in (model.backbone.conv1, model.backbone.bn1, model.backbone.layer1)
        for p in m.parameters()
    )  # fmt: skip
    assert frozen == stem_l1 > 0


@pytest.mark.parametrize(
    ("depth", "tv_builder", "out_channels"),
    [
        (18, torchvision.models.resnet18, [128, 256, 512]),
        (34, torchvision.models.resnet34, [128, 256, 512]),
        (50, torchvision.models.resnet50, [512, 1024, 2048]),
        (101, torchvision.models.resnet101, [512, 1024, 2048]),
    ],
)
def test_backbone_state_dict_matches_torchvision(depth, tv_builder, out_channels):
    with torch.device("meta"):
        ours, tv = ResNet(depth, 64), tv_builder()
    expect = {k: s for k, s in shapes(tv).items() if not k.startswith("fc.")}
    assert shapes(ours) == expect
    assert ours.out_channels == out_channels


def test_backbone_rejects_unknown_depth():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42, 8)


def test_backbone_output_strides_and_channels():
    net = ResNet(18, 8).eval()
    c3, c4, c5 = net(torch.randn(1, 3, 64, 96))
    assert c3.shape == (1, 16, 8, 12)
    assert c4.shape == (1, 32, 4, 6)
    assert c5.shape == (1, 64, 2, 3)
    assert net.out_channels == [16, 32, 64]


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


def test_frozen_stages_1():
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


def test_frozen_stages_0_and_minus_1():
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


def test_detector_train_reaches_backbone_norm_eval():
    cfg = tiny_cfg()
    vars(cfg.model.backbone).update(frozen_stages=1, norm_eval=True)
    model = build_model(cfg.model).train()
    assert model.training and model.head.training and model.backbone.layer2.training
    assert all(not bn.training for bn in bn_modules(model))
    assert all(gn.training for gn in model.head.modules() if isinstance(gn, nn.GroupNorm))


# ---------------------------------------------------------------- FPN


def test_fpn_shapes_strides_and_p6_from_p5_output():
    torch.manual_seed(0)
    backbone = ResNet(18, 8).eval()
    fpn = FPN(backbone.out_channels, 16, extra_levels=2)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 96, 128))
        outs = fpn(feats)
    assert len(outs) == 5
    h, w = 96, 128
    for o, s in zip(outs, [8, 16, 32, 64, 128]):
        assert o.shape == (1, 16, math.ceil(h / s), math.ceil(w / s))
    with torch.no_grad():
        lat = [conv(f) for conv, f in zip(fpn.lateral_convs, feats)]
        p5 = fpn.fpn_convs[2](lat[2])
        lat4 = lat[1] + lat[2].repeat_interleave(2, -1).repeat_interleave(2, -2)  # nearest x2
        p4 = fpn.fpn_convs[1](lat4)
        p6 = fpn.fpn_convs[3](p5)  # from the P5 output, not from C5 or the lateral
        p7 = fpn.fpn_convs[4](p6)  # no ReLU in between
    torch.testing.assert_close(outs[2], p5)
    torch.testing.assert_close(outs[1], p4)
    torch.testing.assert_close(outs[3], p6)
    torch.testing.assert_close(outs[4], p7)


def test_fpn_p6_input_is_p5_by_hook():
    fpn = FPN([16, 32, 64], 16)
    seen = {}
    fpn.fpn_convs[2].register_forward_hook(lambda m, i, o: seen.__setitem__("p5", o))
    fpn.fpn_convs[3].register_forward_hook(lambda m, i, o: seen.__setitem__("p6_in", i[0]))
    feats = [torch.randn(1, c, s, s) for c, s in ((16, 8), (32, 4), (64, 2))]
    fpn(feats)
    assert seen["p6_in"] is seen["p5"]


# ---------------------------------------------------------------- head


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


def test_integral():
    integral = Integral(16)
    uniform = torch.zeros(3, 4 * 17)
    torch.testing.assert_close(integral(uniform), torch.full((3, 4), 8.0))
    logits = torch.zeros(2, 4, 17)
    for e, b in enumerate([0, 3, 16, 7]):
        logits[0, e, b] = 50.0
    logits[1, :, 5] = 50.0
    out = integral(logits.flatten(1))
    torch.testing.assert_close(out, torch.tensor([[0.0, 3, 16, 7], [5.0, 5, 5, 5]]), atol=1e-4,
                               rtol=0)  # fmt: skip
    # half/half between two bins gives their midpoint
    two = torch.full((1, 4, 17), -50.0)
    two[..., 2] = two[..., 3] = 0.0
    torch.testing.assert_close(integral(two.flatten(1)), torch.full((1, 4), 2.5))


# ---------------------------------------------------------------- box ops


def test_grid_points_order_and_values():
    points, strides = grid_points([(2, 3), (1, 2)], [8, 16])
    expect = [(0, 0), (8, 0), (16, 0), (0, 8), (8, 8), (16, 8), (0, 0), (16, 0)]
    assert points.tolist() == [[float(x), float(y)] for x, y in expect]
    assert strides.tolist() == [8.0] * 6 + [16.0] * 2
    assert points.dtype == strides.dtype == torch.float32


def test_distance_box_round_trip_and_clipping():
    torch.manual_seed(0)
    pts = torch.rand(20, 2) * 100
    dist = torch.rand(20, 4) * 30
    boxes = distance2bbox(pts, dist)
    torch.testing.assert_close(boxes[:, :2], pts - dist[:, :2])
    torch.testing.assert_close(boxes[:, 2:], pts + dist[:, 2:])
    torch.testing.assert_close(bbox2distance(pts, boxes), dist, atol=1e-4, rtol=0)
    # clamping of the distances
    d = bbox2distance(torch.tensor([[10.0, 10]]), torch.tensor([[12.0, 0, 40, 11]]), 15.9)
    assert d.tolist() == [[0.0, 10.0, 15.899999618530273, 1.0]]
    # clipping to (h, w) = (50, 80): x to [0, 80], y to [0, 50]
    clipped = distance2bbox(
        torch.tensor([[5.0, 5], [70, 45]]),
        torch.tensor([[10.0, 10, 10, 10], [10, 10, 20, 20]]),
        max_shape=torch.tensor([50, 80]),
    )
    assert clipped.tolist() == [[0.0, 0.0, 15.0, 15.0], [60.0, 35.0, 80.0, 50.0]]
    # a batch with one (h, w) per image
    pts2 = torch.tensor([[[30.0, 30]], [[30.0, 30]]])
    d2 = torch.full((2, 1, 4), 25.0)
    out = distance2bbox(pts2, d2, max_shape=torch.tensor([[[40, 50]], [[100, 20]]]))
    assert out.tolist() == [[[5.0, 5.0, 50.0, 40.0]], [[5.0, 5.0, 20.0, 55.0]]]


def test_aligned_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4], [0, 0, 0, 0]])
    b = torch.tensor(
        [[5.0, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 3, 3], [0, 0, 0, 0]]
    )
    iou = aligned_box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([25 / 175, 1.0, 0.0, 4 / 16, 0.0]))


# ---------------------------------------------------------------- detector


def two_images():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8)
    targets = [
        {
            "img_size": (96, 128),
            "boxes": torch.tensor([[10.0, 20, 60, 90], [70, 10, 125, 60]]),
            "labels": torch.tensor([0, 2]),
        },
        {
            "img_size": (80, 100),
            "boxes": torch.tensor([[5.0, 5, 40, 30]]),
            "labels": torch.tensor([1]),
        },
    ]
    return images, targets


def test_training_forward_losses_and_gradients():
    model = tiny_model().train()
    images, targets = two_images()
    losses = model(images, targets)
    assert set(losses) == {"loss_qfl", "loss_giou", "loss_dfl"}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v) and v.item() > 0, k
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # frozen_stages=-1
    no_grad = [n for n, p in trainable if p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    # the regression branch gets a real (non-zero) signal from the box losses
    assert model.head.gfl_reg.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_frozen_parameters_get_no_gradient():
    cfg = tiny_cfg()
    vars(cfg.model.backbone).update(frozen_stages=1, norm_eval=True)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    images, targets = two_images()
    sum(model(images, targets).values()).backward()
    for n, p in model.named_parameters():
        if n.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1.")):
            assert p.grad is None, n
        else:
            assert p.grad is not None, n


def test_no_gt_boxes_losses_finite_and_box_losses_zero():
    model = tiny_model().train()
    images, _ = two_images()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    targets = [{"img_size": (96, 128), **empty}, {"img_size": (80, 100), **empty}]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_giou"].item() == 0.0 and losses["loss_dfl"].item() == 0.0
    assert losses["loss_qfl"].item() > 0  # every location is a negative
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_one_image_without_boxes_in_a_batch():
    model = tiny_model().train()
    images, targets = two_images()
    targets[1] = {
        **targets[1],
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    losses = model(images, targets)
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())


def test_preprocess_normalises_and_zeroes_padding():
    model = tiny_model()
    images, targets = two_images()
    x = model.preprocess(images, targets)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    expect = (images.float() - mean) / std
    expect[1, :, 80:, :] = 0
    expect[1, :, :, 100:] = 0
    torch.testing.assert_close(x, expect)
    assert x[1, :, :80, :100].abs().sum() > 0
    # no targets: nothing is zeroed
    torch.testing.assert_close(model.preprocess(images, None), (images.float() - mean) / std)
    # a float image in 0..255 is treated like uint8
    torch.testing.assert_close(model.preprocess(images.float(), targets), expect)


def test_predict_results_are_well_formed():
    model = tiny_model(score_thr=0.0095, max_per_img=30).train()
    images, _ = two_images()
    targets = [
        {"img_size": (96, 128), "scale_factor": (0.5, 0.5)},  # original 192 x 256
        {"img_size": (80, 100), "scale_factor": (2.0, 1.6)},  # original 50 x 50
    ]
    results = model.predict(images, targets)
    assert model.training and model.backbone.bn1.training  # train mode restored
    assert len(results) == 2
    for res, (h, w) in zip(results, [(192, 256), (50, 50)]):
        assert set(res) == {"boxes", "scores", "labels", "dists", "strides"}
        k = len(res["scores"])
        assert res["dists"].shape == (k, 4, 17)
        torch.testing.assert_close(res["dists"].sum(-1), torch.ones(k, 4))
        assert res["strides"].shape == (k,) and set(res["strides"].tolist()) <= set(model.strides)
        assert 0 < k <= 30
        assert res["boxes"].shape == (k, 4) and res["labels"].shape == (k,)
        boxes = res["boxes"]
        assert (boxes >= 0).all()
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
        assert (res["scores"] >= 0.0095).all()
        assert (res["scores"][:-1] >= res["scores"][1:]).all()
        assert res["labels"].dtype == torch.long
        assert ((res["labels"] >= 0) & (res["labels"] < 3)).all()
    # boxes of the first image reach past the padded 128 px because of the 0.5 scale
    assert results[0]["boxes"][:, 2].max() > 128


def test_predict_without_targets_clips_to_padded_image():
    model = tiny_model(score_thr=0.0095)
    images, _ = two_images()
    results = model.eval()(images)
    for res in results:
        assert (res["boxes"][:, 2] <= 128).all() and (res["boxes"][:, 3] <= 96).all()
        assert (res["boxes"] >= 0).all()


def test_confident_model_gives_exactly_max_per_img():
    model = tiny_model(max_per_img=25)
    with torch.no_grad():
        model.head.gfl_cls.bias.fill_(5.0)
        # distances of one stride per edge: small boxes that survive NMS
        bias = torch.full((4, 17), -10.0)
        bias[:, 1] = 10.0
        model.head.gfl_reg.bias.copy_(bias.flatten())
    images, _ = two_images()
    results = model.predict(images, [{"img_size": (96, 128)}, {"img_size": (80, 100)}])
    for res in results:
        assert len(res["scores"]) == 25
        assert (res["scores"] > 0.99).all()


def _hand_made(model: GFL, boxes_bins, cls_probs):
    """cls / reg for A locations all at (32, 32) with stride 8: boxes of `bins` strides."""
    n = model.head.reg_max
    a = len(cls_probs)
    reg = torch.full((1, a, 4, n + 1), -30.0)
    for i, bins in enumerate(boxes_bins):
        for e, b in enumerate(bins):
            reg[0, i, e, b] = 30.0
    probs = torch.tensor([cls_probs], dtype=torch.float32)
    cls = torch.log(probs / (1 - probs))
    points = torch.full((a, 2), 32.0)
    strides = torch.full((a,), 8.0)
    return cls, reg.flatten(2), points, strides, [(1, a)]


def test_classwise_nms_keeps_identical_boxes_of_different_classes():
    model = tiny_model(num_classes=3, score_thr=0.05)
    cls, reg, points, strides, sizes = _hand_made(
        model, [(2, 2, 2, 2)] * 3, [[0.9, 0.01, 0.01], [0.01, 0.8, 0.01], [0.7, 0.01, 0.01]]
    )
    (res,) = model.postprocess(cls, reg, points, strides, sizes, (64, 64), None)
    # location 2 (class 0, 0.7) is suppressed by location 0 (class 0, 0.9); class 1 survives
    assert res["labels"].tolist() == [0, 1]
    torch.testing.assert_close(res["scores"], torch.tensor([0.9, 0.8]))
    torch.testing.assert_close(res["boxes"], torch.tensor([[16.0, 16, 48, 48]] * 2))


def test_postprocess_returns_the_kept_detections_edge_distributions():
    # Locations 0 and 2 have the same box and class: NMS keeps 0 (0.9), drops 2 (0.7).
    model = tiny_model(num_classes=2, score_thr=0.05)
    cls, reg, points, strides, sizes = _hand_made(
        model, [(2, 2, 2, 2), (1, 3, 5, 7), (2, 2, 2, 2)], [[0.9, 0.01], [0.01, 0.8], [0.7, 0.01]]
    )
    (res,) = model.postprocess(cls, reg, points, strides, sizes, (64, 64), None)
    assert res["labels"].tolist() == [0, 1]
    dists = res["dists"]
    assert dists.shape == (2, 4, 17)
    expect = reg[0, [0, 1]].unflatten(-1, (4, 17)).softmax(-1)
    torch.testing.assert_close(dists, expect)
    assert dists.argmax(-1).tolist() == [[2, 2, 2, 2], [1, 3, 5, 7]]
    assert res["strides"].tolist() == strides[[0, 1]].tolist()
    # The expectation of each distribution, in pixels, gives back the box's edges (the box
    # itself is then clipped to the 64 x 64 image).
    edges = (dists @ torch.arange(17.0)) * 8
    torch.testing.assert_close(edges[1], torch.tensor([8.0, 24, 40, 56]), atol=1e-3, rtol=0)
    torch.testing.assert_close(res["boxes"][1], torch.tensor([24.0, 8, 64, 64]), atol=1e-3, rtol=0)


def test_nms_is_per_image():
    model = tiny_model(num_classes=2, score_thr=0.05)
    cls, reg, points, strides, sizes = _hand_made(model, [(2, 2, 2, 2)], [[0.9, 0.01]])
    cls, reg = cls.expand(2, -1, -1), reg.expand(2, -1, -1)
    results = model.postprocess(cls, reg, points, strides, sizes, (64, 64), None)
    assert [r["labels"].tolist() for r in results] == [[0], [0]]


def test_postprocess_decodes_clips_and_rescales():
    model = tiny_model(num_classes=2, score_thr=0.3)
    cls, reg, points, strides, sizes = _hand_made(
        model, [(2, 1, 3, 5), (1, 1, 1, 1)], [[0.9, 0.2], [0.1, 0.6]]
    )
    points[1] = torch.tensor([4.0, 60.0])
    targets = [{"img_size": (56, 60), "scale_factor": (2.0, 0.5)}]
    (res,) = model.postprocess(cls, reg, points, strides, sizes, (64, 64), targets)
    assert res["labels"].tolist() == [0, 1]
    # loc 0: (32-16, 32-8, 32+24, 32+40) -> clip to w 60, h 56 -> / (2, 0.5, 2, 0.5)
    # loc 1: (4-8, 60-8, 4+8, 60+8) -> (0, 52, 12, 56) -> / (2, 0.5, 2, 0.5)
    expect = torch.tensor([[8.0, 48, 28, 112], [0, 104, 6, 112]])
    torch.testing.assert_close(res["boxes"], expect, atol=1e-3, rtol=0)


def test_postprocess_nms_pre_and_score_threshold():
    # nms_pre=1 keeps only the best location per level before NMS
    model = tiny_model(num_classes=1, score_thr=0.05, nms_pre=1)
    cls, reg, points, strides, _ = _hand_made(
        model, [(1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1)], [[0.3], [0.9], [0.04]]
    )
    points = torch.tensor([[8.0, 8], [40, 40], [8, 40]])
    (res,) = model.postprocess(cls, reg, points, strides, [(1, 2), (1, 1)], (64, 64), None)
    # level 0 = locations 0, 1 -> only location 1; level 1 = location 2, below score_thr
    torch.testing.assert_close(res["scores"], torch.tensor([0.9]))
    torch.testing.assert_close(res["boxes"], torch.tensor([[32.0, 32, 48, 48]]))


def _overfit_sample():
    img = torch.full((1, 3, 96, 96), 30, dtype=torch.uint8)
    img[0, :, 12:56, 8:48] = torch.tensor([220, 40, 40], dtype=torch.uint8)[:, None, None]
    img[0, :, 40:88, 52:90] = torch.tensor([40, 200, 60], dtype=torch.uint8)[:, None, None]
    boxes = torch.tensor([[8.0, 12, 48, 56], [52, 40, 90, 88]])
    return img, [{"img_size": (96, 96), "boxes": boxes, "labels": torch.tensor([0, 1])}]


def test_overfit_one_image():
    torch.manual_seed(0)
    cfg = tiny_cfg(num_classes=2, score_thr=0.0, max_per_img=10)
    cfg.model.neck.out_channels = 32
    vars(cfg.model.head).update(feat_channels=32, num_groups=8)
    model = build_model(cfg.model).train()
    img, targets = _overfit_sample()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(60):
        loss = sum(model(img, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.5 * history[0], (history[0], history[-1])
    (det,) = model.predict(img, [{"img_size": (96, 96)}])
    top_boxes, top_labels = det["boxes"][:5], det["labels"][:5]
    iou = box_iou(top_boxes, targets[0]["boxes"])  # [5, 2]
    for g, label in enumerate(targets[0]["labels"].tolist()):
        hit = (iou[:, g] > 0.5) & (top_labels == label)
        assert hit.any(), (g, iou[:, g], top_labels)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    state = {"model": model.state_dict(), "epoch": 3, "iter": 120, "cfg": to_dict(tiny_cfg())}
    path = tmp_path / "sub" / "ckpt.pth"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["iter"] == 120 and loaded["cfg"] == to_dict(tiny_cfg())
    other = tiny_model(seed=1)
    assert not torch.equal(other.head.gfl_reg.weight, model.head.gfl_reg.weight)
    load_model_weights(other, loaded, path)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]


def test_bare_state_dict_is_accepted(tmp_path):
    model = tiny_model()
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path)
    assert set(loaded) == {"model"}
    other = tiny_model(seed=5)
    load_model_weights(other, loaded, path)
    assert torch.equal(other.head.gfl_cls.weight, model.head.gfl_cls.weight)


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "text",
    [
        '{"model": {"w": 1}}\n',
        "#!/bin/sh\necho hi\n",
        "",
        pytest.param("train:\n  epochs: 3\n", id="yaml-config"),
        pytest.param("this is not a checkpoint\n", id="sentence"),
        pytest.param("hello world\n", id="hello"),
    ],
)
def test_load_checkpoint_text_file(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_truncated_and_wrong_content(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint({"model": tiny_model().state_dict()}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pth"):
        load_checkpoint(cut)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="tensor.pth"):
        load_checkpoint(tensor)
    nomodel = tmp_path / "nomodel.pth"
    torch.save({"epoch": 1}, nomodel)
    with pytest.raises(ValueError, match="nomodel.pth"):
        load_checkpoint(nomodel)


class Payload:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    def __init__(self):
        self.value = 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_checkpoint_refuses_code(tmp_path):
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": Payload(marker)}))
    zipped = tmp_path / "zipped.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload(marker)}, zipped)
    custom = tmp_path / "custom.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Custom()}, custom)
    for path in (raw, zipped, custom):
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
        assert not marker.exists()
    # the payload is live: a plain unpickler does run it
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_load_model_weights_other_architecture(tmp_path):
    small = tiny_model(num_classes=3)
    cfg = tiny_cfg(num_classes=5)
    cfg.model.head.stacked_convs = 2
    other = build_model(cfg.model)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError) as info:
        load_model_weights(other, {"model": small.state_dict()}, tmp_path / "x.pth")
    msg = str(info.value)
    assert "x.pth" in msg
    assert "missing: head.cls_convs.1.conv.weight" in msg
    assert "unexpected" not in msg  # small's keys are all in other
    assert "shape: head.gfl_cls.weight (3, 16, 3, 3) vs (5, 16, 3, 3)" in msg
    for k, v in other.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match=r"unexpected: head\.cls_convs\.1\.conv\.weight"):
        load_model_weights(small, {"model": other.state_dict()}, "y.pth")


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    before = path.read_bytes()

    for exc in (OSError("disk full"), KeyboardInterrupt()):

        def broken_save(obj, f, *args, exc=exc, **kwargs):
            f.write(b"partial garbage")
            raise exc

        monkeypatch.setattr(torch, "save", broken_save)
        with pytest.raises(type(exc)):
            save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_saved_checkpoint_has_normal_permissions(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": {"w": torch.ones(1)}}, path)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.ones(1)}}, plain)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_fpn_gradients_are_finite_under_cpu_bfloat16_on_one_pixel_wide_maps(one_thread):
    # torch's oneDNN bfloat16 backward of a strided conv over a map 1 pixel wide returns NaN
    # weight gradients (uninitialised memory, so not on every call): P6/P7 of images <= 64 px.
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], 16)
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    for _ in range(20):
        garbage = [torch.full((1 << 12,), float("nan"), dtype=torch.bfloat16) for _ in range(64)]
        del garbage
        fpn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = fpn(feats)
        assert [o.shape[-1] for o in outs] == [8, 4, 2, 1, 1]
        # The wide maps stay in bfloat16; the one-pixel P7 comes from the float32 fallback.
        assert outs[0].dtype == torch.bfloat16 and outs[4].dtype == torch.float32
        sum(o.float().sum() for o in outs).backward()
        assert all(torch.isfinite(p.grad).all() for p in fpn.parameters())
