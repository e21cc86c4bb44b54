"""Full-size models built on the meta device: the parameter counts of GFL R-50 (the official
32,440,537), every ablation architecture, GFLv2 and the lite model."""

from __future__ import annotations

import pytest
import torch

from gfldet.config import Config, load_config
from gfldet.model.build import build_model
from tests.helpers import ABLATIONS, GFL_PARAMS, REPO, V2

pytestmark = pytest.mark.usefixtures("one_thread")


def architecture(cfg: Config) -> tuple:
    h = cfg.model.head
    n = h.reg_max if h.box == "general" else 0
    return h.quality in ("centerness", "iou"), h.box, n


def test_every_ablation_architecture_has_the_expected_parameter_count():
    # GFL R-50 has 32,440,537 parameters; a variant differs only in the head's output convs:
    # each 3x3 output channel over 256 channels costs 256*9 + 1 = 2305 parameters.
    archs = {}
    for path in ABLATIONS:
        cfg = load_config(path, ["model.num_classes=80", "model.backbone.pretrained=null"])
        archs.setdefault(architecture(cfg), cfg)
    assert len(archs) >= 7
    for (separate, box, n), cfg in archs.items():
        with torch.device("meta"):
            model = build_model(cfg.model)
        reg = {"general": 4 * (n + 1), "dirac": 4, "gaussian": 8}[box]
        expect = 32_440_537 + (reg - 68 + separate) * 2305
        assert sum(p.numel() for p in model.parameters()) == expect, (separate, box, n)
        assert hasattr(model.head, "gfl_quality") == separate


def test_gflv2_r50_has_1409_parameters_more_than_gfl():
    cfg = load_config(V2, ["model.num_classes=80", "model.backbone.pretrained=null"])
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == GFL_PARAMS + 1409 == 32_441_946
    assert tuple(model.head.reg_conf[0].weight.shape) == (64, 20, 1, 1)
    assert not hasattr(model.head, "gfl_quality")


def test_the_lite_model_has_at_most_4_million_parameters():
    cfg = load_config(
        REPO / "configs" / "gfl_lite_320_coco.yaml",
        ["model.num_classes=80", "model.backbone.pretrained=null"],
    )
    model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) <= 4_000_000
    assert model.strides == [8, 16, 32, 64] and model.head.box.channels == 4 * 8


def test_default_model_has_official_gfl_r50_parameter_count():
    cfg = Config()
    cfg.model.num_classes = 80
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == 32_440_537
    # default frozen_stages=1: the stem and layer1 are not trained
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stem_l1 = sum(
        p.numel()
        for m in (model.backbone.conv1, model.backbone.bn1, model.backbone.layer1)
        for p in m.parameters()
    )
    assert frozen == stem_l1 > 0
