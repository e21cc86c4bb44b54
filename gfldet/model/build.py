"""build_model: a config's `model` section -> GFL(backbone, neck, head), through plain dicts of
builders keyed by `model.backbone.type` and `model.neck.type`."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from torch import nn

from ..core.options import checked
from .backbones import ResNet, TorchvisionBackbone, load_backbone_weights
from .detector import GFL
from .head import GFLHead
from .necks import FPN, PAFPN
from .options import (
    RESNETS,
    TORCHVISION_BACKBONES,
    BackboneOptions,
    ModelOptions,
    check_model_options,
)

log = logging.getLogger("gfldet")


def _resnet(o: BackboneOptions) -> nn.Module:
    depth, groups, per_group = RESNETS[o.type] or (o.depth, 1, 64)
    return ResNet(depth, o.base_width, o.frozen_stages, o.norm_eval, groups, per_group)


def _torchvision(o: BackboneOptions) -> nn.Module:
    return TorchvisionBackbone(o.type, o.frozen_stages, o.norm_eval)


def _custom(o: BackboneOptions) -> nn.Module:
    """A "module:Class" backbone of your own, built with model.backbone.kwargs."""
    module, _, name = o.type.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model.backbone.type {o.type!r}: cannot import it ({e})") from None
    return cls(**o.kwargs)


BACKBONES: dict[str, Callable[[BackboneOptions], nn.Module]] = {
    **{name: _resnet for name in RESNETS},
    **{name: _torchvision for name in TORCHVISION_BACKBONES},
}
NECKS: dict[str, type[nn.Module]] = {"fpn": FPN, "pafpn": PAFPN}


def build_backbone(o: BackboneOptions) -> nn.Module:
    """The backbone of `model.backbone`, with its pretrained weights when given."""
    defaults = BackboneOptions()
    unused = [k for k in ("depth", "base_width") if getattr(o, k) != getattr(defaults, k)]
    if o.type != "resnet" and unused:  # e.g. inherited from a ResNet config
        log.warning("model.backbone.%s: for type resnet only; not used by %s",
                    " / ".join(unused), o.type)  # fmt: skip
    backbone = BACKBONES.get(o.type, _custom)(o)
    if o.pretrained:
        load_backbone_weights(backbone, o.pretrained)
    return backbone


def build_model(m: ModelOptions) -> GFL:
    """Builds the detector of a config's `model` section (`cfg.model`)."""
    # Every value and combination checked before the backbone (and its weights) are built.
    m = checked(m, "model.")
    check_model_options(m)
    if m.num_classes is None:
        raise ValueError(
            "model.num_classes is not set: set it in the config, or build through the trainer, "
            "which takes it from the training set"
        )
    backbone = build_backbone(m.backbone)
    neck = NECKS[m.neck.type](
        list(backbone.out_channels), m.neck.out_channels, m.neck.extra_levels,
        list(backbone.strides),
    )  # fmt: skip
    head = GFLHead(m.num_classes, neck.out_channels, len(neck.strides), m.head)
    return GFL(backbone, neck, head, m.loss, m.assigner, m.test, tuple(m.mean), tuple(m.std))
