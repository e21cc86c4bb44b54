"""The losses of GFL: Quality Focal Loss, Distribution Focal Loss, GIoU; Varifocal Loss; and
the softened KL divergence of knowledge distillation, which Localization Distillation applies to
edge distributions (gfldet.training.distill).

Every loss takes `reduction` in {"none", "mean", "sum"}; "none" returns the element-wise loss.
RetinaNet's focal loss is torchvision's `sigmoid_focal_loss` and GIoU is torchvision's
`generalized_box_iou_loss`; only what is GFL's own is written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .options import LossOptions

__all__ = [
    "classification_loss",
    "quality_focal_loss",
    "distribution_focal_loss",
    "giou_loss",
    "varifocal_loss",
    "sigmoid_focal_loss",
    "soft_targets",
    "distillation_kl_loss",
]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def soft_targets(labels: Tensor, scores: Tensor, num_classes: int) -> Tensor:
    """Dense targets [N, C]: `scores` at each labelled class, 0 elsewhere and for background.

    labels [N] in 0..C (C = background); scores [N] in [0, 1].
    """
    t = scores.new_zeros(labels.shape[0], num_classes + 1)
    t[torch.arange(labels.shape[0], device=labels.device), labels] = scores
    return t[:, :num_classes]


def quality_focal_loss(
    logits: Tensor,
    labels: Tensor,
    scores: Tensor,
    beta: float = 2.0,
    reduction: str = "mean",
    probabilities: bool = False,
) -> Tensor:
    """QFL(σ) = −|y − σ|^β · BCE(σ, y), y = the IoU score at the labelled class, 0 elsewhere.

    logits [N, C] (with `probabilities`: σ itself, e.g. GFLv2's joint score); labels [N] int
    in 0..C (C = background); scores [N] float in [0, 1]. Returns [N, C] for reduction="none".
    """
    target = soft_targets(labels, scores.detach().to(logits.dtype), logits.shape[1])
    if probabilities:
        # BCE of a probability, computed here in float32 (torch's binary_cross_entropy is not
        # allowed under autocast); logs clamped at -100 as torch's.
        p, t = logits.float(), target.float()
        logp, log1mp = p.log().clamp(min=-100), (-p).log1p().clamp(min=-100)
        bce = -(t * logp + (1 - t) * log1mp)
        return _reduce(bce * (t - p).abs().pow(beta), reduction)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # The modulating factor is not detached: the official implementation backpropagates it.
    return _reduce(bce * (target - logits.sigmoid()).abs().pow(beta), reduction)


def distribution_focal_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """DFL = −((y_{i+1} − y)·log S_i + (y − y_i)·log S_{i+1}), y_i ≤ y < y_{i+1} = y_i + 1.

    logits [N, n+1] over the bins 0..n; targets [N] float in [0, n], in bin units (with bins
    y_i = i·Δ, pass distance / Δ). An integer target puts all weight on its own bin; targets
    are not clamped here (the detector clamps them to n − 0.1). Returns [N] for "none".
    """
    left = targets.long()
    right = left + 1
    w_left = right.to(targets.dtype) - targets
    w_right = targets - left.to(targets.dtype)
    loss = (
        F.cross_entropy(logits, left, reduction="none") * w_left
        + F.cross_entropy(logits, right.clamp(max=logits.shape[1] - 1), reduction="none") * w_right
    )
    return _reduce(loss, reduction)


def giou_loss(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """1 − GIoU of aligned xyxy boxes pred [N, 4], target [N, 4]. Returns [N] for "none"."""
    return generalized_box_iou_loss(pred, target, reduction=reduction)


def varifocal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """VFL: BCE(σ, q) weighted by q (or 1) for positives and α·σ^γ for negatives.

    logits [N, C]; targets [N, C] IoU-aware soft targets (q > 0 marks a positive).
    Returns [N, C] for reduction="none".
    """
    sig = logits.sigmoid()
    pos = targets > 0
    pos_weight = targets if iou_weighted else torch.ones_like(targets)
    weight = torch.where(pos, pos_weight, alpha * (sig - targets).abs().pow(gamma))
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _reduce(bce * weight, reduction)


def classification_loss(
    logits: Tensor,
    labels: Tensor,
    scores: Tensor,
    weight: Tensor,
    opts: LossOptions,
    guided_pos: Tensor | None = None,
    guided_q: Tensor | None = None,
    probabilities: bool = False,
) -> tuple[str, Tensor]:
    """The classification loss of `opts.cls`, summed, and its name ("loss_qfl", ...).

    logits [N, C]; labels [N] in 0..C (C = background); scores [N]: the target at the labelled
    class (the IoU for QFL / VFL, 1 for focal's one-hot targets); weight [N] per location
    (0: not counted). Guided focal loss (IoU-balanced classification, Wu et al. 2019, η = 1):
    guided_pos [P] the positives' indices and guided_q [P] their quality; each positive's
    gt-class loss is multiplied by w_i = q_i · Σ_j FL_j / Σ_j q_j·FL_j (q detached), which
    keeps the positives' total and the one-hot optimum but favours well-localised ones.
    probabilities: `logits` are probabilities (GFLv2's joint score; QFL only).
    """
    c = logits.shape[1]
    w = weight[:, None]
    if opts.cls == "qfl":
        loss = quality_focal_loss(logits, labels, scores, opts.qfl_beta, "none", probabilities)
        return "loss_qfl", (loss * w).sum()
    target = soft_targets(labels, scores, c)
    if opts.cls == "vfl":
        loss = varifocal_loss(logits, target, opts.vfl_alpha, opts.vfl_gamma, True, "none")
        return "loss_vfl", (loss * w).sum()
    fl = sigmoid_focal_loss(logits, target, opts.focal_alpha, opts.focal_gamma, "none") * w
    if guided_pos is None:
        return "loss_focal", fl.sum()
    fl_pos = fl[guided_pos, labels[guided_pos]]
    qd, fd = guided_q.detach().to(fl.dtype), fl_pos.detach()
    wq = qd * fd.sum() / (qd * fd).sum().clamp(min=torch.finfo(fl.dtype).tiny)
    return "loss_focal", fl.sum() + ((wq - 1) * fl_pos).sum()


def distillation_kl_loss(
    logits: Tensor, teacher_logits: Tensor, temperature: float, reduction: str = "mean"
) -> Tensor:
    """KL(p_t ‖ p_s) · T², averaged over the K outcomes: knowledge distillation (Hinton et al.,
    2015) as Localization Distillation (Zheng et al., CVPR 2022) applies it to an edge's bins.

    p_s = softmax(logits / T), p_t = softmax(teacher_logits / T), each over the last dim
    (logits [N, K], teacher_logits [N, K], the teacher's taken as constants). Each row's loss is
    Σ_k p_t,k (log p_t,k − log p_s,k) / K · T²: the mean over the K outcomes, as MMDetection's
    KnowledgeDistillationKLDivLoss, and × T² so that the gradient's size does not shrink with T.
    Computed in float32 (also under autocast). Returns [N] for reduction="none".
    """
    if logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape"
        )
    t = float(temperature)
    log_p = F.log_softmax(logits.float() / t, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).mean(-1) * (t * t)
    return _reduce(kl, reduction)
