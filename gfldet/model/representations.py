"""GFL's two representations and the paper's alternatives, as small objects the detector asks.

Box representations (paper Table 2(a)): how the head's regression output stands for the four
edge distances (left, top, right, bottom) of a box from its location, in strides. Each knows
its output channels, how it decodes them, and which loss it adds beside GIoU:

    general   4 x (n+1) logits, a distribution per edge over bins 0, Δ, ..., nΔ; decoded by its
              expectation (the Integral); DFL (GFL)
    dirac     4 values, distances exp(x) (FCOS-style, positive and alive at init); no extra loss
    gaussian  4 means (as dirac) and 4 log-variances; Gaussian negative log-likelihood

Quality representations (paper Table 1(a)): how localisation quality enters the model. Each
knows whether it has an output branch, what the classification target is, how it weights the
box losses and how it forms the test score:

    joint              (GFL) the class score is trained as the IoU: soft targets, no branch
    none               one-hot class targets, no quality
    centerness / iou   a separate branch (on the regression tower) trained with BCE; the test
                       score is sigmoid(cls) x sigmoid(branch)
    *_guided           no branch: the quality re-weights the positives' focal loss
    dgqp               GFLv2 (Li et al., CVPR 2021): the quality I is predicted from statistics
                       of the edge distributions (`distribution_statistics`) by a tiny
                       Distribution-Guided Quality Predictor; the joint score sigmoid(cls) x I
                       is trained as a whole with QFL on probabilities and is the test score

Built by name from the model options (`box_representation`, `QUALITY_REPRESENTATIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import centerness
from .losses import distribution_focal_loss
from .options import QUALITY_SOFT_TARGETS, LossOptions

# exp() of a Dirac / Gaussian edge output is capped here: e^9.2 ~ 1e4 strides, far beyond any
# box, and finite in fp16 (whose max is 65504), so AMP cannot turn a spike into inf.
MAX_LOG_DISTANCE = 9.2


def exp_distance(x: Tensor) -> Tensor:
    """Dirac-delta (and Gaussian-mean) decoding of the Scale'd head output x [..., 4]: the edge
    distances exp(x) in strides, as FCOS. exp keeps every edge positive and alive (ReLU would
    leave negative outputs without gradient) and starts near 1 stride at init."""
    return x.clamp(max=MAX_LOG_DISTANCE).exp()


class Integral(nn.Module):
    """Expectation of each edge's discrete distribution over the bins 0, Δ, ..., nΔ.

    forward: logits [..., 4 * (n+1)] -> distances [..., 4] (in strides).
    """

    def __init__(self, reg_max: int = 16, bin_width: float = 1.0) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.arange(reg_max + 1) * bin_width, persistent=False)

    def forward(self, logits: Tensor) -> Tensor:
        probs = logits.unflatten(-1, (4, self.reg_max + 1)).softmax(-1)
        return probs @ self.project.to(probs.dtype)


class BoxRepresentation(nn.Module):
    """How R regression channels per location stand for 4 edge distances (in strides).

    A module only so that buffers (the Integral's bins) follow the model's device; it has no
    parameters, hence no entries in a state dict.
    """

    name: str
    channels: int  # R
    has_distributions = False

    def decode(self, reg: Tensor) -> Tensor:
        """[..., R] -> distances [..., 4] (l, t, r, b) in strides."""
        raise NotImplementedError

    def losses(
        self, reg_pos: Tensor, pred_dist: Tensor, target_dist: Tensor, weight: Tensor,
        opts: LossOptions,
    ) -> dict[str, Tensor]:  # fmt: skip
        """The losses it adds beside GIoU, summed over positives, each weighted by `weight` [P]
        (the caller divides by the weights' sum). reg_pos [P, R]; pred_dist, target_dist [P, 4]
        in strides."""
        return {}


class GeneralDistribution(BoxRepresentation):
    """GFL: a discrete distribution per edge over bins 0, Δ, ..., nΔ; DFL."""

    name = "general"
    has_distributions = True

    def __init__(self, reg_max: int = 16, bin_width: float = 1.0) -> None:
        super().__init__()
        self.reg_max, self.bin_width = reg_max, float(bin_width)
        self.channels = 4 * (reg_max + 1)
        self.integral = Integral(reg_max, self.bin_width)

    def decode(self, reg: Tensor) -> Tensor:
        return self.integral(reg)

    def distributions(self, reg: Tensor) -> Tensor:
        """Softmax probabilities per edge: [..., R] -> [..., 4, n+1]."""
        return reg.unflatten(-1, (4, self.reg_max + 1)).softmax(-1)

    def losses(self, reg_pos, pred_dist, target_dist, weight, opts):  # noqa: ANN001, ANN201
        if opts.dfl_weight <= 0:
            return {}
        # DFL works in bin units: target distance / Δ, just below the last bin n.
        n = self.reg_max
        target = (target_dist / self.bin_width).clamp(max=n - 0.1)
        dfl = distribution_focal_loss(reg_pos.reshape(-1, n + 1), target.reshape(-1), "none")
        return {"loss_dfl": opts.dfl_weight * (dfl * weight.repeat_interleave(4)).sum() / 4}


class DiracDelta(BoxRepresentation):
    """One value per edge, decoded as exp(x) strides; GIoU only."""

    name, channels = "dirac", 4

    def decode(self, reg: Tensor) -> Tensor:
        return exp_distance(reg[..., :4])


class Gaussian(BoxRepresentation):
    """A mean (decoded as dirac) and a log-variance per edge; Gaussian NLL of the true edges."""

    name, channels = "gaussian", 8

    def decode(self, reg: Tensor) -> Tensor:
        return exp_distance(reg[..., :4])

    def losses(self, reg_pos, pred_dist, target_dist, weight, opts):  # noqa: ANN001, ANN201
        var = reg_pos[:, 4:].clamp(-MAX_LOG_DISTANCE, MAX_LOG_DISTANCE).exp()
        nll = F.gaussian_nll_loss(pred_dist, target_dist, var, reduction="none")
        return {"loss_nll": opts.nll_weight * (nll.sum(-1) * weight).sum() / 4}


def box_representation(name: str, reg_max: int, bin_width: float) -> BoxRepresentation:
    """The box representation of `model.head.box`."""
    if name == "general":
        return GeneralDistribution(reg_max, bin_width)
    return {"dirac": DiracDelta, "gaussian": Gaussian}[name]()


@dataclass(frozen=True)
class QualityRepresentation:
    """How localisation quality enters the model (see the module docstring)."""

    name: str
    branch: bool = False  # a separate output on the regression tower, trained with BCE
    guided: bool = False  # the quality re-weights the positives' focal loss
    from_centerness: bool = False  # the quality is the centerness target (else the IoU)
    weights_boxes: bool = False  # box losses weighted by the quality (ATSS), not the score
    # The quality is a probability I from the edge distributions (GFLv2's DGQP), and the
    # class target is learnt by the product sigmoid(cls) x I.
    from_distributions: bool = False

    @property
    def soft_targets(self) -> bool:
        """Whether the class target is the IoU score (else one-hot)."""
        return QUALITY_SOFT_TARGETS[self.name]

    def quality_target(self, centers: Tensor, target_box: Tensor, iou: Tensor) -> Tensor:
        """The quality q [P] of each positive that a branch learns or a guided loss uses:
        the FCOS centerness of its location in its gt, or the IoU of its predicted box."""
        return centerness(centers, target_box) if self.from_centerness else iou

    def box_weight(self, cls_pos: Tensor, q: Tensor, quality_pos: Tensor | None) -> Tensor:
        """Per-positive weight of the box losses: ATSS's centerness target, or GFL's detached
        best class score (GFLv2: of the joint score). cls_pos [P, C] logits, q [P],
        quality_pos [P, 1] or None."""
        if self.weights_boxes:
            return q.to(cls_pos.dtype)
        scores = cls_pos.detach().sigmoid()
        if self.from_distributions:
            scores = scores * quality_pos.detach()
        return scores.amax(-1)

    def scores(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        """Test scores [B, A, C] from class logits [B, A, C] and the head's quality [B, A, 1]
        (a branch's logits, or DGQP's probability)."""
        scores = cls.sigmoid()
        if self.branch:
            return scores * quality.sigmoid()
        return scores * quality if self.from_distributions else scores

    def branch_loss(self, quality_pos: Tensor, q: Tensor, opts: LossOptions) -> dict[str, Tensor]:
        """The branch's summed BCE against q (the caller divides by the positives' count)."""
        if not self.branch:
            return {}
        bce = F.binary_cross_entropy_with_logits(
            quality_pos, q.to(quality_pos.dtype), reduction="sum"
        )
        return {"loss_quality": opts.quality_weight * bce}


QUALITY_REPRESENTATIONS = {
    q.name: q
    for q in (
        QualityRepresentation("joint"),
        QualityRepresentation("none"),
        QualityRepresentation("centerness", branch=True, from_centerness=True, weights_boxes=True),
        QualityRepresentation("iou", branch=True),
        QualityRepresentation("centerness_guided", guided=True, from_centerness=True),
        QualityRepresentation("iou_guided", guided=True),
        QualityRepresentation("dgqp", from_distributions=True),
    )
}


def distribution_statistics(probs: Tensor, topk: int = 4, add_mean: bool = True) -> Tensor:
    """GFLv2's input to the quality predictor: for each edge distribution its `topk` largest
    probabilities (in decreasing order) and, with `add_mean`, their mean.

    probs [B, 4, n+1, H, W] (softmax over dim 2) -> [B, 4 * (topk + add_mean), H, W], the
    statistics of the left, top, right and bottom edges one after the other. Not detached:
    GFLv2 trains the distributions through the predictor too.
    """
    top = probs.topk(topk, dim=2).values
    stats = torch.cat([top, top.mean(2, keepdim=True)], 2) if add_mean else top
    return stats.flatten(1, 2)
