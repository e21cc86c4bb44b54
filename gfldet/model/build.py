"""build_model: a config's `model` section -> GFL(backbone, neck, head).

The backbone is looked up by `model.backbone.type` in BACKBONES (a dict of builders), or names
a class of your own as "module:Class" (`import_module_class`: only nn.Module classes, and only
from gfldet, torchvision or modules you allow); the neck and the head by `model.neck.type` and
`model.head.type` in the registries of gfldet.model.registry.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable

from torch import nn

from ..core.options import checked
from .backbones import ResNet, TorchvisionBackbone, load_backbone_weights
from .detector import GFL
from .interfaces import Backbone
from .options import (
    RESNETS,
    TORCHVISION_BACKBONES,
    BackboneOptions,
    ModelOptions,
    check_model_options,
)
from .registry import HEADS, NECKS

log = logging.getLogger("gfldet")

# `module:Class` parts from modules outside these packages need the user's explicit opt-in.
TRUSTED_PACKAGES = ("gfldet", "torchvision")
ALLOW_ENV = "GFLDET_ALLOW_CUSTOM_MODULES"  # comma-separated module prefixes, or *


def _resnet(o: BackboneOptions) -> nn.Module:
    depth, groups, per_group = RESNETS[o.type] or (o.depth, 1, 64)
    return ResNet(depth, o.base_width, o.frozen_stages, o.norm_eval, groups, per_group)


def _torchvision(o: BackboneOptions) -> nn.Module:
    return TorchvisionBackbone(o.type, o.frozen_stages, o.norm_eval)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def allowed_module(module: str) -> bool:
    """Whether a config may import `module` for a `module:Class` part: gfldet and torchvision
    always; any other module only when GFLDET_ALLOW_CUSTOM_MODULES (set by the CLI's
    --allow-custom-modules) lists one of its prefixes, or is `*`. Never the standard
    library."""
    if module.split(".")[0] in sys.stdlib_module_names:
        return False
    if any(_within(module, p) for p in TRUSTED_PACKAGES):
        return True
    allowed = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return "*" in allowed or any(_within(module, p) for p in allowed)


def import_module_class(type_name: str, key: str) -> type[nn.Module]:
    """The nn.Module class that a config's "module:Class" value (`type_name`, at config key
    `key`) names. A config is data: the module is checked before it is imported
    (`allowed_module`), and anything but an nn.Module class (a function, a builtin, another
    object) is refused. Raises ValueError, one line naming the key and the value."""
    module, _, name = type_name.partition(":")
    what = f"{key} {type_name!r}"
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        raise ValueError(
            f"{what}: refused: a config may only name nn.Module classes, and the Python "
            f"standard library ({top}) holds none"
        )
    if not allowed_module(module):
        raise ValueError(
            f"{what}: the module {module!r} is outside gfldet and torchvision, and a config "
            f"alone never imports code: if you trust it, allow it with --allow-custom-modules "
            f"{top} (or the environment variable {ALLOW_ENV}={top})"
        )
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}: cannot import it ({e})") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        kind = type(obj).__name__
        raise ValueError(
            f"{what}: refused: it is a {kind}, not an nn.Module class; a config may only "
            "name nn.Module classes"
        )
    return obj


def _custom(o: BackboneOptions) -> nn.Module:
    """A "module:Class" backbone of your own, built with model.backbone.kwargs."""
    cls = import_module_class(o.type, "model.backbone.type")
    try:
        backbone = cls(**o.kwargs)
    except TypeError as e:  # an unknown or missing keyword argument
        raise ValueError(
            f"model.backbone.type {o.type!r}: cannot build it with model.backbone.kwargs "
            f"{o.kwargs} ({e})"
        ) from None
    if not isinstance(backbone, Backbone):
        raise ValueError(
            f"model.backbone.type {o.type!r}: {cls.__name__} is not a backbone: it needs "
            "`out_channels` and `strides` (docs/extending.md)"
        )
    return backbone


BACKBONES: dict[str, Callable[[BackboneOptions], nn.Module]] = {
    **{name: _resnet for name in RESNETS},
    **{name: _torchvision for name in TORCHVISION_BACKBONES},
}


def build_backbone(o: BackboneOptions) -> nn.Module:
    """The backbone of `model.backbone`, with its pretrained weights when given."""
    defaults = BackboneOptions()
    unused = [k for k in ("depth", "base_width") if getattr(o, k) != getattr(defaults, k)]
    if o.type != "resnet" and unused:  # e.g. inherited from a ResNet config
        log.warning(
            "model.backbone.%s: for type resnet only; not used by %s", " / ".join(unused), o.type
        )
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
    neck = NECKS.get(m.neck.type)(
        list(backbone.out_channels),
        m.neck.out_channels,
        m.neck.extra_levels,
        list(backbone.strides),
    )
    head = HEADS.get(m.head.type)(m.num_classes, neck.out_channels, len(neck.strides), m.head)
    return GFL(backbone, neck, head, m.loss, m.assigner, m.test, tuple(m.mean), tuple(m.std))


__all__ = ["BACKBONES", "NECKS", "HEADS", "build_backbone", "build_model", "import_module_class"]
