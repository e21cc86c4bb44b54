"""The GFL head: shared conv towers, joint class-quality scores and edge distributions.

The paper's ablations are switches of the same head: a separate quality branch (Table 1(a)) and
the Dirac-delta or Gaussian box representations (Table 2(a)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import QUALITIES

SEPARATE_QUALITIES = ("centerness", "iou")  # the ones with their own output branch
REG_CHANNELS = {  # box representation -> reg output channels per location, given reg_max
    "general": lambda n: 4 * (n + 1),
    "dirac": lambda n: 4,
    "gaussian": lambda n: 8,
}


class ConvGNReLU(nn.Module):
    """3x3 conv (no bias) + GroupNorm + ReLU; attribute names match MMDetection's ConvModule."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.gn(self.conv(x)), inplace=True)


class Scale(nn.Module):
    """A learnable scalar multiplying the regression output of one pyramid level."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


# exp() of a Dirac / Gaussian edge output is capped here: e^9.2 ~ 1e4 strides, far beyond any
# box, and finite in fp16 (whose max is 65504), so AMP cannot turn a spike into inf.
MAX_LOG_DISTANCE = 9.2


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


def exp_distance(x: Tensor) -> Tensor:
    """Dirac-delta (and Gaussian-mean) decoding of the Scale'd head output x [..., 4]: the edge
    distances exp(x) in strides, as FCOS. exp keeps every edge positive and alive (ReLU would
    leave negative outputs without gradient) and starts near 1 stride at init."""
    return x.clamp(max=MAX_LOG_DISTANCE).exp()


class GFLHead(nn.Module):
    """Shared over levels: a cls tower and a reg tower of `stacked_convs` x [conv, GN, ReLU].

    gfl_cls gives C sigmoid logits per location; gfl_reg gives the box outputs, times a
    per-level Scale; with a separate quality branch, gfl_quality (on the reg tower, as ATSS's
    centerness) gives one more logit per location.

    quality: "joint" (GFL: the class score is the quality, no extra branch), "none",
    "centerness" / "iou" (separate branch), "centerness_guided" / "iou_guided" (no branch:
    the quality only weights the loss). box: the reg output per location is
    "general" 4*(reg_max+1) distribution logits, "dirac" 4 values (distances exp(x) strides),
    "gaussian" 8 values (4 means as dirac, then 4 log-variances); the Scale multiplies all of
    them.

    forward: [P_l [B, F, H_l, W_l]] -> (cls [B, A, C], reg [B, A, R], quality [B, A, 1] or
    None when there is no separate branch), A = sum H_l*W_l, locations of each level in
    row-major order, levels in order; R = `reg_channels`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        num_groups: int = 32,
        reg_max: int = 16,
        num_levels: int = 5,
        prior_prob: float = 0.01,
        quality: str = "joint",
        box: str = "general",
    ) -> None:
        super().__init__()
        if box not in REG_CHANNELS:
            raise ValueError(f"box must be one of {', '.join(REG_CHANNELS)}, got {box!r}")
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
        self.num_classes, self.reg_max = num_classes, reg_max
        self.quality, self.box = quality, box
        self.reg_channels = REG_CHANNELS[box](reg_max)

        def tower() -> nn.ModuleList:
            chans = [in_channels] + [feat_channels] * stacked_convs
            return nn.ModuleList(ConvGNReLU(a, b, num_groups) for a, b in zip(chans, chans[1:]))

        self.cls_convs, self.reg_convs = tower(), tower()
        tower_out = feat_channels if stacked_convs > 0 else in_channels
        self.gfl_cls = nn.Conv2d(tower_out, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(tower_out, self.reg_channels, 3, padding=1)
        # Registered after gfl_reg so that GFL's own initialisation draws are unchanged.
        self.gfl_quality = (
            nn.Conv2d(tower_out, 1, 3, padding=1) if quality in SEPARATE_QUALITIES else None
        )
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start every score at prior_prob so the many negatives don't swamp the first steps.
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        cls_out, reg_out, quality_out = [], [], []
        for x, scale in zip(feats, self.scales):
            c = r = x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_out.append(self.gfl_cls(c).flatten(2))
            reg_out.append(scale(self.gfl_reg(r)).flatten(2))
            if self.gfl_quality is not None:
                quality_out.append(self.gfl_quality(r).flatten(2))
        cls = torch.cat(cls_out, 2).transpose(1, 2)
        reg = torch.cat(reg_out, 2).transpose(1, 2)
        quality = torch.cat(quality_out, 2).transpose(1, 2) if quality_out else None
        return cls, reg, quality
