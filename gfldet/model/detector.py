"""The GFL detector: ResNet + FPN + GFL head, its training losses and its post-processing."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..dist import reduce_mean
from .atss import atss_assign
from .backbone import ResNet
from .box_ops import aligned_box_iou, bbox2distance, distance2bbox, grid_points, square_anchors
from .fpn import FPN
from .head import GFLHead, Integral
from .losses import distribution_focal_loss, giou_loss, quality_focal_loss


class GFL(nn.Module):
    """Generalized Focal Loss detector (Li et al., NeurIPS 2020).

    forward(images, targets): images uint8 (or float, 0..255) [B, 3, H, W] RGB, padded
    bottom/right; targets: one dict per image with `img_size` (h, w) of the unpadded image and,
    for training, `boxes` [N, 4] xyxy and `labels` [N] in 0..C-1; for inference,
    `scale_factor` (w_scale, h_scale) maps boxes back to the original image.
    Training mode returns {"loss_qfl", "loss_giou", "loss_dfl"}; eval mode returns per image
    {"boxes" [K, 4] xyxy, "scores" [K], "labels" [K]}, K <= test.max_per_img.
    """

    def __init__(
        self,
        backbone: ResNet,
        fpn: FPN,
        head: GFLHead,
        strides: list[int],
        anchor_scale: float = 8.0,
        topk: int = 9,
        loss_cfg: dict[str, float] | None = None,
        test_cfg: dict[str, Any] | None = None,
        mean: list[float] = (123.675, 116.28, 103.53),
        std: list[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.integral = Integral(head.reg_max)
        self.strides, self.anchor_scale, self.topk = list(strides), anchor_scale, topk
        self.loss_cfg = {"qfl_beta": 2.0, "qfl_weight": 1.0, "giou_weight": 2.0, "dfl_weight": 0.25}
        self.loss_cfg.update(loss_cfg or {})
        self.test_cfg = {"nms_pre": 1000, "score_thr": 0.05, "nms_iou": 0.6, "max_per_img": 100}
        self.test_cfg.update(test_cfg or {})
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
        cls, reg = self.head(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        points, strides = self.grid(sizes, cls.device)
        if self.training:
            return self.losses(cls, reg, points, strides, sizes, targets)
        return self.postprocess(cls, reg, points, strides, sizes, images.shape[-2:], targets)

    @torch.inference_mode()
    def predict(self, images: Tensor, targets: list[dict] | None = None) -> list[dict]:
        """Detections per image (see class docstring), in original-image pixels."""
        was_training = self.training
        self.eval()
        try:
            return self(images, targets)
        finally:
            self.train(was_training)

    def losses(
        self,
        cls: Tensor,
        reg: Tensor,
        points: Tensor,
        strides: Tensor,
        sizes: list[tuple[int, int]],
        targets: list[dict],
    ) -> dict[str, Tensor]:
        """QFL + GIoU + DFL. cls [B, A, C], reg [B, A, 4(n+1)], points [A, 2], strides [A]."""
        b, _, c = cls.shape
        n = self.head.reg_max
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, cls.device)
        anchors = square_anchors(points, strides, self.anchor_scale)
        assigned, _ = atss_assign(anchors, [h * w for h, w in sizes], gt_boxes, gt_valid, self.topk)
        pb, pa = (assigned >= 0).nonzero(as_tuple=True)
        gi = assigned[pb, pa]

        # Boxes of the positives in units of their level's stride, as the official head.
        s = strides[pa, None]
        centers = points[pa] / s
        reg_pos = reg[pb, pa]
        pred_box = distance2bbox(centers, self.integral(reg_pos))
        target_box = gt_boxes[pb, gi] / s
        labels = torch.full((b, cls.shape[1]), c, dtype=torch.long, device=cls.device)
        labels[pb, pa] = gt_labels[pb, gi]
        scores = torch.zeros((b, cls.shape[1]), dtype=cls.dtype, device=cls.device)
        scores[pb, pa] = aligned_box_iou(pred_box.detach(), target_box).to(cls.dtype)

        lc = self.loss_cfg
        num_pos = reduce_mean(torch.tensor(float(pa.numel()), device=cls.device)).clamp(min=1)
        loss_qfl = quality_focal_loss(
            cls.reshape(-1, c), labels.reshape(-1), scores.reshape(-1), lc["qfl_beta"], "sum"
        )
        # Box losses are weighted by the detached best class score of each positive.
        weight = cls.detach()[pb, pa].sigmoid().amax(-1)
        weight_sum = reduce_mean(weight.sum()).clamp(min=1)
        loss_giou = (giou_loss(pred_box, target_box, "none") * weight).sum()
        dfl_target = bbox2distance(centers, target_box, n - 0.1)
        loss_dfl = distribution_focal_loss(
            reg_pos.reshape(-1, n + 1), dfl_target.reshape(-1), "none"
        )
        loss_dfl = (loss_dfl * weight.repeat_interleave(4)).sum() / 4
        return {
            "loss_qfl": lc["qfl_weight"] * loss_qfl / num_pos,
            "loss_giou": lc["giou_weight"] * loss_giou / weight_sum,
            "loss_dfl": lc["dfl_weight"] * loss_dfl / weight_sum,
        }

    def postprocess(
        self,
        cls: Tensor,
        reg: Tensor,
        points: Tensor,
        strides: Tensor,
        sizes: list[tuple[int, int]],
        pad_shape: tuple[int, int],
        targets: list[dict] | None,
    ) -> list[dict]:
        """Top nms_pre per level, decode, score threshold, class-wise NMS, max_per_img."""
        b, _, c = cls.shape
        tc = self.test_cfg
        scores = cls.sigmoid()
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
        dist = self.integral(sel_reg) * strides[idx][..., None]

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
            results.append({"boxes": cand_boxes[k], "scores": cand_scores[k], "labels": ci[k]})
        return results


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
    )
