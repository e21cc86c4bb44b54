"""What GFL needs of its parts: the interfaces a backbone, a neck and a head of your own meet.

    class MyBackbone(nn.Module):
        out_channels = [128, 256, 512]     # channels of the returned maps
        strides = [8, 16, 32]              # their strides (each twice the previous one)
        def forward(self, images):         # normalised float [B, 3, H, W]
            return [c3, c4, c5]            # [B, out_channels[i], H / strides[i], W / strides[i]]
        def conv_bn_pairs(self):           # optional: BatchNorms to fold for inference
            return [(self.block, "conv", "bn"), ...]

    model = GFL(MyBackbone(), FPN(backbone.out_channels, 256, 2, backbone.strides), head)

A neck takes the backbone's maps and returns the pyramid the head runs on, with `out_channels`
(one int: every level has it) and `strides` (one per level, doubling).

A head turns the pyramid into per-location outputs and carries the two representation objects
(gfldet.model.representations) through which GFL reads them: the box representation decodes the
regression output and adds its box loss; the quality representation gives the class targets,
the box-loss weights, any loss of the quality output, and the test scores.

    class MyHead(nn.Module):
        # built by build_model as MyHead(num_classes, in_channels, num_levels, options), with
        # options = model.head (HeadOptions); registered in gfldet.model.registry.HEADS
        num_classes: int
        box: BoxRepresentation             # box_representation(options.box, options)
        quality: QualityRepresentation     # quality_representation(options.quality, options)
        def forward(self, feats):          # the neck's levels, [B, in_channels, H_l, W_l]
            return cls, reg, quality       # [B, A, C] logits, [B, A, box.channels],
                                           # [B, A, 1] or None; A = sum of H_l * W_l

Locations run level by level, each level row-major. An optional `scales` (one module per level)
is checked against the neck's levels. gfldet's own parts (gfldet.model.backbones,
gfldet.model.necks, gfldet.model.head.GFLHead) meet these interfaces; docs/extending.md shows
a backbone, a head and a quality representation added from your own code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from .representations import BoxRepresentation, QualityRepresentation


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


@runtime_checkable
class Head(Protocol):
    """forward: the neck's levels -> (cls [B, A, C] logits, reg [B, A, box.channels],
    quality [B, A, 1] or None), A = the locations of all levels; `box` and `quality` are the
    representations GFL asks how to decode, train and score them."""

    num_classes: int
    box: BoxRepresentation
    quality: QualityRepresentation

    def __call__(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]: ...


_NEEDS = {
    "backbone": (Backbone, "`out_channels` and `strides`"),
    "neck": (Neck, "`out_channels` and `strides`"),
    "head": (Head, "`num_classes`, `box` and `quality`"),
}


def check_parts(backbone: nn.Module, neck: nn.Module, head: nn.Module) -> None:
    """Raises TypeError / ValueError naming what a part lacks or what does not fit."""
    for name, part in (("backbone", backbone), ("neck", neck), ("head", head)):
        kind, needs = _NEEDS[name]
        if not isinstance(part, nn.Module) or not isinstance(part, kind):
            raise TypeError(
                f"the {name} ({type(part).__name__}) must be an nn.Module with {needs} "
                f"(see gfldet.model.interfaces)"
            )
    for attr, base in (("box", BoxRepresentation), ("quality", QualityRepresentation)):
        if not isinstance(getattr(head, attr), base):
            raise TypeError(
                f"the head's `{attr}` ({type(getattr(head, attr)).__name__}) must be a "
                f"gfldet.model.representations.{base.__name__}"
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
