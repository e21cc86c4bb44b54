"""The GFL detector: ResNet + FPN + GFL head, its training losses and its post-processing."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..dist import reduce_mean
from ..options import from_dict
from .atss import atss_assign
from .backbone import ResNet
from .box_ops import (
    aligned_box_iou,
    bbox2distance,
    centerness,
    distance2bbox,
    grid_points,
    grid_valid_mask,
    square_anchors,
)
from .fpn import FPN
from .head import MAX_LOG_DISTANCE, GFLHead, Integral, exp_distance
from .losses import (
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    soft_targets,
    varifocal_loss,
)
from .options import LossOptions, ModelOptions, TestOptions, check_model_options


class GFL(nn.Module):
    """Generalized Focal Loss detector (Li et al., NeurIPS 2020), and the paper's ablations.

    forward(images, targets): images uint8 (or float, 0..255) [B, 3, H, W] RGB, padded
    bottom/right; targets: one dict per image with `img_size` (h, w) of the unpadded image and,
    for training, `boxes` [N, 4] xyxy and `labels` [N] in 0..C-1; for inference,
    `scale_factor` (w_scale, h_scale) maps boxes back to the original image.

    Training mode returns the losses, each a scalar: the classification loss "loss_qfl",
    "loss_focal" or "loss_vfl" (model.loss.cls), "loss_giou", and "loss_dfl" (box "general"
    with dfl_weight > 0), "loss_nll" (box "gaussian"), "loss_quality" (quality "centerness" or
    "iou"). The default configuration gives GFL's {"loss_qfl", "loss_giou", "loss_dfl"}.

    Eval mode returns per image {"boxes" [K, 4] xyxy, "scores" [K], "labels" [K]},
    K <= test.max_per_img, and for box "general" also "dists" [K, 4, n+1]: the softmax
    distributions of the (left, top, right, bottom) edges of each kept detection over the bins
    0, Δ, ..., nΔ, in units of "strides" [K], the stride of each detection's pyramid level
    (both gathered after NMS, so they cost nothing measurable).

    The switches (see docs/ablations.md):
    - Classification targets. A positive's quality is the IoU of its decoded (detached)
      predicted box with its gt, or the FCOS centerness of its location in the gt.
      cls "qfl" / "vfl" (quality "joint"): soft target = that IoU at the gt class, QFL or VFL.
      cls "focal" (every other quality): one-hot targets, torchvision's sigmoid_focal_loss.
      Guided ("centerness_guided" / "iou_guided"), after IoU-balanced classification (Wu et
      al. 2019) with η = 1: the focal loss of each positive's gt-class entry is multiplied by
      w_i = q_i · Σ_j FL_j / Σ_j q_j·FL_j (q detached; sums over this batch's positives), which
      keeps the positives' total loss and the one-hot optimum but favours well-localised ones.
      Separate ("centerness" / "iou"): gfl_quality is trained with BCE against q on positives
      (/ N_pos, × quality_weight), and sigmoid(cls) × sigmoid(quality) is the test score.
    - Box: "general" decodes the Integral of the distributions (bins y_i = i·Δ, Δ = bin_width)
      and adds DFL with targets in bin units, distance / Δ clamped to n − 0.1 (i.e. to
      n·Δ − 0.1·Δ strides); "dirac" decodes exp(x) strides per edge, GIoU only; "gaussian"
      decodes the means as dirac and adds the Gaussian NLL of the true edge distances (strides)
      under N(mean, exp(log_var)), × nll_weight, averaged over the 4 edges.
    - Box-loss weight per positive (GIoU, DFL, NLL; normalised by its sum): the centerness
      target for quality "centerness" (ATSS), else the detached max class score (GFL).
    """

    def __init__(
        self,
        backbone: ResNet,
        fpn: FPN,
        head: GFLHead,
        strides: list[int],
        anchor_scale: float = 8.0,
        topk: int = 9,
        loss_cfg: dict[str, Any] | None = None,
        test_cfg: dict[str, Any] | None = None,
        mean: list[float] = (123.675, 116.28, 103.53),
        std: list[float] = (58.395, 57.12, 57.375),
        bin_width: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.bin_width = float(bin_width)
        self.integral = Integral(head.reg_max, self.bin_width)
        self.strides, self.anchor_scale, self.topk = list(strides), anchor_scale, topk
        self.loss_cfg = dataclasses.asdict(from_dict(LossOptions, loss_cfg, "model.loss."))
        self.test_cfg = dataclasses.asdict(from_dict(TestOptions, test_cfg, "model.test."))
        head_cfg = {"quality": head.quality, "box": head.box, "reg_max": head.reg_max,
                    "bin_width": self.bin_width, "strides": self.strides}  # fmt: skip
        check_model_options(from_dict(ModelOptions, {"head": head_cfg, "loss": self.loss_cfg}))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._grids: dict[tuple, tuple[Tensor, Tensor]] = {}

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def preprocess(self, images: Tensor, targets: list[dict] | None) -> Tensor:
        """uint8 [B, 3, H, W] -> normalised float; padding is 0 after normalisation."""
        x = (images.float() - self.mean) / self.std
        for i, t in enumerate(targets or []):
            h, w = t["img_size"]
            x[i, :, h:, :] = 0
            x[i, :, :, w:] = 0
        return x

    def grid(self, sizes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """Points [A, 2] and strides [A] for these feature sizes, cached per size and device."""
        key = (tuple(sizes), str(device))
        if key not in self._grids:
            self._grids[key] = grid_points(sizes, self.strides, device)
        return self._grids[key]

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> Any:
        feats = self.fpn(self.backbone(self.preprocess(images, targets)))
        cls, reg, quality = self.head(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        points, strides = self.grid(sizes, cls.device)
        if self.training:
            return self.losses(cls, reg, points, strides, sizes, targets, quality)
        return self.postprocess(
            cls, reg, points, strides, sizes, images.shape[-2:], targets, quality
        )

    @torch.inference_mode()
    def predict(self, images: Tensor, targets: list[dict] | None = None) -> list[dict]:
        """Detections per image (see class docstring), in original-image pixels."""
        was_training = self.training
        self.eval()
        try:
            return self(images, targets)
        finally:
            self.train(was_training)

    def decode(self, reg: Tensor) -> Tensor:
        """Edge distances (l, t, r, b) in strides from the reg output: [..., R] -> [..., 4]."""
        if self.head.box == "general":
            return self.integral(reg)
        return exp_distance(reg[..., :4])  # dirac, and the gaussian's means

    def losses(
        self,
        cls: Tensor,
        reg: Tensor,
        points: Tensor,
        strides: Tensor,
        sizes: list[tuple[int, int]],
        targets: list[dict],
        quality: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """cls [B, A, C], reg [B, A, R], points [A, 2], strides [A], quality [B, A, 1] or None.

        GFL: QFL + GIoU + DFL; the ablations' losses as in the class docstring.
        """
        b, _, c = cls.shape
        n, bw = self.head.reg_max, self.bin_width
        lc, q_type, box = self.loss_cfg, self.head.quality, self.head.box
        gt_boxes, gt_labels, _ = pad_targets(targets, cls.device)
        assigned, valid = self.assign(points, strides, sizes, targets)
        pb, pa = (assigned >= 0).nonzero(as_tuple=True)
        gi = assigned[pb, pa]

        # Boxes of the positives in units of their level's stride, as the official head.
        s = strides[pa, None]
        centers = points[pa] / s
        reg_pos = reg[pb, pa]
        pred_dist = self.decode(reg_pos)
        pred_box = distance2bbox(centers, pred_dist)
        target_box = gt_boxes[pb, gi] / s
        labels = torch.full((b, cls.shape[1]), c, dtype=torch.long, device=cls.device)
        labels[pb, pa] = gt_labels[pb, gi]
        iou = aligned_box_iou(pred_box.detach(), target_box).to(cls.dtype)
        # The quality q of each positive that a separate branch learns or a guided loss uses.
        q = centerness(centers, target_box) if q_type.startswith("centerness") else iou
        num_pos = reduce_mean(positives_normaliser(assigned)).clamp(min=1)

        out: dict[str, Tensor] = {}
        weight_cls = valid.reshape(-1).to(cls.dtype)  # 0 in the batch padding (see assign)
        name, loss_cls = self.cls_loss(cls, labels, pb * cls.shape[1] + pa, iou, q, weight_cls)
        out[name] = lc["qfl_weight"] * loss_cls / num_pos

        # Box losses are weighted per positive: GFL's detached best class score, ATSS's
        # centerness target.
        if q_type == "centerness":
            weight = q.to(cls.dtype)
        else:
            weight = cls.detach()[pb, pa].sigmoid().amax(-1)
        weight_sum = reduce_mean(weight.sum()).clamp(min=1)
        loss_giou = (giou_loss(pred_box, target_box, "none") * weight).sum()
        out["loss_giou"] = lc["giou_weight"] * loss_giou / weight_sum
        if box == "general" and lc["dfl_weight"] > 0:
            # DFL works in bin units: target distance / Δ, just below the last bin n.
            dfl_target = (bbox2distance(centers, target_box) / bw).clamp(max=n - 0.1)
            loss_dfl = distribution_focal_loss(
                reg_pos.reshape(-1, n + 1), dfl_target.reshape(-1), "none"
            )
            loss_dfl = (loss_dfl * weight.repeat_interleave(4)).sum() / 4
            out["loss_dfl"] = lc["dfl_weight"] * loss_dfl / weight_sum
        if box == "gaussian":
            var = reg_pos[:, 4:].clamp(-MAX_LOG_DISTANCE, MAX_LOG_DISTANCE).exp()
            target_dist = bbox2distance(centers, target_box)
            nll = F.gaussian_nll_loss(pred_dist, target_dist, var, reduction="none")
            out["loss_nll"] = lc["nll_weight"] * (nll.sum(-1) * weight).sum() / 4 / weight_sum
        if quality is not None:
            loss_q = F.binary_cross_entropy_with_logits(
                quality[pb, pa, 0], q.to(quality.dtype), reduction="sum"
            )
            out["loss_quality"] = lc["quality_weight"] * loss_q / num_pos
        return out

    def assign(
        self, points: Tensor, strides: Tensor, sizes: list[tuple[int, int]], targets: list[dict]
    ) -> tuple[Tensor, Tensor]:
        """ATSS targets of a batch: (assigned [B, A], the gt index of each location or -1;
        valid [B, A], the locations inside each image's own padded size).

        Locations outside (the padding that other, larger images of the batch bring) are
        neither candidates nor positives and weigh 0 in the classification loss, as in the
        official GFL and MMDetection v2: each image's targets do not depend on the batch.
        A target's `pad_size` (h, w) is its image's padded size (collate_batch sets it); when
        absent, the whole batch grid counts.
        """
        gt_boxes, _, gt_valid = pad_targets(targets, points.device)
        # Without pad_size: the whole padded batch, whose size is P3's grid times its stride.
        batch = (sizes[0][0] * self.strides[0], sizes[0][1] * self.strides[0])
        pads = [tuple(t.get("pad_size", batch)) for t in targets]
        valid = grid_valid_mask(sizes, self.strides, pads, points.device)
        anchors = square_anchors(points, strides, self.anchor_scale)
        num_level = [h * w for h, w in sizes]
        assigned, _ = atss_assign(
            anchors, num_level, gt_boxes, gt_valid, self.topk, sizes, None if valid.all() else valid
        )
        return assigned, valid

    def cls_loss(
        self, cls: Tensor, labels: Tensor, pos: Tensor, iou: Tensor, q: Tensor, weight: Tensor
    ) -> tuple[str, Tensor]:
        """The summed classification loss and its name.

        cls [B, A, C]; labels [B, A] (C = background); pos [P] flat indices b*A + a of the
        positives; iou [P] of their predicted boxes; q [P] their quality (guided losses);
        weight [B*A] of each location (0 outside its image's padded size).
        """
        b, a, c = cls.shape
        lc = self.loss_cfg
        logits, flat_labels = cls.reshape(-1, c), labels.reshape(-1)
        w = weight[:, None]
        if lc["cls"] in ("qfl", "vfl"):
            scores = torch.zeros((b, a), dtype=cls.dtype, device=cls.device)
            scores.view(-1)[pos] = iou
            if lc["cls"] == "qfl":
                loss = quality_focal_loss(
                    logits, flat_labels, scores.reshape(-1), lc["qfl_beta"], "none"
                )
                return "loss_qfl", (loss * w).sum()
            target = soft_targets(flat_labels, scores.reshape(-1), c)
            loss = varifocal_loss(logits, target, lc["vfl_alpha"], lc["vfl_gamma"], True, "none")
            return "loss_vfl", (loss * w).sum()
        target = soft_targets(flat_labels, torch.ones_like(flat_labels, dtype=cls.dtype), c)
        alpha, gamma = lc["focal_alpha"], lc["focal_gamma"]
        fl = sigmoid_focal_loss(logits, target, alpha, gamma, "none") * w
        if not self.head.quality.endswith("_guided"):
            return "loss_focal", fl.sum()
        fl_pos = fl[pos, flat_labels[pos]]
        qd, fd = q.detach().to(fl.dtype), fl_pos.detach()
        wq = qd * fd.sum() / (qd * fd).sum().clamp(min=torch.finfo(fl.dtype).tiny)
        return "loss_focal", fl.sum() + ((wq - 1) * fl_pos).sum()

    def postprocess(
        self,
        cls: Tensor,
        reg: Tensor,
        points: Tensor,
        strides: Tensor,
        sizes: list[tuple[int, int]],
        pad_shape: tuple[int, int],
        targets: list[dict] | None,
        quality: Tensor | None = None,
    ) -> list[dict]:
        """Top nms_pre per level, decode, score threshold, class-wise NMS, max_per_img.

        cls [B, A, C], reg [B, A, R], quality [B, A, 1] or None (its sigmoid multiplies the
        class scores, as ATSS); see the class docstring for the result.
        """
        b, _, c = cls.shape
        tc = self.test_cfg
        scores = cls.sigmoid()
        if quality is not None:
            scores = scores * quality.sigmoid()
        max_scores = scores.amax(-1)
        idx, start = [], 0
        for h, w in sizes:
            count = h * w
            if 0 < tc["nms_pre"] < count:
                top = max_scores[:, start : start + count].topk(tc["nms_pre"], dim=1).indices
                idx.append(top + start)
            else:
                idx.append(torch.arange(start, start + count, device=cls.device).expand(b, count))
            start += count
        idx = torch.cat(idx, 1)  # [B, K]
        sel_scores = scores.gather(1, idx[..., None].expand(-1, -1, c))
        sel_reg = reg.gather(1, idx[..., None].expand(-1, -1, reg.shape[-1]))
        dist = self.decode(sel_reg) * strides[idx][..., None]

        if targets is None:
            img_hw = torch.tensor([list(pad_shape)] * b, device=cls.device)
            scale = torch.ones(b, 2, device=cls.device)
        else:
            img_hw = torch.tensor([list(t["img_size"]) for t in targets], device=cls.device)
            scale = torch.tensor(
                [list(t.get("scale_factor", (1.0, 1.0))) for t in targets], device=cls.device
            )
        boxes = distance2bbox(points[idx], dist, max_shape=img_hw[:, None, :])
        boxes = boxes / scale.repeat(1, 2)[:, None, :]

        bi, ki, ci = (sel_scores > tc["score_thr"]).nonzero(as_tuple=True)
        cand_boxes, cand_scores = boxes[bi, ki], sel_scores[bi, ki, ci]
        # One NMS call for the whole batch: groups are (image, class) pairs.
        keep = batched_nms(cand_boxes, cand_scores, bi * c + ci, tc["nms_iou"])
        kept_img = bi[keep]
        results = []
        for i in range(b):
            k = keep[kept_img == i][: tc["max_per_img"]]
            res = {"boxes": cand_boxes[k], "scores": cand_scores[k], "labels": ci[k]}
            if self.head.box == "general":
                n1 = self.head.reg_max + 1
                res["dists"] = sel_reg[i, ki[k]].unflatten(-1, (4, n1)).softmax(-1)
                res["strides"] = strides[idx[i, ki[k]]]
            results.append(res)
        return results


def positives_normaliser(assigned: Tensor) -> Tensor:
    """The classification loss's normaliser for one process: the number of positive locations
    summed over images, each image counting at least 1 (the official implementation's
    sum of max(num_pos_i, 1)); assigned [B, A] -> scalar float. Averaged over processes (and
    floored at 1) by the caller."""
    return (assigned >= 0).sum(1).clamp(min=1).sum().float()


def pad_targets(targets: list[dict], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Stacks per-image gts: boxes [B, G, 4], labels [B, G], valid [B, G], G = max per image."""
    g = max((len(t["labels"]) for t in targets), default=0)
    boxes = torch.zeros(len(targets), g, 4, device=device)
    labels = torch.zeros(len(targets), g, dtype=torch.long, device=device)
    valid = torch.zeros(len(targets), g, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        boxes[i, :n] = t["boxes"].to(device)
        labels[i, :n] = t["labels"].to(device)
        valid[i, :n] = True
    return boxes, labels, valid


def build_model(cfg: dict) -> GFL:
    """Builds the detector from a config dict (see gfldet.config.DEFAULTS for the keys)."""
    m = cfg["model"]
    # Every value and combination checked before the backbone (and its weights) are built.
    check_model_options(from_dict(ModelOptions, m, "model."))
    if m["num_classes"] is None:
        raise ValueError(
            "model.num_classes is not set: set it in the config, or build through the trainer, "
            "which takes it from the training set"
        )
    bb, h = m["backbone"], m["head"]
    backbone = ResNet(bb["depth"], bb["base_width"], bb["frozen_stages"], bb["norm_eval"])
    if bb["pretrained"]:
        backbone.load_pretrained(bb["pretrained"])
    out = m["fpn"]["out_channels"]
    fpn = FPN(backbone.out_channels, out, num_extra=len(h["strides"]) - 3)
    head = GFLHead(
        m["num_classes"],
        out,
        h["feat_channels"],
        h["stacked_convs"],
        h["num_groups"],
        h["reg_max"],
        len(h["strides"]),
        h["prior_prob"],
        h["quality"],
        h["box"],
    )
    return GFL(
        backbone,
        fpn,
        head,
        h["strides"],
        h["anchor_scale"],
        m["assigner"]["topk"],
        m["loss"],
        m["test"],
        cfg["data"]["mean"],
        cfg["data"]["std"],
        h["bin_width"],
    )
