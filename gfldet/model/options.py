"""The model's options: every `model.*` config key, its default, type and allowed values.

`gfldet.config` validates YAML against these classes; `build_model` turns the `model` section of
a config dict into a `ModelOptions`. Defaults are the paper's GFL (R-50 + FPN, 1x recipe); the
switches of the paper's ablations are documented in docs/ablations.md. Pure Python (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import OptionError, option, section

QUALITIES = ("joint", "none", "centerness", "iou", "centerness_guided", "iou_guided")
BOXES = ("general", "dirac", "gaussian")
CLS_LOSSES = ("qfl", "focal", "vfl")


@dataclass
class BackboneOptions:
    depth: int = option(50, choices=(18, 34, 50, 101))
    # Stem channels; stage i has base_width * 2**i (x4 for bottlenecks).
    base_width: int = option(64, ge=1)
    pretrained: str | None = option(None)  # weight file path or torchvision weights name
    frozen_stages: int = option(1, ge=-1, le=4)  # -1: none, 0: stem, k: stem + stages 1..k
    norm_eval: bool = option(True)  # BatchNorm statistics frozen (eval mode) while training


@dataclass
class FPNOptions:
    out_channels: int = option(256, ge=1)


@dataclass
class HeadOptions:
    feat_channels: int = option(256, ge=1)
    stacked_convs: int = option(4, ge=0)
    num_groups: int = option(32, ge=1)  # GroupNorm groups in the towers
    reg_max: int = option(16, ge=1)  # n: edge distances take bins 0..n (x bin_width strides)
    anchor_scale: float = option(8.0, gt=0)  # ATSS anchor side = anchor_scale * stride
    strides: list[int] = option([8, 16, 32, 64, 128], ge=1)
    prior_prob: float = option(0.01, gt=0, lt=1)
    # Ablations (paper Tables 1(a), 2(a), 2(c), docs/ablations.md); defaults are GFL.
    quality: str = option("joint", choices=QUALITIES)
    box: str = option("general", choices=BOXES)
    bin_width: float = option(1.0, gt=0)  # Δ: bins y_i = i * Δ (in strides), i = 0..reg_max


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
    topk: int = option(9, ge=1)


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
    backbone: BackboneOptions = section(BackboneOptions)
    fpn: FPNOptions = section(FPNOptions)
    head: HeadOptions = section(HeadOptions)
    loss: LossOptions = section(LossOptions)
    assigner: AssignerOptions = section(AssignerOptions)
    test: TestOptions = section(TestOptions)


def check_model_options(m: ModelOptions) -> None:
    """Checks the switches against each other (each value alone is checked by its option).

    Raises OptionError naming the keys (relative to `model`).
    """
    quality, cls = m.head.quality, m.loss.cls
    if quality == "joint" and cls == "focal":
        raise OptionError(
            ["loss.cls", "head.quality"],
            "{loss.cls} is 'focal', which trains one-hot targets, but {head.quality} is "
            "'joint', whose target is the IoU score: use model.loss.cls qfl or vfl, or another "
            "model.head.quality",
        )
    if quality != "joint" and cls != "focal":
        raise OptionError(
            ["loss.cls", "head.quality"],
            f"{{loss.cls}} is {cls!r}, which trains the joint class-IoU score, but "
            f"{{head.quality}} is {quality!r}: the separate and guided quality representations "
            "use model.loss.cls focal",
        )
    strides = m.head.strides
    if len(strides) < 3 or list(strides) != [8 * 2**i for i in range(len(strides))]:
        raise OptionError(
            ["head.strides"],
            "{head.strides} must be the strides of the FPN's outputs P3, P4, P5 and any extra "
            f"levels, 8 doubling per level (e.g. [8, 16, 32, 64, 128]); got {strides}",
        )
