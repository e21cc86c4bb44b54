"""Golden tests of the GFL losses against values computed by hand from the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from gfldet.model.losses import (
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gfl_general(y: torch.Tensor, yl, yr, pl, pr, beta: float) -> torch.Tensor:
    """The general form: −|y − (yl·pl + yr·pr)|^β ((yr − y) log pl + (y − yl) log pr)."""
    return -((y - (yl * pl + yr * pr)).abs() ** beta) * ((yr - y) * pl.log() + (y - yl) * pr.log())


def test_qfl_by_hand():
    # One location, 3 classes, labelled class 1 with IoU target 0.7; σ = 0.4, 0.6, 0.2.
    sig = torch.tensor([[0.4, 0.6, 0.2]])
    logits = torch.log(sig / (1 - sig))
    loss = quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.7]), reduction="none")
    expect = [
        -(0.4**2) * math.log(0.6),  # y = 0: −σ^2 log(1 − σ)
        -(abs(0.7 - 0.6) ** 2) * (0.3 * math.log(0.4) + 0.7 * math.log(0.6)),
        -(0.2**2) * math.log(0.8),
    ]
    torch.testing.assert_close(loss, torch.tensor([expect]), rtol=1e-5, atol=1e-7)


def test_qfl_background_and_y_equal_1_and_reductions():
    sig = torch.tensor([[0.3, 0.9], [0.1, 0.5]])
    logits = torch.log(sig / (1 - sig))
    labels = torch.tensor([0, 2])  # second row is background (C = 2)
    scores = torch.tensor([1.0, 0.0])
    loss = quality_focal_loss(logits, labels, scores, reduction="none")
    expect = torch.tensor(
        [
            [-(0.7**2) * math.log(0.3), -(0.9**2) * math.log(0.1)],  # y = 1: −(1−σ)^2 log σ
            [-(0.1**2) * math.log(0.9), -(0.5**2) * math.log(0.5)],
        ]
    )
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-7)
    qfl_sum = quality_focal_loss(logits, labels, scores, reduction="sum")
    torch.testing.assert_close(qfl_sum, expect.sum())
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores), expect.mean())
    with pytest.raises(ValueError, match="reduction"):
        quality_focal_loss(logits, labels, scores, reduction="avg")


def test_qfl_minimum_at_sigma_equal_y():
    y = 0.63
    grid = torch.linspace(0.01, 0.99, 981)
    logits = torch.log(grid / (1 - grid))[:, None]
    loss = quality_focal_loss(
        logits, torch.zeros(981, dtype=torch.long), torch.full((981,), y), reduction="none"
    )[:, 0]
    assert abs(grid[loss.argmin()].item() - y) < 2e-3
    assert loss.min().item() == pytest.approx(0.0, abs=1e-6)


def test_qfl_beta_zero_is_bce():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 4, 1, 2])
    scores = torch.rand(5)
    target = torch.zeros(5, 5)
    target[torch.arange(5), labels] = scores
    bce = F.binary_cross_entropy_with_logits(logits, target[:, :4], reduction="none")
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores, 0.0, "none"), bce)


def test_dfl_by_hand_and_integer_targets():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.7, 0.2, 0.1]]))
    targets = torch.tensor([1.25, 1.0, 1.9])  # n = 2, targets next to reg_max included
    loss = distribution_focal_loss(logits, targets, reduction="none")
    expect = torch.tensor(
        [
            -(0.75 * math.log(0.6) + 0.25 * math.log(0.3)),
            -math.log(0.5),  # integer target: all weight on its own bin
            -(0.1 * math.log(0.2) + 0.9 * math.log(0.1)),
        ]
    )
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_dfl_minimum_puts_expectation_on_target():
    """At DFL's minimum (S_3 = 0.7, S_4 = 0.3 for y = 3.3) the expectation is exactly y,
    and any other split of the mass between the two bins costs more."""
    y = torch.tensor([3.3])

    def two_bin_logits(p3: float) -> torch.Tensor:
        probs = torch.full((1, 8), 1e-12)
        probs[0, 3], probs[0, 4] = p3, 1 - p3
        return probs.log()

    grid = [i / 100 for i in range(1, 100)]
    losses = torch.stack([distribution_focal_loss(two_bin_logits(p), y) for p in grid])
    best = grid[losses.argmin()]
    assert best == pytest.approx(0.7)
    expectation = (two_bin_logits(best).softmax(-1) * torch.arange(8.0)).sum()
    assert expectation.item() == pytest.approx(3.3, abs=1e-5)


def test_giou_by_hand():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    # Box 1: inter 1, union 7, enclosing 9: GIoU = 1/7 − 2/9.
    expect = torch.tensor([1 - (1 / 7 - 2 / 9), 0.0])
    torch.testing.assert_close(giou_loss(pred, target, "none"), expect)


def test_vfl_by_hand():
    sig = torch.tensor([[0.8, 0.3]])
    logits = torch.log(sig / (1 - sig))
    target = torch.tensor([[0.6, 0.0]])
    loss = varifocal_loss(logits, target, reduction="none")
    expect = torch.tensor(
        [[-0.6 * (0.6 * math.log(0.8) + 0.4 * math.log(0.2)), -0.75 * 0.3**2 * math.log(0.7)]]
    )
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-7)


def test_fl_qfl_and_dfl_are_special_cases_of_gfl():
    """FL, QFL and DFL are the general GFL form with particular arguments."""
    sig = torch.tensor([0.2, 0.55, 0.9], dtype=torch.float64)
    zero, one = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    logits = torch.log(sig / (1 - sig))
    # QFL: y_l = 0, y_r = 1, p_r = σ, p_l = 1 − σ.
    y = torch.tensor([0.3, 0.0, 1.0], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.long)
    qfl = quality_focal_loss(logits[:, None], zeros, y, 2.0, "none")[:, 0]
    torch.testing.assert_close(qfl, gfl_general(y, zero, one, 1 - sig, sig, 2.0))
    # FL (no α balance): y ∈ {0, 1}, β = γ.
    y01 = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    fl = sigmoid_focal_loss(logits, y01, alpha=-1, gamma=2.0, reduction="none")
    torch.testing.assert_close(fl, gfl_general(y01, zero, one, 1 - sig, sig, 2.0))
    # DFL: β = 0, two neighbouring bins with probabilities p_l, p_r of the softmax.
    probs = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    t = torch.tensor([1.4], dtype=torch.float64)
    dfl = distribution_focal_loss(probs.log(), t, "none")
    g = gfl_general(t, torch.tensor([1.0]), torch.tensor([2.0]), probs[:, 1], probs[:, 2], 0.0)
    torch.testing.assert_close(dfl, g)


def test_every_loss_passes_gradcheck_in_float64():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 2, 1])
    scores = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: quality_focal_loss(x, labels, scores), (logits,))
    dl = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 2.5, 4.9, 3.1], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: distribution_focal_loss(x, t), (dl,))
    vt = torch.rand(4, 3, dtype=torch.float64) * (torch.rand(4, 3) > 0.5)
    assert torch.autograd.gradcheck(lambda x: varifocal_loss(x, vt), (logits,))
    pred = torch.tensor(
        [[0.0, 0.0, 2.0, 2.5], [1.0, 1.0, 4.0, 3.0]], dtype=torch.float64, requires_grad=True
    )
    target = torch.tensor([[0.5, 0.2, 2.2, 3.0], [0.0, 2.0, 3.0, 5.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: giou_loss(p, target), (pred,))


def test_reductions_and_shapes_of_every_loss():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 4, 2, 4, 3, 1])
    scores = torch.rand(6)
    dfl_logits = torch.randn(6, 9)
    dfl_t = torch.rand(6) * 7.9
    vfl_t = torch.rand(6, 4) * (torch.rand(6, 4) > 0.6)
    xy = torch.rand(6, 2) * 10
    pred = torch.cat([xy, xy + 1 + torch.rand(6, 2) * 5], 1)
    target = torch.cat([xy + 0.5, xy + 2 + torch.rand(6, 2) * 5], 1)
    cases = {
        "qfl": (lambda r: quality_focal_loss(logits, labels, scores, reduction=r), (6, 4)),
        "dfl": (lambda r: distribution_focal_loss(dfl_logits, dfl_t, reduction=r), (6,)),
        "vfl": (lambda r: varifocal_loss(logits, vfl_t, reduction=r), (6, 4)),
        "giou": (lambda r: giou_loss(pred, target, reduction=r), (6,)),
    }
    for name, (fn, shape) in cases.items():
        none = fn("none")
        assert none.shape == shape, name
        assert (none >= 0).all(), name
        torch.testing.assert_close(fn("sum"), none.sum(), msg=name)
        torch.testing.assert_close(fn("mean"), none.mean(), msg=name)
    with pytest.raises(ValueError, match="reduction"):
        distribution_focal_loss(dfl_logits, dfl_t, reduction="avg")


def test_dfl_target_on_the_last_bin_and_at_zero():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    loss = distribution_focal_loss(probs.log(), torch.tensor([2.0, 0.0]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([-math.log(0.5), -math.log(0.6)]))


def test_dfl_is_gfl_with_beta_zero_on_random_cases():
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(20, 11, generator=gen, dtype=torch.float64) + 0.01
    probs /= probs.sum(1, keepdim=True)
    t = torch.rand(20, generator=gen, dtype=torch.float64) * 9.99
    left = t.floor()
    rows = torch.arange(20)
    expect = gfl_general(
        t, left, left + 1, probs[rows, left.long()], probs[rows, left.long() + 1], 0.0
    )
    torch.testing.assert_close(distribution_focal_loss(probs.log(), t, "none"), expect)


def test_qfl_gradient_vanishes_at_sigma_equal_y():
    y = torch.tensor([0.0, 0.35, 0.8, 1.0 - 1e-6], dtype=torch.float64)
    logits = torch.log(y.clamp(min=1e-6) / (1 - y.clamp(min=1e-6)))[:, None].requires_grad_()
    loss = quality_focal_loss(logits, torch.zeros(4, dtype=torch.long), y, 2.0, "sum")
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().max().item() < 1e-9


def test_focal_loss_by_hand_with_alpha():
    # RetinaNet's FL on one-hot targets, the classification loss of the ATSS ablations.
    sig = torch.tensor([[0.7, 0.2]])
    logits = torch.log(sig / (1 - sig))
    target = torch.tensor([[1.0, 0.0]])
    loss = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    expect = torch.tensor([[-0.25 * 0.3**2 * math.log(0.7), -0.75 * 0.2**2 * math.log(0.8)]])
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-7)


def test_vfl_without_iou_weighting_and_at_y_equal_1():
    sig = torch.tensor([[0.8, 0.3, 0.6]])
    logits = torch.log(sig / (1 - sig))
    target = torch.tensor([[0.6, 0.0, 1.0]])
    loss = varifocal_loss(logits, target, iou_weighted=False, reduction="none")
    expect = torch.tensor(
        [
            [
                -(0.6 * math.log(0.8) + 0.4 * math.log(0.2)),  # weight 1 instead of q
                -0.75 * 0.3**2 * math.log(0.7),
                -math.log(0.6),
            ]
        ]
    )
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-7)
    weighted = varifocal_loss(logits, target, reduction="none")
    torch.testing.assert_close(weighted[0, 0], 0.6 * expect[0, 0])
    torch.testing.assert_close(weighted[0, 2], expect[0, 2])  # q = 1


def test_qfl_on_probabilities_equals_qfl_on_logits():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 3, 2, 3, 1, 3])
    scores = torch.rand(6)
    a = quality_focal_loss(logits, labels, scores, 2.0, "none")
    b = quality_focal_loss(logits.sigmoid(), labels, scores, 2.0, "none", probabilities=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    (ga,) = torch.autograd.grad(a.sum(), logits)
    (gb,) = torch.autograd.grad(b.sum(), logits)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
