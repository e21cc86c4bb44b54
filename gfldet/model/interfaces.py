"""What GFL needs of its parts: the interfaces a backbone and a neck of your own must meet.

    class MyBackbone(nn.Module):
        out_channels = [128, 256, 512]     # channels of the returned maps
        strides = [8, 16, 32]              # their strides (each twice the previous one)
        def forward(self, images):         # normalised float [B, 3, H, W]
            return [c3, c4, c5]            # [B, out_channels[i], H / strides[i], W / strides[i]]
        def conv_bn_pairs(self):           # optional: BatchNorms to fold for inference
            return [(self.block, "conv", "bn"), ...]

    model = GFL(MyBackbone(), FPN(backbone.out_channels, 256, 2, backbone.strides), head)

A neck takes the backbone's maps and returns the pyramid the head runs on, with `out_channels`
(one int: every level has it) and `strides` (one per level, doubling). gfldet's own parts
(gfldet.model.backbones, gfldet.model.necks) meet these interfaces; docs/extending.md shows a
backbone added in one file.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Backbone(Protocol):
    """forward: images [B, 3, H, W] (normalised) -> maps [B, out_channels[i], H/s_i, W/s_i]."""

    out_channels: list[int]
    strides: list[int]

    def __call__(self, images: Tensor) -> list[Tensor]: ...


@runtime_checkable
class Neck(Protocol):
    """forward: the backbone's maps -> pyramid levels [B, out_channels, H/s_l, W/s_l]."""

    out_channels: int
    strides: list[int]

    def __call__(self, feats: list[Tensor]) -> list[Tensor]: ...


def check_parts(backbone: nn.Module, neck: nn.Module, head: nn.Module) -> None:
    """Raises TypeError / ValueError naming what a part lacks or what does not fit."""
    for name, part, kind in (("backbone", backbone, Backbone), ("neck", neck, Neck)):
        if not isinstance(part, nn.Module) or not isinstance(part, kind):
            raise TypeError(
                f"the {name} ({type(part).__name__}) must be an nn.Module with `out_channels` "
                f"and `strides` (see gfldet.model.interfaces)"
            )
    strides = list(backbone.strides)
    if len(strides) != len(backbone.out_channels) or not strides:
        raise ValueError(
            f"backbone {type(backbone).__name__}: {len(backbone.out_channels)} out_channels "
            f"but strides {strides}"
        )
    levels = list(neck.strides)
    if any(b != 2 * a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"neck {type(neck).__name__}: strides must double per level: {levels}")
    scales = getattr(head, "scales", None)
    if scales is not None and len(scales) != len(levels):
        raise ValueError(f"the head has {len(scales)} levels, the neck {len(levels)}: {levels}")
