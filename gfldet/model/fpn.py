"""Feature pyramid (Lin et al. 2017) with P6/P7 computed from the P5 output, as GFL uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """C3..C5 -> P3..P7, all with out_channels.

    lateral_convs: 1x1 per input; fpn_convs: 3x3 per input, then `num_extra` stride-2 3x3 convs,
    the first applied to the P5 output (no ReLU between them). Names follow MMDetection's so
    that its checkpoints map one to one.

    forward: [C3 [B, c3, H/8, W/8], C4, C5] -> [P3 [B, out, H/8, W/8], ..., P7 [B, out, H/128, ..]]
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_extra: int = 2) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels]
            + [nn.Conv2d(out_channels, out_channels, 3, 2, 1) for _ in range(num_extra)]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        for conv in self.fpn_convs[len(lat) :]:
            outs.append(strided_conv(conv, outs[-1]))
        return outs


def strided_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """conv(x), in float32 when x is a CPU bfloat16-autocast map one pixel wide or high.

    torch's oneDNN bfloat16 backward of a strided conv over such a map reads uninitialised
    memory and returns NaN weight gradients on some calls (seen with torch 2.14 on AVX-512
    CPUs; P6/P7 of images of 64 px or less). These maps are tiny: float32 costs nothing.
    """
    thin = min(x.shape[-2:]) == 1 and x.device.type == "cpu"
    if thin and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)
