"""Necks: the feature pyramid over the backbone's C3..C5 (Lin et al. 2017), and PAFPN, which
adds PANet's bottom-up path (Liu et al. 2018). Extra levels (P6, P7) are stride-2 convs on the
last output, as GFL uses. Module names follow MMDetection's FPN / PAFPN, so that its checkpoints
map one to one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class FPN(nn.Module):
    """C3..C5 (or more) -> P3..P5 and `extra_levels` more, all with out_channels.

    lateral_convs: 1x1 per input; fpn_convs: 3x3 per input, then one stride-2 3x3 conv per
    extra level, the first applied to the last output (no ReLU between them).

    forward: [C_i [B, c_i, H/s_i, W/s_i]] -> [P_i [B, out, H/s_i, W/s_i]] + extra levels
    (strides doubling), `strides` giving them all.
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = 256,
        extra_levels: int = 2,
        in_strides: list[int] | None = None,
    ) -> None:
        super().__init__()
        in_strides = in_strides or [8 * 2**i for i in range(len(in_channels))]
        self.out_channels = out_channels
        self.strides = [*in_strides, *(in_strides[-1] * 2 ** (i + 1) for i in range(extra_levels))]
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels]
            + [nn.Conv2d(out_channels, out_channels, 3, 2, 1) for _ in range(extra_levels)]
        )
        _xavier(self)

    def top_down(self, feats: list[Tensor]) -> list[Tensor]:
        """The lateral 1x1 convs, each plus the upsampled (nearest) level above it."""
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:])
        return lat

    def extra(self, outs: list[Tensor], first: int) -> list[Tensor]:
        """Appends the extra levels, the stride-2 convs fpn_convs[first:], to `outs`."""
        for conv in self.fpn_convs[first:]:
            outs.append(strided_conv(conv, outs[-1]))
        return outs

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = self.top_down(feats)
        return self.extra([conv(x) for conv, x in zip(self.fpn_convs, lat)], len(lat))


class PAFPN(FPN):
    """FPN plus PANet's bottom-up path: after the FPN's 3x3 convs, each level (from the finest
    up) adds a stride-2 3x3 conv (downsample_convs) of the level below, then a 3x3 conv
    (pafpn_convs); the finest level is the FPN's. Extra levels as in FPN, on the last output.

    forward: as FPN.
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = 256,
        extra_levels: int = 2,
        in_strides: list[int] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, extra_levels, in_strides)
        n = len(in_channels) - 1
        self.downsample_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, 2, 1) for _ in range(n)
        )
        self.pafpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(n)
        )
        _xavier(self.downsample_convs)
        _xavier(self.pafpn_convs)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = self.top_down(feats)
        inner = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        for i, down in enumerate(self.downsample_convs):
            inner[i + 1] = inner[i + 1] + strided_conv(down, inner[i])
        outs = [inner[0]] + [conv(x) for conv, x in zip(self.pafpn_convs, inner[1:])]
        return self.extra(outs, len(lat))
