"""GFL's two representations and the paper's alternatives, as small objects the detector asks.

Box representations (paper Table 2(a)): how the head's regression output stands for the four
edge distances (left, top, right, bottom) of a box from its location, in strides. Each knows
its output channels, how it decodes them, and which loss it adds beside GIoU:

    general   4 x (n+1) logits, a distribution per edge over bins 0, Δ, ..., nΔ; decoded by its
              expectation (the Integral); DFL (GFL)
    dirac     4 values, distances exp(x) (FCOS-style, positive and alive at init); no extra loss
    gaussian  4 means (as dirac) and 4 log-variances; Gaussian negative log-likelihood

Quality representations (paper Table 1(a)): how localisation quality enters the model. Each
knows which layers it adds to the head and what they output, what the classification target
is, how it weights the box losses and how it forms the test score:

    joint              (GFL) the class score is trained as the IoU: soft targets, no branch
    none               one-hot class targets, no quality
    centerness / iou   a separate branch (on the regression tower) trained with BCE; the test
                       score is sigmoid(cls) x sigmoid(branch)
    *_guided           no branch: the quality re-weights the positives' focal loss
    dgqp               GFLv2 (Li et al., CVPR 2021): the quality I is predicted from statistics
                       of the edge distributions (`distribution_statistics`) by a tiny
                       Distribution-Guided Quality Predictor; the joint score sigmoid(cls) x I
                       is trained as a whole with QFL on probabilities and is the test score

Each kind is a class, registered by name in gfldet.model.registry (BOXES, QUALITIES), where
your own join without an edit here (docs/extending.md); `box_representation` and
`quality_representation` build them from the head's options.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import centerness
from .losses import distribution_focal_loss
from .options import DGQPOptions, HeadOptions, LossOptions
from .registry import BOXES, QUALITIES, Registry

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

    name: str = ""  # set to the registered name when built
    channels: int  # R
    has_distributions = False

    @classmethod
    def from_options(cls, options: HeadOptions) -> BoxRepresentation:
        """Built from the head's options (`model.head`); the base takes none of them."""
        return cls()

    def decode(self, reg: Tensor) -> Tensor:
        """[..., R] -> distances [..., 4] (l, t, r, b) in strides."""
        raise NotImplementedError

    def losses(
        self,
        reg_pos: Tensor,
        pred_dist: Tensor,
        target_dist: Tensor,
        weight: Tensor,
        opts: LossOptions,
    ) -> dict[str, Tensor]:
        """The losses it adds beside GIoU, summed over positives, each weighted by `weight` [P]
        (the caller divides by the weights' sum). reg_pos [P, R]; pred_dist, target_dist [P, 4]
        in strides."""
        return {}


class GeneralDistribution(BoxRepresentation):
    """GFL: a discrete distribution per edge over bins 0, Δ, ..., nΔ; DFL."""

    has_distributions = True

    def __init__(self, reg_max: int = 16, bin_width: float = 1.0) -> None:
        super().__init__()
        self.reg_max, self.bin_width = reg_max, float(bin_width)
        self.channels = 4 * (reg_max + 1)
        self.integral = Integral(reg_max, self.bin_width)

    @classmethod
    def from_options(cls, options: HeadOptions) -> BoxRepresentation:
        return cls(options.reg_max, options.bin_width)

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

    channels = 4

    def decode(self, reg: Tensor) -> Tensor:
        return exp_distance(reg[..., :4])


class Gaussian(BoxRepresentation):
    """A mean (decoded as dirac) and a log-variance per edge; Gaussian NLL of the true edges."""

    channels = 8

    def decode(self, reg: Tensor) -> Tensor:
        return exp_distance(reg[..., :4])

    def losses(self, reg_pos, pred_dist, target_dist, weight, opts):  # noqa: ANN001, ANN201
        var = reg_pos[:, 4:].clamp(-MAX_LOG_DISTANCE, MAX_LOG_DISTANCE).exp()
        nll = F.gaussian_nll_loss(pred_dist, target_dist, var, reduction="none")
        return {"loss_nll": opts.nll_weight * (nll.sum(-1) * weight).sum() / 4}


def box_representation(name: str, options: HeadOptions) -> BoxRepresentation:
    """The box representation registered as `name` (`model.head.box`), built from the head's
    options."""
    box = _built(BOXES, name, BoxRepresentation, options)
    box.name = name
    return box


class QualityRepresentation:
    """How localisation quality enters the model (see the module docstring).

    The base class is the plain case: no layers, one-hot class targets, the test score
    sigmoid(cls), box losses weighted by the detached best class score. Each kind overrides
    what it changes. Built by `quality_representation` from the head's options
    (`from_options`); the head adds the representation's `layers` under their names, runs
    `level_output` on every pyramid level, and the detector asks the rest.
    """

    name: str = ""  # set to the registered name when built
    # The class target is the IoU score (QFL / VFL), else one-hot (focal). The registry
    # (gfldet.model.registry.QUALITIES) declares the same for config checks without torch.
    soft_targets = False
    # The classification loss sees probabilities, not logits (`cls_loss_input`; QFL only).
    cls_loss_on_probabilities = False

    @classmethod
    def from_options(cls, options: HeadOptions) -> QualityRepresentation:
        return cls()

    def layers(self, in_channels: int) -> dict[str, nn.Module]:
        """Layers it adds to a head, by attribute name (`in_channels`: the towers' output)."""
        return {}

    def init_layers(self, head: nn.Module) -> None:
        """Initialises its layers after the head's own initialisation of every conv."""

    def level_output(self, head: nn.Module, reg_feat: Tensor, reg: Tensor) -> Tensor | None:
        """The quality output [B, 1, H, W] of one level, from the regression tower's output
        `reg_feat` and the Scale'd regression output `reg` [B, R, H, W]; None without one."""
        return None

    def quality_target(self, centers: Tensor, target_box: Tensor, iou: Tensor) -> Tensor:
        """The quality q [P] of each positive that a branch learns or a guided loss uses:
        by default the IoU of its (detached) predicted box with its gt."""
        return iou

    def cls_target(self, iou: Tensor, q: Tensor) -> Tensor:
        """The class target [P] at each positive's labelled class, from the IoU of its
        predicted box and its quality target q: the IoU (soft targets), else 1 (one-hot)."""
        return iou if self.soft_targets else torch.ones_like(iou)

    def cls_loss_input(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        """What the classification loss is computed on: the class logits [B, A, C]."""
        return cls

    def cls_loss_guidance(self, pos: Tensor, q: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(positives' flat indices [P], their quality [P]) when the quality re-weights the
        positives' focal loss (`gfldet.model.losses.classification_loss`), else (None, None)."""
        return None, None

    def box_weight(self, cls_pos: Tensor, q: Tensor, quality_pos: Tensor | None) -> Tensor:
        """Per-positive weight of the box losses: GFL's detached best class score. cls_pos
        [P, C] logits, q [P], quality_pos [P, 1] or None."""
        return cls_pos.detach().sigmoid().amax(-1)

    def scores(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        """Test scores [B, A, C] from class logits [B, A, C] and the head's quality [B, A, 1]
        or None."""
        return cls.sigmoid()

    def losses(self, quality_pos: Tensor, q: Tensor, opts: LossOptions) -> dict[str, Tensor]:
        """Losses of its output at the positives (quality_pos [P]), summed (the caller divides
        by the positives' count)."""
        return {}


class JointQuality(QualityRepresentation):
    """GFL: the class score is trained as the IoU (soft targets), no branch."""

    soft_targets = True


class NoQuality(QualityRepresentation):
    """One-hot class targets, no quality."""


class CenternessTarget(QualityRepresentation):
    """The quality is the FCOS centerness of each positive's location in its gt."""

    def quality_target(self, centers: Tensor, target_box: Tensor, iou: Tensor) -> Tensor:
        return centerness(centers, target_box)


class QualityBranch(QualityRepresentation):
    """A separate output (`gfl_quality`, a 3x3 conv on the regression tower, as ATSS's
    centerness) trained with BCE against the quality; the test score is
    sigmoid(cls) x sigmoid(branch)."""

    def layers(self, in_channels: int) -> dict[str, nn.Module]:
        return {"gfl_quality": nn.Conv2d(in_channels, 1, 3, padding=1)}

    def level_output(self, head: nn.Module, reg_feat: Tensor, reg: Tensor) -> Tensor | None:
        return head.gfl_quality(reg_feat)

    def scores(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        return cls.sigmoid() * quality.sigmoid()

    def losses(self, quality_pos: Tensor, q: Tensor, opts: LossOptions) -> dict[str, Tensor]:
        bce = F.binary_cross_entropy_with_logits(
            quality_pos, q.to(quality_pos.dtype), reduction="sum"
        )
        return {"loss_quality": opts.quality_weight * bce}


class CenternessBranch(CenternessTarget, QualityBranch):
    """ATSS: a centerness branch; the box losses are weighted by the centerness target."""

    def box_weight(self, cls_pos: Tensor, q: Tensor, quality_pos: Tensor | None) -> Tensor:
        return q.to(cls_pos.dtype)


class IoUBranch(QualityBranch):
    """An IoU branch (IoU-aware): it learns the IoU of the predicted box."""


class GuidedQuality(QualityRepresentation):
    """No branch: the quality re-weights the positives' focal loss (guided focal loss)."""

    def cls_loss_guidance(self, pos: Tensor, q: Tensor) -> tuple[Tensor | None, Tensor | None]:
        return pos, q


class CenternessGuided(CenternessTarget, GuidedQuality):
    """Focal loss guided by the centerness target."""


class IoUGuided(GuidedQuality):
    """Focal loss guided by the IoU of the predicted box."""


class DistributionGuidedQuality(QualityRepresentation):
    """GFLv2's DGQP: a quality probability I from the statistics of the edge distributions
    (`distribution_statistics`) through `reg_conf` (the official name): 1x1 conv
    (4·(k+1) -> channels), ReLU, 1x1 conv (-> 1), sigmoid. The joint score sigmoid(cls) x I
    is trained as a whole with QFL on probabilities and is the test score. Needs the general
    distribution (checked with the config: gfldet.model.registry.QUALITIES)."""

    soft_targets = True
    cls_loss_on_probabilities = True

    def __init__(self, options: DGQPOptions | None = None, reg_max: int = 16) -> None:
        self.options, self.reg_max = options or DGQPOptions(), reg_max

    @classmethod
    def from_options(cls, options: HeadOptions) -> QualityRepresentation:
        return cls(options.dgqp, options.reg_max)

    def layers(self, in_channels: int) -> dict[str, nn.Module]:
        o = self.options
        inputs = 4 * (o.topk + int(o.add_mean))
        return {
            "reg_conf": nn.Sequential(
                nn.Conv2d(inputs, o.channels, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(o.channels, 1, 1),
                nn.Sigmoid(),
            )
        }

    def init_layers(self, head: nn.Module) -> None:
        nn.init.constant_(head.reg_conf[2].bias, self.options.init_bias)

    def level_output(self, head: nn.Module, reg_feat: Tensor, reg: Tensor) -> Tensor | None:
        # In float32, as the official head, also under AMP.
        probs = reg.float().unflatten(1, (4, self.reg_max + 1)).softmax(2)
        stats = distribution_statistics(probs, self.options.topk, self.options.add_mean)
        return head.reg_conf(stats.to(reg.dtype))

    def cls_loss_input(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        return self.scores(cls, quality)

    def box_weight(self, cls_pos: Tensor, q: Tensor, quality_pos: Tensor | None) -> Tensor:
        return (cls_pos.detach().sigmoid() * quality_pos.detach()).amax(-1)

    def scores(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        return cls.sigmoid() * quality


def quality_representation(name: str, options: HeadOptions) -> QualityRepresentation:
    """The quality representation registered as `name` (`model.head.quality`), built from
    the head's options."""
    quality = _built(QUALITIES, name, QualityRepresentation, options)
    quality.name = name
    return quality


def _built(registry: Registry, name: str, base: type, options: HeadOptions) -> Any:
    cls = registry.get(name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(
            f"{registry.key} {name!r}: {cls!r} is not a subclass of "
            f"gfldet.model.representations.{base.__name__}"
        )
    return cls.from_options(options)


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
