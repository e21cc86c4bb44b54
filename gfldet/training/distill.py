"""Localization Distillation (Zheng et al., CVPR 2022): a trained teacher's edge distributions
taught to the student being trained, at no cost at inference.

GFL's head predicts each box edge as a distribution over the bins 0, Δ, ..., nΔ. A teacher with
the same bins and the same locations (pyramid strides) gives, at every location, four softened
distributions p_t = softmax(t / T) that the student's p_s = softmax(s / T) learn with the KL
divergence × T² (gfldet.model.losses.distillation_kl_loss, the mean over the n+1 bins). As
MMDetection v2's LDHead (configs/ld) and the paper's repository:

    loss_ld      main region: the student's own ATSS positives; each edge's KL weighted by the
                 positive's detached best score (the weight of GIoU and DFL in GFL), summed
                 over the positives and divided by 4 (the edges): weight 0.25, T 10
    loss_ld_vlr  valuable localization region (optional): every valid location whose square
                 anchor has α·t ≤ DIoU < t with some gt, t that gt's ATSS threshold (mean + std
                 of its candidates' IoUs), α 0.25; weighted by the anchor's IoU with that gt
                 (the largest if several), summed and divided by 16
    loss_kd      class distillation (optional): KD of the joint class scores, softmax over the
                 classes at their own temperature, on the positives, averaged over them

Both LD sums are not normalised by the number of positives, as in the reference: they grow with
the objects in an image. They are scaled to the reference's 2 images per process
(REFERENCE_IMAGES / images in the batch), so that a weight is as strong at any batch size as in
the reference; at 8 images per process the unscaled sum made LD 4x stronger and the student
worse (docs/distill.md).

The teacher is built from its own config and checkpoint, frozen (no parameter requires a
gradient), in eval mode with its BatchNorms folded (`prepare_for_inference`), and is never part
of the student: checkpoints hold the student only, and a resumed run loads the teacher again.
Every process holds its own copy (DDP replicates the student only); the teacher runs under the
trainer's autocast and without autograd.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou, distance_box_iou

from ..core.checkpoint import load_checkpoint, load_model_weights
from ..core.options import OptionError, from_dict
from ..core.runtime import set_num_classes
from ..model.atss import _nearest_candidates
from ..model.box_ops import square_anchors
from ..model.build import build_model
from ..model.detector import GFL, pad_targets
from ..model.fuse import prepare_for_inference
from ..model.losses import distillation_kl_loss
from ..model.options import ModelOptions
from .options import DistillOptions

__all__ = [
    "Distiller",
    "build_distiller",
    "check_teacher_path",
    "load_teacher",
    "valuable_region",
]

log = logging.getLogger("gfldet")

# The images per GPU of the reference (MMDetection v2's LD configs: 8 GPUs x 2 images), whose
# per-process sums loss_ld and loss_ld_vlr are scaled to: weight w means what it means there.
REFERENCE_IMAGES = 2


def check_teacher_path(opts: DistillOptions, work_dir: Path) -> None:
    """distill.teacher_checkpoint exists and lies outside `work_dir`, whose files the run moves
    aside (--overwrite), writes (latest.pth) and prunes (keep_last): checked before the work dir
    is claimed."""
    path = opts.teacher_checkpoint
    if not path:
        return
    if not Path(path).is_file():
        raise FileNotFoundError(f"distill.teacher_checkpoint {path}: no such file")
    if Path(work_dir).resolve() in Path(path).resolve().parents:
        raise ValueError(
            f"distill.teacher_checkpoint {path} is inside work_dir {work_dir}: the run moves, "
            "writes and deletes checkpoints there; copy the teacher to another folder"
        )


def teacher_model_options(
    opts: DistillOptions, state: dict, model: ModelOptions | None
) -> ModelOptions:
    """The teacher's `model` section: `model` (from distill.teacher_config, read by the caller)
    or else the config stored in its checkpoint `state`."""
    path = opts.teacher_checkpoint
    if model is None and opts.teacher_config:
        raise ValueError(
            f"distill.teacher_config {opts.teacher_config}: its model section must be passed "
            "with it (gfldet train does; from Python: train(cfg, teacher_model="
            f"load_config({opts.teacher_config!r}).model))"
        )
    if model is None:
        stored = state.get("config")
        section = stored.get("model") if isinstance(stored, dict) else None
        if not isinstance(section, dict):
            raise ValueError(
                f"distill.teacher_checkpoint {path} stores no config: set distill.teacher_config "
                "to the teacher's config file"
            )
        try:
            model = from_dict(ModelOptions, section, "model.")
        except OptionError as e:
            raise ValueError(
                f"distill.teacher_checkpoint {path}: its stored config does not load ({e}); set "
                "distill.teacher_config to the teacher's config file"
            ) from None
    model = copy.deepcopy(model)
    model.backbone.pretrained = None  # the checkpoint holds every weight
    model.init_from = None
    if state.get("classes"):
        set_num_classes(model, state["classes"], str(path))
    elif model.num_classes is None:
        bias = state["model"].get("head.gfl_cls.bias")
        if bias is None:
            raise ValueError(
                f"distill.teacher_checkpoint {path}: no class list and no head.gfl_cls.bias"
            )
        model.num_classes = int(bias.shape[0])
    return model


def load_teacher(
    opts: DistillOptions, device: torch.device, model: ModelOptions | None = None
) -> tuple[GFL, list[str] | None]:
    """The teacher of distill.teacher_checkpoint (its EMA weights when it has them), frozen, in
    eval mode, BatchNorms folded, on `device`; and its class names (None when unknown).

    model: the teacher's model section (from distill.teacher_config); None: the checkpoint's own.
    """
    path = Path(opts.teacher_checkpoint)
    state = load_checkpoint(path)
    teacher = build_model(teacher_model_options(opts, state, model))
    key = "ema" if "ema" in state else "model"
    load_model_weights(teacher, state, path, key=key)
    teacher = prepare_for_inference(teacher.to(device).eval())
    teacher.requires_grad_(False)
    classes = state.get("classes")
    return teacher, (list(classes) if classes else None)


def _bins(model: GFL) -> str:
    box = model.head.box
    if not box.has_distributions:
        return f"box {box.name or type(box).__name__!r}, no edge distributions"
    return f"reg_max {box.reg_max}: {box.reg_max + 1} bins of width {box.bin_width:g}"


def check_pair(teacher: GFL, student: GFL, source: str) -> None:
    """Raises ValueError (one line naming both) unless the teacher's edge distributions can
    teach the student's: both general distributions over the same bins, on the same pyramid
    strides (hence the same locations)."""
    tb, sb = teacher.head.box, student.head.box
    same_bins = (
        tb.has_distributions
        and sb.has_distributions
        and (tb.reg_max, tb.bin_width) == (sb.reg_max, sb.bin_width)
    )
    if not same_bins:
        raise ValueError(
            f"distill: the teacher {source} ({_bins(teacher)}) and the student (model.head: "
            f"{_bins(student)}) need edge distributions over the same bins: train the teacher "
            "with the student's model.head.reg_max and bin_width, or set the student's to the "
            "teacher's"
        )
    if list(teacher.strides) != list(student.strides):
        raise ValueError(
            f"distill: the teacher {source} has pyramid strides {list(teacher.strides)} and the "
            f"student {list(student.strides)}: they must predict at the same locations (set "
            "model.neck.extra_levels so that the levels match)"
        )


@dataclass
class _Captured:
    """The student head's input sizes and outputs of one forward."""

    sizes: list[tuple[int, int]] | None = None
    cls: Tensor | None = None
    reg: Tensor | None = None
    quality: Tensor | None = None


class Distiller:
    """Adds the LD losses (see the module docstring) to a training step of the student.

        distiller = Distiller(options, teacher)
        losses = distiller.forward(model, images, targets)  # the student's losses + LD's

    `model` is the student, DDP-wrapped or not; `forward` runs it as the trainer would (its
    losses), catching its head's inputs and outputs with a forward hook that lives only during
    the call, then the teacher on the same images, and returns the student's losses with
    "loss_ld" (and "loss_ld_vlr", "loss_kd" when enabled) added.
    """

    def __init__(self, opts: DistillOptions, teacher: GFL) -> None:
        self.opts, self.teacher = opts, teacher

    @contextlib.contextmanager
    def _capture(self, student: GFL) -> Iterator[_Captured]:
        out = _Captured()

        def hook(module: nn.Module, args: tuple, result: tuple) -> None:
            out.sizes = [tuple(f.shape[-2:]) for f in args[0]]
            out.cls, out.reg, out.quality = result

        handle = student.head.register_forward_hook(hook)
        try:
            yield out
        finally:
            handle.remove()

    def forward(self, model: nn.Module, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """The student's training losses and the distillation's (images uint8 [B, 3, H, W])."""
        student = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        with self._capture(student) as out:
            losses = model(images, targets)
        if out.reg is None:
            raise RuntimeError("distill: the student's head did not run in its forward")
        losses.update(self.losses(student, images, targets, out))
        return losses

    __call__ = forward

    @torch.no_grad()
    def teacher_outputs(
        self, images: Tensor, targets: list[dict]
    ) -> tuple[list[tuple[int, int]], Tensor, Tensor, Tensor | None]:
        """The teacher's level sizes and head outputs (cls [B, A, C], reg [B, A, R], quality)."""
        t = self.teacher
        feats = t.features(t.preprocess(images, targets))
        cls, reg, quality = t.head(feats)
        return [tuple(f.shape[-2:]) for f in feats], cls, reg, quality

    def losses(
        self, student: GFL, images: Tensor, targets: list[dict], out: _Captured
    ) -> dict[str, Tensor]:
        o = self.opts
        t_sizes, t_cls, t_reg, t_quality = self.teacher_outputs(images, targets)
        if t_sizes != out.sizes:
            raise ValueError(
                f"distill: the teacher's pyramid levels are {t_sizes} and the student's "
                f"{out.sizes} for images of {tuple(images.shape[-2:])}: their backbones "
                "downsample differently (use a data.size_divisor that both divide)"
            )
        points, strides = student.grid(out.sizes, images.device)
        assigned, valid = student.assign(points, strides, out.sizes, targets)
        n1 = student.head.box.reg_max + 1
        pb, pa = (assigned >= 0).nonzero(as_tuple=True)
        q_repr = student.head.quality
        quality_pos = out.quality[pb, pa] if out.quality is not None else None
        cls_pos = out.cls[pb, pa]
        weight = q_repr.scores(cls_pos, quality_pos).detach().float().amax(-1)  # [P]
        kl = distillation_kl_loss(
            out.reg[pb, pa].reshape(-1, n1), t_reg[pb, pa].reshape(-1, n1), o.temperature, "none"
        )
        # Per REFERENCE_IMAGES images, as the reference's sums at its 2 images per GPU: the
        # strength of a weight does not change with the batch size.
        per_images = REFERENCE_IMAGES / images.shape[0]
        ld = (kl * weight.repeat_interleave(4)).sum() / 4
        result = {"loss_ld": o.weight * per_images * ld}
        if o.vlr_weight > 0:
            region = valuable_region(
                student, points, strides, out.sizes, targets, valid, o.vlr_alpha
            )
            vb, va = (region > 0).nonzero(as_tuple=True)
            kl = distillation_kl_loss(
                out.reg[vb, va].reshape(-1, n1),
                t_reg[vb, va].reshape(-1, n1),
                o.temperature,
                "none",
            )
            w = region[vb, va].float().repeat_interleave(4)
            result["loss_ld_vlr"] = o.vlr_weight * per_images * (kl * w).sum() / 16
        if o.cls_weight > 0:
            t_q = t_quality[pb, pa] if t_quality is not None else None
            s_logits = joint_logits(student, cls_pos, quality_pos)
            t_logits = joint_logits(self.teacher, t_cls[pb, pa], t_q)
            kd = distillation_kl_loss(s_logits, t_logits, o.cls_temperature, "none")
            result["loss_kd"] = o.cls_weight * kd.sum() / max(len(pb), 1)
        return result


def joint_logits(model: GFL, cls: Tensor, quality: Tensor | None) -> Tensor:
    """The logits of the model's joint class scores [P, C]: the class logits themselves when
    the score is sigmoid(cls) alone (GFL: no quality output), else logit(score) in float32
    (e.g. GFLv2's sigmoid(cls) × I)."""
    if quality is None:
        return cls
    score = model.head.quality.scores(cls.float(), quality.float())
    return torch.logit(score, eps=1e-6)


def valuable_region(
    model: GFL,
    points: Tensor,
    strides: Tensor,
    sizes: list[tuple[int, int]],
    targets: list[dict],
    valid: Tensor,
    alpha: float,
) -> Tensor:
    """The valuable localization region of LD (the paper's VLR): [B, A], at each location the
    IoU of its square anchor with the gt for which α·t ≤ DIoU(anchor, gt) < t (t: that gt's
    ATSS threshold, the mean + unbiased std of its candidates' IoUs, with the model's assigner
    settings), the largest if several; 0 elsewhere and outside each image's valid area
    (`valid` [B, A]). Positives may lie in it too, as in the reference."""
    gt_boxes, _, gt_valid = pad_targets(targets, points.device)
    b, g = gt_boxes.shape[:2]
    a = points.shape[0]
    if g == 0:
        return points.new_zeros(b, a)
    anchors = square_anchors(points, strides, model.assigner.anchor_scale)
    gts = gt_boxes.reshape(b * g, 4).to(anchors.dtype)
    image = torch.arange(b, device=points.device).repeat_interleave(g)
    col_valid = valid[image]  # [BG, A]: the anchors of each gt's image
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centers = (gts[:, :2] + gts[:, 2:]) / 2
    num_level = [h * w for h, w in sizes]
    cand, ok = _nearest_candidates(centers, num_level, gt_centers, model.assigner.topk, col_valid)
    ious = box_iou(anchors, gts)  # [A, BG]
    cand_ious = ious.gather(0, cand)
    n = ok.sum(0)
    mean = torch.where(ok, cand_ious, 0.0).sum(0) / n.clamp(min=1)
    var = torch.where(ok, (cand_ious - mean).square(), 0.0).sum(0) / (n - 1).clamp(min=1)
    thr = mean + var.sqrt()  # [BG]
    dious = distance_box_iou(anchors, gts)
    inside = (dious >= alpha * thr) & (dious < thr) & col_valid.t() & gt_valid.reshape(1, b * g)
    value = torch.where(inside, ious, 0.0).view(a, b, g).amax(-1)  # [A, B]
    return value.t()


def build_distiller(
    opts: DistillOptions,
    student: GFL,
    device: torch.device,
    teacher_model: ModelOptions | None = None,
    class_names: list[str] | None = None,
) -> Distiller | None:
    """The Distiller of the `distill` section (None when distill.teacher_checkpoint is unset),
    its teacher checked against `student` (see check_pair; for class distillation also the
    classes, against `class_names` when given)."""
    if not opts.teacher_checkpoint:
        return None
    teacher, teacher_classes = load_teacher(opts, device, teacher_model)
    source = opts.teacher_checkpoint
    check_pair(teacher, student, source)
    if opts.cls_weight > 0:
        if teacher.num_classes != student.num_classes or (
            class_names is not None and teacher_classes not in (None, list(class_names))
        ):
            raise ValueError(
                f"distill.cls_weight: the teacher {source} has {teacher.num_classes} classes "
                f"{teacher_classes or ''} and the student {student.num_classes} "
                f"{list(class_names or [])}: class distillation needs the same classes; set "
                "distill.cls_weight 0"
            )
        if student.num_classes < 2:
            raise ValueError(
                "distill.cls_weight: class distillation is a softmax over the classes, which "
                "teaches nothing with 1 class; set distill.cls_weight 0"
            )
    n = sum(p.numel() for p in teacher.parameters())
    log.info(
        "distill: teacher %s (%.2fM parameters, %s); T %g, weight %g%s%s",
        source,
        n / 1e6,
        _bins(teacher),
        opts.temperature,
        opts.weight,
        f"; VLR weight {opts.vlr_weight:g} (α {opts.vlr_alpha:g})" if opts.vlr_weight else "",
        f"; class KD weight {opts.cls_weight:g} (T {opts.cls_temperature:g})"
        if opts.cls_weight
        else "",
    )
    return Distiller(opts, teacher)
