"""The paper's ablations as config switches: every distinct quality / box / classification-loss
variant trains one step and predicts at a tiny size, and the new pieces (separate quality
branch, guided focal loss, Dirac and Gaussian boxes, bin width) match values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from gfldet.config import CHOICES, Config, load_config
from gfldet.model.build import build_model
from gfldet.model.detector import GFL
from gfldet.model.losses import classification_loss
from gfldet.model.representations import Integral, QualityBranch
from tests.helpers import ABLATIONS, SWITCHES, switches_of, two_images

pytestmark = pytest.mark.usefixtures("one_thread")


def switched_config(num_classes: int = 3, **switches) -> Config:
    """The tiny model with the given ablation switches (SWITCHES' keys)."""
    cfg = Config()
    m = cfg.model
    m.num_classes = num_classes
    vars(m.backbone).update(depth=18, base_width=8, frozen_stages=-1, norm_eval=False)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    m.test.score_thr = 0.001  # keep an untrained model's detections
    for section, key in SWITCHES:
        if key in switches:
            setattr(getattr(m, section), key, switches.pop(key))
    assert not switches, switches
    return cfg


def _variants() -> dict[str, dict]:
    """The distinct code paths among the configs (β changes no path), plus VFL."""
    out = {}
    for path in ABLATIONS:
        s = switches_of(load_config(path))
        s.pop("qfl_beta")
        if s["box"] != "general":
            s.pop("reg_max"), s.pop("bin_width"), s.pop("dfl_weight")
        key = "-".join(f"{v}" for v in s.values())
        out.setdefault(key, s)
    out["joint-general-vfl"] = {"quality": "joint", "box": "general", "cls": "vfl"}
    out["dgqp-general-qfl"] = {"quality": "dgqp", "box": "general", "cls": "qfl"}  # GFLv2
    return out


VARIANTS = _variants()


def one_location(
    model: GFL,
    box_px: list[float],
    cls_logits: list[float],
    reg: list[float],
    quality: float | None = None,
):
    """losses() of one location at (0, 0), stride 8, with one gt box: ATSS makes it positive
    (a single candidate's IoU is its own threshold; the point lies inside the box)."""
    cls = torch.tensor([[cls_logits]])
    q = None if quality is None else torch.tensor([[[quality]]])
    targets = [{"img_size": (64, 64), "boxes": torch.tensor([box_px]), "labels": torch.tensor([0])}]
    points, strides = torch.zeros(1, 2), torch.full((1,), 8.0)
    return model.losses(cls, torch.tensor([[reg]]), points, strides, [(1, 1)], targets, q)


def test_variants_cover_every_switch_value():
    values = {k: {v.get(k) for v in VARIANTS.values()} for k in ("quality", "box", "cls")}
    assert values["quality"] == set(CHOICES["model.head.quality"])
    assert values["box"] == set(CHOICES["model.head.box"])
    assert values["cls"] - {None} == set(CHOICES["model.loss.cls"])
    assert {v.get("dfl_weight") for v in VARIANTS.values()} >= {0.0, 0.25}
    assert {v.get("bin_width") for v in VARIANTS.values()} >= {0.5, 1.0, 2.0, 4.0}


@pytest.mark.parametrize("switches", VARIANTS.values(), ids=VARIANTS.keys())
def test_variant_trains_one_step_and_predicts(switches):
    torch.manual_seed(0)
    model = build_model(switched_config(**switches).model).train()
    head, lo = model.head, model.loss
    images, targets = two_images()
    losses = model(images, targets)
    cls_name = {"qfl": "loss_qfl", "focal": "loss_focal", "vfl": "loss_vfl"}[lo.cls]
    expect = {cls_name, "loss_giou"}
    if head.box.name == "general" and lo.dfl_weight > 0:
        expect.add("loss_dfl")
    if head.box.name == "gaussian":
        expect.add("loss_nll")
    if isinstance(head.quality, QualityBranch):
        expect.add("loss_quality")
    assert set(losses) == expect
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Every output channel of the head gets a signal from the losses: the separate quality
    # branch, the Gaussian's log-variances, every bin of the distributions.
    assert (head.gfl_reg.weight.grad.abs().sum((1, 2, 3)) > 0).all()
    assert (head.gfl_cls.weight.grad.abs().sum((1, 2, 3)) > 0).all()
    if hasattr(head, "gfl_quality"):
        assert head.gfl_quality.weight.grad.abs().sum() > 0

    # A batch without any gt box: only negatives, every loss finite.
    model.zero_grad()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model(images, [{"img_size": (96, 128), **empty}, {"img_size": (80, 100), **empty}])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_giou"].item() == 0.0
    sum(losses.values()).backward()

    results = model.predict(images, [{"img_size": (96, 128)}, {"img_size": (80, 100)}])
    assert model.training
    for res in results:
        k = len(res["scores"])
        assert k > 0 and res["boxes"].shape == (k, 4) and res["labels"].shape == (k,)
        assert (res["scores"][:-1] >= res["scores"][1:]).all()
        if head.box.name == "general":
            assert res["dists"].shape == (k, 4, head.reg_max + 1)
            torch.testing.assert_close(res["dists"].sum(-1), torch.ones(k, 4))
        else:
            assert "dists" not in res


def test_gaussian_nll_giou_and_focal_by_hand():
    model = build_model(
        switched_config(num_classes=2, quality="none", box="gaussian", cls="focal").model
    )
    # Target distances (l, t, r, b) = (1, 2, 3, 1) strides; predicted means (1, 2, 2, 1).
    means = [1.0, 2.0, 2.0, 1.0]
    log_var = [0.0, math.log(2.0), math.log(0.5), 0.0]
    reg = [math.log(m) for m in means] + log_var
    losses = one_location(model, [-8.0, -16, 24, 8], [0.0, 0.0], reg)
    assert set(losses) == {"loss_focal", "loss_giou", "loss_nll"}
    # σ = 0.5 at both classes, label 0: α(1−σ)^2·log 2 + (1−α)σ^2·log 2, over N_pos = 1.
    torch.testing.assert_close(losses["loss_focal"], torch.tensor(0.25 * math.log(2)))
    # weight w = max class score 0.5, normalised by max(Σw, 1) = 1.
    # Boxes [-1, -2, 2, 1] and [-1, -2, 3, 1]: IoU 9/12, enclosing = union: 1 − GIoU = 0.25.
    torch.testing.assert_close(losses["loss_giou"], torch.tensor(2.0 * 0.5 * 0.25))
    # NLL per edge: ½(log σ² + (t − μ)²/σ²) = 0, ½ log 2, ½(−log 2 + 1/0.5), 0 -> sum 1.
    torch.testing.assert_close(losses["loss_nll"], torch.tensor(0.25 * 0.5 * 1.0 / 4))


def test_dfl_targets_and_integral_round_trip_with_bin_width():
    n, bw = 16, 0.5  # bins 0, 0.5, ..., 8 strides
    model = build_model(switched_config(num_classes=1, bin_width=bw).model)
    # Target distances 1.3, 2, 3, 10 strides = 2.6, 4, 6, 20 bins; 20 is clamped to n − 0.1.
    bins = [(2, 0.4), (3, 0.6)], [(4, 1.0)], [(6, 1.0)], [(15, 0.1), (16, 0.9)]
    logits = torch.full((4, n + 1), -80.0)
    for e, mass in enumerate(bins):
        for i, p in mass:
            logits[e, i] = math.log(p)
    decoded = model.decode(logits.flatten())
    torch.testing.assert_close(decoded, torch.tensor([1.3, 2.0, 3.0, 7.95]))
    assert model.head.box.integral.project[-1].item() == n * bw
    losses = one_location(model, [-10.4, -16, 24, 80], [0.0], logits.flatten().tolist())
    # DFL's optimum is these two-bin distributions: the loss is their entropy.
    entropy = -(
        0.4 * math.log(0.4) + 0.6 * math.log(0.6) + 0.1 * math.log(0.1) + 0.9 * math.log(0.9)
    )
    torch.testing.assert_close(losses["loss_dfl"], torch.tensor(0.25 * 0.5 * entropy / 4))


def test_integral_bin_width_scales_the_expectation():
    logits = torch.randn(5, 4 * 13)
    torch.testing.assert_close(Integral(12, 2.5)(logits), Integral(12)(logits) * 2.5)


def test_dirac_decoding_and_quality_branch_multiply_into_scores_by_hand():
    model = build_model(
        switched_config(num_classes=2, quality="iou", box="dirac", cls="focal").model
    )
    model.test.score_thr, model.test.nms_pre = 0.1, 1000
    probs = torch.tensor([[[0.9, 0.1], [0.6, 0.3]]])
    cls = torch.log(probs / (1 - probs))
    quality = torch.tensor([[[0.0], [math.log(0.25 / 0.75)]]])  # sigmoid 0.5 and 0.25
    dist = torch.tensor([[1.0, 2.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0]])  # strides
    reg = dist.log()[None]
    points = torch.tensor([[32.0, 32.0], [8.0, 56.0]])
    strides = torch.tensor([8.0, 16.0])
    (res,) = model.postprocess(cls, reg, points, strides, [(1, 1), (1, 1)], (64, 64), None, quality)
    # scores: 0.9·0.5, 0.1·0.5, 0.6·0.25, 0.3·0.25 -> above 0.1: 0.45 and 0.15
    torch.testing.assert_close(res["scores"], torch.tensor([0.45, 0.15]))
    assert res["labels"].tolist() == [0, 0]
    # box = point −/+ distance·stride, clipped to the 64 x 64 image
    expect = torch.tensor([[24.0, 16.0, 56.0, 36.0], [0.0, 40.0, 24.0, 64.0]])
    torch.testing.assert_close(res["boxes"], expect)
    assert "dists" not in res


def test_guided_focal_loss_reweights_positives_and_keeps_their_sum():
    cfg = switched_config(num_classes=2, quality="iou_guided", box="dirac", cls="focal")
    model = build_model(cfg.model)
    cls = torch.tensor([[[0.3, -1.0], [-2.0, 0.5], [0.1, 0.2]]], requires_grad=True)
    labels = torch.tensor([[0, 1, 2]])  # two positives, one background
    pos = torch.tensor([0, 1])
    q = torch.tensor([0.8, 0.2])
    name, loss = classification_loss(
        cls[0], labels[0], torch.ones(3), torch.ones(3), model.loss, pos, q
    )
    assert name == "loss_focal"
    onehot = torch.tensor([[1.0, 0], [0, 1], [0, 0]])
    fl = sigmoid_focal_loss(cls[0], onehot, 0.25, 2.0, "none")
    f = fl.detach()[[0, 1], [0, 1]]
    w = q * f.sum() / (q * f).sum()
    torch.testing.assert_close(loss, fl.sum())  # the positives' total is unchanged
    (grad,) = torch.autograd.grad(loss, cls)
    weights = torch.ones(3, 2)
    weights[0, 0], weights[1, 1] = w[0], w[1]
    (expect,) = torch.autograd.grad((fl * weights).sum(), cls)
    torch.testing.assert_close(grad, expect)
    assert w[0] > 1 > w[1]  # the better-localised positive weighs more
