"""The GFL detector: a backbone, a neck and the GFL head; its training losses (ATSS targets,
QFL / GIoU / DFL) and its post-processing (top-k per level, one batched NMS)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..core.dist import reduce_mean
from .atss import atss_assign
from .box_ops import (
    aligned_box_iou,
    bbox2distance,
    distance2bbox,
    grid_limits,
    grid_points,
    grid_valid_mask,
    square_anchors,
)
from .interfaces import Backbone, Head, Neck, check_parts
from .losses import classification_loss, giou_loss
from .options import CLS_LOSS_SOFT_TARGETS, AssignerOptions, LossOptions, TestOptions


class GFL(nn.Module):
    """Generalized Focal Loss detector (Li et al., NeurIPS 2020), and the paper's ablations.

        model = GFL(backbone, neck, head)       # any parts meeting gfldet.model.interfaces

    forward(images, targets): images uint8 (or float, 0..255) [B, 3, H, W] RGB, padded
    bottom/right; targets: one dict per image with `img_size` (h, w) of the unpadded image and,
    for training, `boxes` [N, 4] xyxy and `labels` [N] in 0..C-1 (and `pad_size`, see
    `assign`); for inference, `scale_factor` (w_scale, h_scale) maps boxes back to the
    original image.

    Training mode returns the losses, each a scalar: the classification loss "loss_qfl",
    "loss_focal" or "loss_vfl" (model.loss.cls), "loss_giou", and whatever the box and quality
    representations add (gfldet.model.representations): "loss_dfl" (general), "loss_nll"
    (gaussian), "loss_quality" (a separate branch). GFL gives {"loss_qfl", "loss_giou",
    "loss_dfl"}.

    Eval mode returns per image {"boxes" [K, 4] xyxy, "scores" [K], "labels" [K]},
    K <= test.max_per_img, and with edge distributions (box "general") also "dists"
    [K, 4, n+1]: the softmax distributions of the (left, top, right, bottom) edges of each kept
    detection over the bins 0, Δ, ..., nΔ, in units of "strides" [K], the stride of each
    detection's pyramid level (both gathered after NMS, so they cost nothing measurable).

    Losses: ATSS positives in the image's own padded area; the classification loss on every
    valid location with the quality representation's targets (IoU of the decoded, detached
    predicted box for GFL), over the positives (each image counting at least 1, averaged over
    processes); GIoU and the representation's box loss on the positives, each weighted by the
    quality representation's weight (GFL: the detached best class score) and normalised by the
    weights' sum (averaged over processes).
    """

    def __init__(
        self,
        backbone: Backbone,
        neck: Neck,
        head: Head,
        loss: LossOptions | None = None,
        assigner: AssignerOptions | None = None,
        test: TestOptions | None = None,
        mean: tuple[float, ...] = (123.675, 116.28, 103.53),
        std: tuple[float, ...] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        check_parts(backbone, neck, head)
        self.backbone, self.neck, self.head = backbone, neck, head
        self.strides = list(neck.strides)
        self.loss, self.assigner = loss or LossOptions(), assigner or AssignerOptions()
        self.test = test or TestOptions()
        if head.quality.soft_targets != CLS_LOSS_SOFT_TARGETS[self.loss.cls]:
            raise ValueError(
                f"model.loss.cls {self.loss.cls!r} does not fit model.head.quality "
                f"{head.quality.name!r}: the joint quality is trained with qfl or vfl, the "
                "others with focal"
            )
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

    def features(self, x: Tensor) -> list[Tensor]:
        """Pyramid features [P_l [B, F, H_l, W_l]] of normalised images [B, 3, H, W]."""
        return self.neck(self.backbone(x))

    def grid(self, sizes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """Points [A, 2] and strides [A] for these feature sizes, cached per size and device."""
        key = (tuple(sizes), str(device))
        if key not in self._grids:
            self._grids[key] = grid_points(sizes, self.strides, device)
        return self._grids[key]

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> Any:
        feats = self.features(self.preprocess(images, targets))
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
        return self.head.box.decode(reg)

    def assign(
        self,
        points: Tensor,
        strides: Tensor,
        sizes: list[tuple[int, int]],
        targets: list[dict],
        gts: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """ATSS targets of a batch: (assigned [B, A], the gt index of each location or -1;
        valid [B, A], the locations inside each image's own padded size).

        Locations outside (the padding that other, larger images of the batch bring) are
        neither candidates nor positives and weigh 0 in the classification loss, as in the
        official GFL and MMDetection v2: each image's targets do not depend on the batch.
        A target's `pad_size` (h, w) is its image's padded size (collate_batch sets it); when
        absent, the whole batch grid counts. `gts`: `pad_targets(targets)` when the caller has
        it already.
        """
        gt_boxes, _, gt_valid = gts if gts is not None else pad_targets(targets, points.device)
        # Without pad_size: the whole padded batch, whose size is P3's grid times its stride.
        batch = (sizes[0][0] * self.strides[0], sizes[0][1] * self.strides[0])
        pads = [tuple(t.get("pad_size", batch)) for t in targets]
        valid = grid_valid_mask(sizes, self.strides, pads, points.device)
        # Decided on the host: valid.all() would wait for the device every step.
        full = all(
            lim == tuple(size)
            for size, level in zip(sizes, grid_limits(sizes, self.strides, pads))
            for lim in level
        )
        anchors = square_anchors(points, strides, self.assigner.anchor_scale)
        num_level = [h * w for h, w in sizes]
        assigned, _ = atss_assign(
            anchors, num_level, gt_boxes, gt_valid, self.assigner.topk, sizes,
            None if full else valid,
        )  # fmt: skip
        return assigned, valid

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
        b, a, c = cls.shape
        lo, box, q_repr = self.loss, self.head.box, self.head.quality
        gts = pad_targets(targets, cls.device)
        gt_boxes, gt_labels, _ = gts
        assigned, valid = self.assign(points, strides, sizes, targets, gts)
        pb, pa = (assigned >= 0).nonzero(as_tuple=True)
        gi = assigned[pb, pa]

        # Boxes of the positives in units of their level's stride, as the official head.
        s = strides[pa, None]
        centers = points[pa] / s
        reg_pos = reg[pb, pa]
        pred_dist = box.decode(reg_pos)
        pred_box = distance2bbox(centers, pred_dist)
        target_box = gt_boxes[pb, gi] / s
        labels = torch.full((b, a), c, dtype=torch.long, device=cls.device)
        labels[pb, pa] = gt_labels[pb, gi]
        iou = aligned_box_iou(pred_box.detach(), target_box).to(cls.dtype)
        q = q_repr.quality_target(centers, target_box, iou)
        num_pos = reduce_mean(positives_normaliser(assigned)).clamp(min=1)

        out: dict[str, Tensor] = {}
        scores = torch.zeros((b, a), dtype=cls.dtype, device=cls.device)  # soft targets
        scores[pb, pa] = q_repr.cls_target(iou, q)
        # GFLv2 learns the joint probability sigmoid(cls) x I, the others the class logits.
        joint = q_repr.cls_loss_input(cls, quality)
        guided_pos, guided_q = q_repr.cls_loss_guidance(pb * a + pa, q)
        name, loss_cls = classification_loss(
            joint.reshape(-1, c),
            labels.reshape(-1),
            scores.reshape(-1),
            valid.reshape(-1).to(cls.dtype),
            lo,
            guided_pos,
            guided_q,
            q_repr.cls_loss_on_probabilities,
        )
        out[name] = lo.qfl_weight * loss_cls / num_pos

        weight = q_repr.box_weight(cls[pb, pa], q, None if quality is None else quality[pb, pa])
        weight_sum = reduce_mean(weight.sum()).clamp(min=1)
        loss_giou = (giou_loss(pred_box, target_box, "none") * weight).sum()
        out["loss_giou"] = lo.giou_weight * loss_giou / weight_sum
        target_dist = bbox2distance(centers, target_box)
        for k, v in box.losses(reg_pos, pred_dist, target_dist, weight, lo).items():
            out[k] = v / weight_sum
        if quality is not None:
            for k, v in q_repr.losses(quality[pb, pa, 0], q, lo).items():
                out[k] = v / num_pos
        return out

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

        cls [B, A, C], reg [B, A, R], quality [B, A, 1] or None (see the quality
        representation's `scores`); see the class docstring for the result.
        """
        b, _, c = cls.shape
        tc = self.test
        scores = self.head.quality.scores(cls, quality)
        max_scores = scores.amax(-1)
        idx, start = [], 0
        for h, w in sizes:
            count = h * w
            if 0 < tc.nms_pre < count:
                top = max_scores[:, start : start + count].topk(tc.nms_pre, dim=1).indices
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

        bi, ki, ci = (sel_scores > tc.score_thr).nonzero(as_tuple=True)
        cand_boxes, cand_scores = boxes[bi, ki], sel_scores[bi, ki, ci]
        # One NMS call for the whole batch: groups are (image, class) pairs.
        keep = batched_nms(cand_boxes, cand_scores, bi * c + ci, tc.nms_iou)
        kept_img = bi[keep]
        results = []
        for i in range(b):
            k = keep[kept_img == i][: tc.max_per_img]
            res = {"boxes": cand_boxes[k], "scores": cand_scores[k], "labels": ci[k]}
            if self.head.box.has_distributions:
                res["dists"] = self.head.box.distributions(sel_reg[i, ki[k]])
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
        # Asynchronous from the loader's pinned memory (a plain copy when it is not pinned).
        boxes[i, :n] = t["boxes"].to(device, non_blocking=True)
        labels[i, :n] = t["labels"].to(device, non_blocking=True)
        valid[i, :n] = True
    return boxes, labels, valid
