"""The model's options: every `model.*` config key, its default, type and allowed values.

`gfldet.config` validates YAML against these classes; `build_model` turns the `model` section of
a config dict into a `ModelOptions`. Defaults are the paper's GFL (R-50 + FPN, 1x recipe); the
switches of the paper's ablations are documented in docs/ablations.md. Pure Python (no torch).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ..core.options import OptionError, option, section
from .registry import BOXES, HEADS, NECKS, QUALITIES

# Backbones by name (gfldet.model.build.BACKBONES builds them): gfldet's ResNet, and
# torchvision classification networks. A "module:Class" type names a class of your own.
RESNETS = {"resnet": None, "resnext50_32x4d": (50, 32, 4), "resnext101_32x8d": (101, 32, 8)}
TORCHVISION_BACKBONES = (
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "convnext_tiny",
)
BACKBONE_TYPES = (*RESNETS, *TORCHVISION_BACKBONES)
CUSTOM_TYPE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "my_package.module:MyBackbone"

# Heads, necks, box and quality representations are looked up by name in the registries of
# gfldet.model.registry (HEADS, NECKS, BOXES, QUALITIES), which your own code can extend.
# Classification losses: whether each trains soft (IoU) targets, which the quality
# representation's `soft_targets` must match.
CLS_LOSS_SOFT_TARGETS = {"qfl": True, "focal": False, "vfl": True}
CLS_LOSSES = tuple(CLS_LOSS_SOFT_TARGETS)


@dataclass
class BackboneOptions:
    type: str = option(
        "resnet",
        help="resnet (with depth, base_width), resnext50_32x4d, resnext101_32x8d, a torchvision "
        "network's name, or 'module:Class' for a class of your own (docs/extending.md)",
    )
    depth: int = option(50, choices=(18, 34, 50, 101), help="ResNet depth (type resnet)")
    base_width: int = option(
        64,
        ge=1,
        help="stem channels; stage i has base_width x 2^i (x4 at bottleneck outputs); 64 is the "
        "standard ResNet (type resnet)",
    )
    pretrained: str | None = option(
        None,
        help="ImageNet weights: a torchvision weights name (e.g. "
        "ResNet50_Weights.IMAGENET1K_V1) or a state-dict file; null: random init",
    )
    frozen_stages: int = option(
        1,
        ge=-1,
        le=4,
        help="-1: nothing frozen; k >= 0 freezes everything up to stride 2^(k+1) (0: the stem)",
    )
    norm_eval: bool = option(
        True, help="keep the backbone's BatchNorm statistics frozen (eval mode) while training"
    )
    kwargs: dict = option({}, help="keyword arguments of a 'module:Class' backbone")


@dataclass
class NeckOptions:
    type: str = option(
        "fpn", choices=NECKS, help="fpn (GFL's), or pafpn: FPN plus PANet's bottom-up path"
    )
    out_channels: int = option(256, ge=1, help="channels of every pyramid level")
    extra_levels: int = option(
        2, ge=0, help="stride-2 convs after the last level: 2 gives P6 and P7 (strides 64, 128)"
    )


@dataclass
class DGQPOptions:
    """GFLv2's Distribution-Guided Quality Predictor (model.head.quality: dgqp)."""

    topk: int = option(
        4, ge=1, help="the k largest probabilities of each edge's distribution (<= reg_max + 1)"
    )
    add_mean: bool = option(True, help="and their mean: 4 x (topk + 1) inputs per location")
    channels: int = option(64, ge=1, help="hidden channels of its two 1x1 convs")
    init_bias: float = option(
        0.0,
        help="bias of its last conv at the start, I = sigmoid(init_bias): 0 as the official "
        "code; short runs from scratch do better near 1 (e.g. 4, docs/ablations.md)",
    )


@dataclass
class HeadOptions:
    type: str = option(
        "gfl", choices=HEADS, help="the head, by its name in gfldet.model.registry.HEADS"
    )
    feat_channels: int = option(256, ge=1, help="channels of the head's tower convs")
    stacked_convs: int = option(
        4, ge=0, help="conv + norm + ReLU layers in each of the cls and reg towers"
    )
    conv: str = option(
        "standard",
        choices=("standard", "depthwise"),
        help="tower convs: standard 3x3 (GFL), or depthwise 3x3 + pointwise 1x1 (cheap on CPUs)",
    )
    norm: str = option(
        "gn", choices=("gn", "bn"), help="tower norms: GroupNorm (GFL) or BatchNorm (folded)"
    )
    num_groups: int = option(
        32, ge=1, help="GroupNorm groups in the towers (must divide feat_channels)"
    )
    per_level_norm: bool = option(
        False, help="the towers' convs shared by all levels, their norms one per level"
    )
    reg_max: int = option(
        16,
        ge=1,
        help="n: each box edge is a distribution over the bins 0, Δ, ..., nΔ strides (box general)",
    )
    prior_prob: float = option(
        0.01, gt=0, lt=1, help="initial foreground probability of the classification bias"
    )
    # Ablations (paper Tables 1(a), 2(a), 2(c), docs/ablations.md); defaults are GFL.
    quality: str = option(
        "joint",
        choices=QUALITIES,
        help="quality representation (paper Table 1(a); dgqp: GFLv2); joint and dgqp need "
        "model.loss.cls qfl (joint also vfl), the others focal",
    )
    box: str = option(
        "general",
        choices=BOXES,
        help="box representation (paper Table 2(a)); only general gives edge distributions",
    )
    bin_width: float = option(
        1.0, gt=0, help="Δ: bin i is the distance i·Δ strides (paper Table 2(c); box general)"
    )
    dgqp: DGQPOptions = section(DGQPOptions)  # quality dgqp (GFLv2)


@dataclass
class LossOptions:
    qfl_beta: float = option(2.0, ge=0, help="β of QFL, |y − σ|^β (cls qfl)")
    qfl_weight: float = option(
        1.0, ge=0, help="weight of the classification loss, whichever cls is"
    )
    giou_weight: float = option(2.0, ge=0, help="weight of the GIoU box loss")
    dfl_weight: float = option(
        0.25, ge=0, help="weight of Distribution Focal Loss (box general); 0: no DFL"
    )
    nll_weight: float = option(
        0.25, ge=0, help="weight of the Gaussian negative log-likelihood (box gaussian)"
    )
    cls: str = option(
        "qfl",
        choices=CLS_LOSSES,
        help="classification loss: qfl (IoU soft targets), focal (one-hot targets) or vfl "
        "(Varifocal, IoU soft targets); must fit model.head.quality",
    )
    focal_alpha: float = option(0.25, ge=0, le=1, help="α of the focal loss (cls focal)")
    focal_gamma: float = option(2.0, ge=0, help="γ of the focal loss (cls focal)")
    vfl_alpha: float = option(
        0.75, ge=0, help="α of Varifocal loss, its negatives weighted α·σ^γ (cls vfl)"
    )
    vfl_gamma: float = option(2.0, ge=0, help="γ of Varifocal loss (cls vfl)")
    quality_weight: float = option(
        1.0, ge=0, help="weight of the BCE of a separate quality branch (centerness, iou)"
    )


@dataclass
class AssignerOptions:
    topk: int = option(9, ge=1, help="ATSS candidates per pyramid level and gt box")
    anchor_scale: float = option(
        8.0, gt=0, help="side of ATSS's square anchor = anchor_scale x stride (assignment only)"
    )


@dataclass
class TestOptions:
    __test__ = False  # not a pytest test class

    nms_pre: int = option(
        1000, help="locations kept per level (best class score) before NMS; <= 0 keeps all"
    )
    score_thr: float = option(0.05, ge=0, le=1, help="detections need a score above this")
    nms_iou: float = option(0.6, gt=0, le=1, help="IoU threshold of class-wise NMS")
    max_per_img: int = option(100, ge=1, help="most detections kept per image")


@dataclass
class ModelOptions:
    num_classes: int | None = option(
        None, ge=1, help="number of classes; null: from the training set or the checkpoint"
    )
    init_from: str | None = option(
        None,
        help="a new run starts from this detector checkpoint (gfldet's or MMDetection's), "
        "class conv rows matched by class name; --resume continues a run instead",
    )
    mean: list[float] = option(
        [123.675, 116.28, 103.53],
        length=3,
        help="input normalisation (x − mean) / std inside the model: RGB mean, 0..255 scale",
    )
    std: list[float] = option(
        [58.395, 57.12, 57.375],
        gt=0,
        length=3,
        help="input normalisation: RGB std, 0..255 scale",
    )
    backbone: BackboneOptions = section(BackboneOptions)
    neck: NeckOptions = section(NeckOptions)
    head: HeadOptions = section(HeadOptions)
    loss: LossOptions = section(LossOptions)
    assigner: AssignerOptions = section(AssignerOptions)
    test: TestOptions = section(TestOptions)


def check_model_options(m: ModelOptions) -> None:
    """Checks the switches against each other (each value alone is checked by its option).

    Raises OptionError naming the keys (relative to `model`).
    """
    quality, cls = m.head.quality, m.loss.cls
    facts = QUALITIES.facts(quality)
    for key, (allowed, why) in facts["requires"].items():
        value = functools.reduce(getattr, key.split("."), m)
        if value not in allowed:
            raise OptionError(
                ["head.quality", key],
                f"{{head.quality}} {quality!r} {why}: {{{key}}} must be "
                f"{' or '.join(map(str, allowed))}, got {value!r}",
            )
    if quality == "dgqp" and m.head.dgqp.topk > m.head.reg_max + 1:
        raise OptionError(
            ["head.dgqp.topk", "head.reg_max"],
            f"{{head.dgqp.topk}} ({m.head.dgqp.topk}) cannot exceed the {m.head.reg_max + 1} "
            "bins of an edge ({head.reg_max} + 1)",
        )
    soft = facts["soft_targets"]
    if soft and not CLS_LOSS_SOFT_TARGETS[cls]:
        raise OptionError(
            ["loss.cls", "head.quality"],
            f"{{loss.cls}} is {cls!r}, which trains one-hot targets, but {{head.quality}} is "
            f"{quality!r}, whose target is the IoU score: use model.loss.cls qfl or vfl, or "
            "another model.head.quality",
        )
    if not soft and CLS_LOSS_SOFT_TARGETS[cls]:
        raise OptionError(
            ["loss.cls", "head.quality"],
            f"{{loss.cls}} is {cls!r}, which trains the joint class-IoU score, but "
            f"{{head.quality}} is {quality!r}: the separate and guided quality representations "
            "use model.loss.cls focal",
        )
    b = m.backbone
    if b.type not in BACKBONE_TYPES and not CUSTOM_TYPE.match(b.type):
        raise OptionError(
            ["backbone.type"],
            f"{{backbone.type}} must be one of {', '.join(BACKBONE_TYPES)}, or 'module:Class' "
            f"for a backbone class of your own; got {b.type!r}",
        )
    if b.kwargs and not CUSTOM_TYPE.match(b.type):
        raise OptionError(
            ["backbone.kwargs", "backbone.type"],
            "{backbone.kwargs} are passed to a backbone class of your own ({backbone.type} "
            "'module:Class'); gfldet's backbones take the other model.backbone keys",
        )
    if m.head.norm == "gn" and m.head.feat_channels % m.head.num_groups:
        raise OptionError(
            ["head.feat_channels", "head.num_groups"],
            f"{{head.feat_channels}} ({m.head.feat_channels}) must be a multiple of "
            f"{{head.num_groups}} ({m.head.num_groups}) for GroupNorm",
        )
