"""gfldet.model.detector.GFL: its parts' interface, training losses and gradients, images
without boxes, preprocessing, prediction and post-processing (decoding, clipping, NMS)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from gfldet.model.build import build_model
from gfldet.model.detector import GFL
from gfldet.model.head import GFLHead
from gfldet.model.necks import FPN
from gfldet.model.options import HeadOptions
from tests.helpers import bn_modules, tiny_backbone_config, tiny_config, tiny_model, two_images

pytestmark = pytest.mark.usefixtures("one_thread")


MEAN = [123.675, 116.28, 103.53]


STD = [58.395, 57.12, 57.375]


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


def _overfit_sample():
    img = torch.full((1, 3, 96, 96), 30, dtype=torch.uint8)
    img[0, :, 12:56, 8:48] = torch.tensor([220, 40, 40], dtype=torch.uint8)[:, None, None]
    img[0, :, 40:88, 52:90] = torch.tensor([40, 200, 60], dtype=torch.uint8)[:, None, None]
    boxes = torch.tensor([[8.0, 12, 48, 56], [52, 40, 90, 88]])
    return img, [{"img_size": (96, 96), "boxes": boxes, "labels": torch.tensor([0, 1])}]


def test_parts_that_miss_the_interface_are_named_in_the_error():
    head = GFLHead(3, 16, 5, HeadOptions(feat_channels=16, stacked_convs=1, num_groups=4))
    with pytest.raises(TypeError, match="backbone.*out_channels"):
        GFL(nn.Conv2d(3, 8, 3), FPN([8, 16, 32], 16), head)
    backbone = build_model(tiny_backbone_config().model).backbone
    with pytest.raises(ValueError, match="head has 5 levels, the neck 4"):
        GFL(backbone, FPN(backbone.out_channels, 16, 1), head)
    with pytest.raises(TypeError, match=r"head \(Conv2d\).*`num_classes`, `box` and `quality`"):
        GFL(backbone, FPN(backbone.out_channels, 16), nn.Conv2d(16, 3, 3))
    head.quality = "joint"
    with pytest.raises(TypeError, match="head's `quality` .* must be .*QualityRepresentation"):
        GFL(backbone, FPN(backbone.out_channels, 16), head)


def test_detector_train_reaches_backbone_norm_eval():
    cfg = tiny_config()
    vars(cfg.model.backbone).update(frozen_stages=1, norm_eval=True)
    model = build_model(cfg.model).train()
    assert model.training and model.head.training and model.backbone.layer2.training
    assert all(not bn.training for bn in bn_modules(model))
    assert all(gn.training for gn in model.head.modules() if isinstance(gn, nn.GroupNorm))


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
    cfg = tiny_config()
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


def test_one_image_without_boxes_in_a_batch_keeps_the_others_losses():
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


@pytest.mark.slow
def test_a_few_steps_overfit_one_image():
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=2, score_thr=0.0, max_per_img=10)
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
