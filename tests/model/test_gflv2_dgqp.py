"""GFLv2's Distribution-Guided Quality Predictor: the distribution statistics, its initial
value, the joint score trained with QFL, and gradients reaching the distributions through it."""

from __future__ import annotations

import math

import pytest
import torch

from gfldet.config import Config
from gfldet.model.build import build_model
from gfldet.model.fuse import prepare_for_inference
from gfldet.model.representations import distribution_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(quality: str = "dgqp", init_bias: float = 0.0) -> torch.nn.Module:
    cfg = Config()
    m = cfg.model
    m.num_classes = 2
    vars(m.backbone).update(depth=18, base_width=8)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4, quality=quality)
    m.head.dgqp.init_bias = init_bias
    torch.manual_seed(0)
    return build_model(cfg.model)


def test_distribution_statistics_by_hand():
    # One location; the left edge's distribution over 5 bins, the others uniform.
    probs = torch.full((1, 4, 5, 1, 1), 0.2)
    probs[0, 0, :, 0, 0] = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.05])
    stats = distribution_statistics(probs, topk=4, add_mean=True)
    assert stats.shape == (1, 20, 1, 1)
    left = [0.5, 0.3, 0.1, 0.05, (0.5 + 0.3 + 0.1 + 0.05) / 4]  # top-4, decreasing, and mean
    torch.testing.assert_close(stats[0, :5, 0, 0], torch.tensor(left))
    torch.testing.assert_close(stats[0, 5:, 0, 0], torch.full((15,), 0.2))
    no_mean = distribution_statistics(probs, topk=2, add_mean=False)
    torch.testing.assert_close(no_mean[0, :, 0, 0], torch.tensor([0.5, 0.3] + [0.2] * 6))


def test_dgqp_starts_at_sigmoid_of_init_bias():
    """I starts at 0.5 as the official code's, or at sigmoid(init_bias): the last conv's
    weights are N(0, 0.01), so the statistics move it by far less than 0.01."""
    for bias, expect in ((0.0, 0.5), (4.0, torch.sigmoid(torch.tensor(4.0)).item())):
        model = tiny(init_bias=bias)
        feats = [torch.randn(1, 16, 4, 4)]
        _, _, quality = model.head(feats)
        assert quality.shape == (1, 16, 1)
        assert torch.allclose(quality, torch.full_like(quality, expect), atol=1e-3)


def test_the_joint_score_is_trained_with_qfl_on_probabilities():
    model = tiny()
    # One location at (0, 0), stride 8, made positive for one gt (see test_ablations).
    cls = torch.tensor([[[0.3, -1.2]]])
    quality = torch.tensor([[[0.6]]])  # DGQP's I for this location
    reg = torch.zeros(1, 1, 68)
    targets = [
        {
            "img_size": (64, 64),
            "boxes": torch.tensor([[-8.0, -8, 8, 8]]),
            "labels": torch.tensor([1]),
        }
    ]
    points, strides = torch.zeros(1, 2), torch.full((1,), 8.0)
    losses = model.losses(cls, reg, points, strides, [(1, 1)], targets, quality)
    # The uniform distributions decode to 8 bins = 8 strides per edge: box [-8, -8, 8, 8] in
    # strides, whose IoU with the gt box [-1, -1, 1, 1] is 4/256.
    y, p = 4 / 256, torch.sigmoid(cls[0, 0]) * 0.6

    def bce(p: float, t: float) -> float:
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expect = bce(p[0].item(), 0) * p[0].item() ** 2 + bce(p[1].item(), y) * abs(y - p[1]) ** 2
    torch.testing.assert_close(losses["loss_qfl"], torch.tensor(float(expect)))
    # GIoU weighted by the best joint score (detached; its sum < 1 is not clamped up here:
    # w / max(w, 1) with w < 1 keeps w): the predicted box encloses the gt, so 1 - GIoU = 1 - IoU.
    w = p.max().item()
    torch.testing.assert_close(losses["loss_giou"], torch.tensor(2.0 * w * (1 - 4 / 256)))


def test_the_distributions_are_trained_through_the_quality_predictor():
    model = tiny().train()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    targets = [
        {
            "img_size": (64, 96),
            "boxes": torch.tensor([[10.0, 8, 50, 40]]),
            "labels": torch.tensor([1]),
        }
        for _ in range(2)
    ]
    losses = model(images, targets)
    assert set(losses) == {"loss_qfl", "loss_giou", "loss_dfl"}
    losses["loss_qfl"].backward()  # QFL alone: it reaches gfl_reg only through DGQP
    assert model.head.gfl_reg.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.head.reg_conf.parameters())
    # Scores at test time: sigmoid(cls) x I, in (0, 1), the same after BN folding.
    model.eval()
    meta = [{"img_size": (64, 96)}]
    model.test.score_thr = 0.0
    det = model.predict(images[:1], meta)[0]
    fast = prepare_for_inference(model).predict(images[:1], meta)[0]
    assert len(det["scores"]) > 0 and (det["scores"] < 0.01).all()  # prior 0.01 x I < 1
    torch.testing.assert_close(fast["scores"], det["scores"], atol=1e-6, rtol=1e-4)
