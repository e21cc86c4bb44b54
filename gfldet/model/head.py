"""The GFL head: conv towers shared over levels, joint class-quality scores and box outputs.

The box and quality representations (gfldet.model.representations) decide the regression
channels and any extra branch; the towers' convs are standard (GFL) or depthwise-separable
(NanoDet-style, for CPUs), their norms GroupNorm (GFL) or BatchNorm, shared over levels or one
per level.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import HeadOptions
from .representations import box_representation, quality_representation


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if kind == "gn" else nn.BatchNorm2d(channels)


class ConvNormAct(nn.Module):
    """A 3x3 conv, its norm and ReLU; or, depthwise-separable, a 3x3 depthwise conv + norm +
    ReLU, then a 1x1 pointwise conv + norm + ReLU. Attribute names are MMDetection's ConvModule
    (`conv`, `gn` / `bn`) and NanoDet's DepthwiseConvModule (`depthwise`, `dwnorm`,
    `pointwise`, `pwnorm`).

    With `num_levels` > 1 every norm is a ModuleList holding one norm per pyramid level (the
    convs stay shared): forward(x, level) uses that level's. After BatchNorm folding
    (gfldet.model.fuse) a conv may likewise be a list of per-level convs.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        conv: str = "standard",
        norm: str = "gn",
        groups: int = 32,
        num_levels: int = 1,
    ) -> None:
        super().__init__()
        separable = conv == "depthwise"

        def norms(channels: int) -> nn.Module:
            if num_levels == 1:
                return _norm(norm, channels, groups)
            return nn.ModuleList(_norm(norm, channels, groups) for _ in range(num_levels))

        if separable:
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.dwnorm = norms(cin)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
            self.pwnorm = norms(cout)
            self.pairs = [("depthwise", "dwnorm"), ("pointwise", "pwnorm")]
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.add_module(norm, norms(cout))
            self.pairs = [("conv", norm)]

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(self, conv, norm) pairs whose norm is BatchNorm (or a list of per-level ones)."""
        out = []
        for conv, norm in self.pairs:
            n = getattr(self, norm)
            first = n[0] if isinstance(n, nn.ModuleList) else n
            if isinstance(first, nn.modules.batchnorm._BatchNorm):
                out.append((self, conv, norm))
        return out

    def forward(self, x: Tensor, level: int = 0) -> Tensor:
        for conv, norm in self.pairs:
            c, n = getattr(self, conv), getattr(self, norm)
            c = c[level] if isinstance(c, nn.ModuleList) else c
            n = n[level] if isinstance(n, nn.ModuleList) else n
            x = F.relu(n(c(x)), inplace=True)
        return x


class Scale(nn.Module):
    """A learnable scalar multiplying the regression output of one pyramid level."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class GFLHead(nn.Module):
    """A cls tower and a reg tower of `stacked_convs` x ConvNormAct, shared over levels.

    gfl_cls gives C sigmoid logits per location; gfl_reg gives the box representation's R
    outputs, times a per-level Scale. The quality representation may add layers (registered
    after gfl_reg under its names: a separate branch's `gfl_quality` on the reg tower, GFLv2's
    `reg_conf`) and gives each level's quality output from the reg tower and the Scale'd
    regression output.

    `box` and `quality` are the representation objects the detector asks how to decode, which
    losses to add and how to score (gfldet.model.representations); `model.head.box` and
    `model.head.quality` name them in their registries. Meets gfldet.model.interfaces.Head.

    forward: [P_l [B, F, H_l, W_l]] -> (cls [B, A, C], reg [B, A, R], quality [B, A, 1] or
    None: a branch's logits, DGQP's probability), A = sum H_l*W_l, locations of each level in
    row-major order, levels in order; R = box.channels.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        num_levels: int = 5,
        options: HeadOptions | None = None,
    ) -> None:
        super().__init__()
        o = options or HeadOptions()
        self.num_classes, self.reg_max = num_classes, o.reg_max
        self.box = box_representation(o.box, o)
        self.quality = quality_representation(o.quality, o)
        levels = num_levels if o.per_level_norm else 1

        def tower() -> nn.ModuleList:
            chans = [in_channels] + [o.feat_channels] * o.stacked_convs
            return nn.ModuleList(
                ConvNormAct(a, b, o.conv, o.norm, o.num_groups, levels)
                for a, b in zip(chans, chans[1:])
            )

        self.cls_convs, self.reg_convs = tower(), tower()
        tower_out = o.feat_channels if o.stacked_convs > 0 else in_channels
        self.gfl_cls = nn.Conv2d(tower_out, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(tower_out, self.box.channels, 3, padding=1)
        # Registered after gfl_reg so that GFL's own initialisation draws are unchanged.
        for name, layer in self.quality.layers(tower_out).items():
            self.add_module(name, layer)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start every score at prior_prob so the many negatives don't swamp the first steps.
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - o.prior_prob) / o.prior_prob))
        self.quality.init_layers(self)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        cls_out, reg_out, quality_out = [], [], []
        for level, (x, scale) in enumerate(zip(feats, self.scales)):
            c = r = x
            for conv in self.cls_convs:
                c = conv(c, level)
            for conv in self.reg_convs:
                r = conv(r, level)
            cls_out.append(self.gfl_cls(c).flatten(2))
            reg = scale(self.gfl_reg(r))
            reg_out.append(reg.flatten(2))
            q = self.quality.level_output(self, r, reg)
            if q is not None:
                quality_out.append(q.flatten(2))
        cls = torch.cat(cls_out, 2).transpose(1, 2)
        reg = torch.cat(reg_out, 2).transpose(1, 2)
        quality = torch.cat(quality_out, 2).transpose(1, 2) if quality_out else None
        return cls, reg, quality
