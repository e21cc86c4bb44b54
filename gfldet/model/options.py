"""The model's options: every `model.*` config key, its default, type and allowed values.

`gfldet.config` validates YAML against these classes; `build_model` turns the `model` section of
a config dict into a `ModelOptions`. Defaults are the paper's GFL (R-50 + FPN, 1x recipe); the
switches of the paper's ablations are documented in docs/ablations.md. Pure Python (no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.options import OptionError, option, section

# Backbones by name (gfldet.model.build.BACKBONES builds them): gfldet's ResNet, and
# torchvision classification networks. A "module:Class" type names a class of your own.
RESNETS = {"resnet": None, "resnext50_32x4d": (50, 32, 4), "resnext101_32x8d": (101, 32, 8)}
TORCHVISION_BACKBONES = (
    "mobilenet_v3_large", "mobilenet_v3_small",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf",
    "convnext_tiny",
)  # fmt: skip
BACKBONE_TYPES = (*RESNETS, *TORCHVISION_BACKBONES)
CUSTOM_TYPE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "my_package.module:MyBackbone"
NECKS = ("fpn", "pafpn")

# Quality representations (paper Table 1(a)); the value says whether the classification
# target is the IoU score (the joint representation, trained with QFL or VFL) or one-hot.
QUALITY_SOFT_TARGETS = {
    "joint": True, "none": False, "centerness": False, "iou": False,
    "centerness_guided": False, "iou_guided": False, "dgqp": True,
}  # fmt: skip
QUALITIES = tuple(QUALITY_SOFT_TARGETS)
BOXES = ("general", "dirac", "gaussian")  # box representations (paper Table 2(a))
CLS_LOSS_SOFT_TARGETS = {"qfl": True, "focal": False, "vfl": True}
CLS_LOSSES = tuple(CLS_LOSS_SOFT_TARGETS)


@dataclass
class BackboneOptions:
    # resnet (with depth / base_width), a torchvision network's name, or "module:Class".
    type: str = option("resnet")
    depth: int = option(50, choices=(18, 34, 50, 101))  # type resnet
    # Stem channels; stage i has base_width * 2**i (x4 for bottlenecks). Type resnet.
    base_width: int = option(64, ge=1)
    pretrained: str | None = option(None)  # weight file path or torchvision weights name
    frozen_stages: int = option(1, ge=-1, le=4)  # -1: none, 0: stem, k: up to stride 2**(k+1)
    norm_eval: bool = option(True)  # BatchNorm statistics frozen (eval mode) while training
    kwargs: dict = option({})  # keyword arguments of a "module:Class" backbone


@dataclass
class NeckOptions:
    type: str = option("fpn", choices=NECKS)  # fpn | pafpn (FPN + PANet's bottom-up path)
    out_channels: int = option(256, ge=1)
    extra_levels: int = option(2, ge=0)  # stride-2 convs after the last level (P6, P7)


@dataclass
class DGQPOptions:
    """GFLv2's Distribution-Guided Quality Predictor (model.head.quality: dgqp)."""

    topk: int = option(4, ge=1)  # the k largest probabilities of each edge's distribution
    add_mean: bool = option(True)  # and their mean: 4 x (k + 1) inputs
    channels: int = option(64, ge=1)  # hidden channels of its two 1x1 convs
    # Bias of its last conv at the start: I starts at sigmoid(init_bias); 0 (I = 0.5) as the
    # official code. Short from-scratch runs do better starting near 1 (docs/ablations.md).
    init_bias: float = option(0.0)


@dataclass
class HeadOptions:
    feat_channels: int = option(256, ge=1)
    stacked_convs: int = option(4, ge=0)
    conv: str = option("standard", choices=("standard", "depthwise"))  # tower convs
    norm: str = option("gn", choices=("gn", "bn"))  # tower norms: GroupNorm or BatchNorm
    num_groups: int = option(32, ge=1)  # GroupNorm groups in the towers
    per_level_norm: bool = option(False)  # convs shared across levels, norms per level
    reg_max: int = option(16, ge=1)  # n: edge distances take bins 0..n (x bin_width strides)
    prior_prob: float = option(0.01, gt=0, lt=1)
    # Ablations (paper Tables 1(a), 2(a), 2(c), docs/ablations.md); defaults are GFL.
    quality: str = option("joint", choices=QUALITIES)
    box: str = option("general", choices=BOXES)
    bin_width: float = option(1.0, gt=0)  # Δ: bins y_i = i * Δ (in strides), i = 0..reg_max
    dgqp: DGQPOptions = section(DGQPOptions)  # quality dgqp (GFLv2)


@dataclass
class LossOptions:
    qfl_beta: float = option(2.0, ge=0)
    qfl_weight: float = option(1.0, ge=0)  # weight of the classification loss, whichever it is
    giou_weight: float = option(2.0, ge=0)
    dfl_weight: float = option(0.25, ge=0)  # 0: general distribution without DFL
    nll_weight: float = option(0.25, ge=0)  # Gaussian negative log-likelihood (box: gaussian)
    cls: str = option("qfl", choices=CLS_LOSSES)  # qfl | focal (one-hot targets) | vfl
    focal_alpha: float = option(0.25, ge=0, le=1)
    focal_gamma: float = option(2.0, ge=0)
    vfl_alpha: float = option(0.75, ge=0)
    vfl_gamma: float = option(2.0, ge=0)
    quality_weight: float = option(1.0, ge=0)  # BCE of a separate centerness / IoU branch


@dataclass
class AssignerOptions:
    topk: int = option(9, ge=1)  # candidates per level and gt
    anchor_scale: float = option(8.0, gt=0)  # ATSS anchor side = anchor_scale * stride


@dataclass
class TestOptions:
    __test__ = False  # not a pytest test class

    nms_pre: int = option(1000)  # <= 0 keeps every location
    score_thr: float = option(0.05, ge=0, le=1)
    nms_iou: float = option(0.6, gt=0, le=1)
    max_per_img: int = option(100, ge=1)


@dataclass
class ModelOptions:
    num_classes: int | None = option(None, ge=1)  # taken from the training set when null
    # A new run starts from this detector checkpoint (gfldet's or MMDetection's), its class
    # conv rows matched by class name (gfldet.training.finetune); --resume continues a run.
    init_from: str | None = option(None)
    # Input normalisation (x - mean) / std of RGB pixel values 0..255, done inside the model.
    mean: list[float] = option([123.675, 116.28, 103.53], length=3)
    std: list[float] = option([58.395, 57.12, 57.375], gt=0, length=3)
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
    if quality == "dgqp":
        if m.head.box != "general":
            raise OptionError(
                ["head.quality", "head.box"],
                "{head.quality} 'dgqp' predicts the quality from the edge distributions: it "
                f"needs {{head.box}} general, got {m.head.box!r}",
            )
        if cls != "qfl":
            raise OptionError(
                ["head.quality", "loss.cls"],
                "{head.quality} 'dgqp' trains the joint score sigmoid(cls) x quality with QFL "
                f"on probabilities: {{loss.cls}} must be qfl, got {cls!r}",
            )
        if m.head.dgqp.topk > m.head.reg_max + 1:
            raise OptionError(
                ["head.dgqp.topk", "head.reg_max"],
                f"{{head.dgqp.topk}} ({m.head.dgqp.topk}) cannot exceed the {m.head.reg_max + 1} "
                "bins of an edge ({head.reg_max} + 1)",
            )
    if QUALITY_SOFT_TARGETS[quality] and not CLS_LOSS_SOFT_TARGETS[cls]:
        raise OptionError(
            ["loss.cls", "head.quality"],
            f"{{loss.cls}} is {cls!r}, which trains one-hot targets, but {{head.quality}} is "
            f"{quality!r}, whose target is the IoU score: use model.loss.cls qfl or vfl, or "
            "another model.head.quality",
        )
    if not QUALITY_SOFT_TARGETS[quality] and CLS_LOSS_SOFT_TARGETS[cls]:
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
