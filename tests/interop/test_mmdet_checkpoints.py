"""MMDetection v2 GFL and GFLv2 checkpoints -> gfldet: key names, shapes, class order,
conventions."""

from __future__ import annotations

import json
import re

import pytest
import torch

import gfldet
from gfldet.cli import main
from gfldet.config import load_config
from gfldet.core.checkpoint import load_model_weights
from gfldet.inference.predictor import load_trained_model
from gfldet.interop.mmdet import COCO_CAT_IDS, COCO_CLASSES, convert_mmdet, convert_state
from gfldet.model.box_ops import grid_points
from tests.helpers import V2, mmdet_gfl_state

pytestmark = pytest.mark.usefixtures("one_thread")

R50_CFG = "configs/gfl_r50_fpn_1x_coco.yaml"
TINY = [
    "model.backbone.depth=18",
    "model.backbone.base_width=8",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=2",
    "model.head.num_groups=4",
    "model.backbone.pretrained=null",
]


def _shapes(sd: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_full_r50_official_key_set_converts_and_loads_strictly():
    mm = mmdet_gfl_state(fill=torch.zeros)
    # GFL_NOTES: the 80-class R-50 model has 32,440,537 parameters (no BN statistics, no
    # counters, no Integral buffer).
    buffers = ("running_mean", "running_var", "num_batches_tracked", "project")
    assert sum(v.numel() for k, v in mm.items() if not k.endswith(buffers)) == 32_440_537
    ckpt = convert_state(mm, {"CLASSES": COCO_CLASSES})
    cfg = gfldet.load_config(R50_CFG, ["model.num_classes=80", "model.backbone.pretrained=null"])
    model = gfldet.build_model(cfg.model)
    assert _shapes(ckpt["model"]) == _shapes(model.state_dict())
    load_model_weights(model, ckpt, "converted")  # raises on any missing/unexpected/shape
    assert ckpt["classes"] == list(COCO_CLASSES) and ckpt["cat_ids"] == list(COCO_CAT_IDS)
    assert ckpt["meta"]["backbone.depth"] == 50 and ckpt["meta"]["head.reg_max"] == 16
    assert ckpt["meta"]["bin_width"] == 1.0


def to_mmdet_names(sd: dict) -> dict:
    """gfldet -> MMDetection names, the inverse the converter must undo (written here by hand)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.", r"neck.\1.\2.conv.", k)
        out[re.sub(r"^head\.", "bbox_head.", k)] = v
    return out


def test_roundtrip_through_mmdet_names_gives_identical_outputs(tmp_path, capsys):
    cfg = gfldet.load_config(R50_CFG, [*TINY, "model.num_classes=80"])
    torch.manual_seed(0)
    ref = gfldet.build_model(cfg.model).eval()
    with torch.no_grad():  # non-trivial BN statistics and scales, so every tensor matters
        for name, buf in ref.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2)
        for s in ref.head.scales:
            s.scale.uniform_(0.5, 1.5)
    mm = to_mmdet_names(ref.state_dict())
    mm["bbox_head.integral.project"] = torch.linspace(0, 16, 17)
    expected = mmdet_gfl_state(18, 8, 16, 16, 2, 80, fill=torch.zeros)
    assert _shapes(mm) == _shapes(expected)  # exactly MMDetection's names and shapes
    src = tmp_path / "gfl_tiny_mmdet.pth"
    torch.save(
        {"meta": {"CLASSES": COCO_CLASSES, "mmdet_version": "2.x", "epoch": 12}, "state_dict": mm},
        src,
    )

    out = tmp_path / "gfl_tiny_gfldet.pth"
    sets = [*TINY, "model.num_classes=80"]
    assert main(["convert-mmdet", str(src), str(out), "--config", R50_CFG, "--set", *sets]) == 0
    assert "no missing or unexpected keys" in capsys.readouterr().out
    model, state = load_trained_model(gfldet.load_config(R50_CFG, TINY), out, torch.device("cpu"))
    assert state["cat_ids"] == list(COCO_CAT_IDS) and state["meta"]["mmdet_version"] == "2.x"
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        feats_ref = ref.features(ref.preprocess(x, None))
        feats = model.features(model.preprocess(x, None))
        for a, b in zip(ref.head(feats_ref)[:2], model.head(feats)[:2], strict=True):
            assert torch.equal(a, b)


def test_class_order_follows_annotation_file(tmp_path):
    # MMDetection's label i is the i-th category *in file order*; gfldet's is by sorted id.
    ann = tmp_path / "ann.json"
    cats = [{"id": 7, "name": "kiwi"}, {"id": 3, "name": "fig"}, {"id": 5, "name": "plum"}]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 3, fill=torch.randn)
    meta = {"CLASSES": ("kiwi", "fig", "plum")}
    ckpt = convert_state(mm, meta, ann)
    assert ckpt["classes"] == ["fig", "plum", "kiwi"] and ckpt["cat_ids"] == [3, 5, 7]
    for k, mm_k in enumerate([1, 2, 0]):  # fig was MMDetection's channel 1, ...
        for p in ("weight", "bias"):
            assert torch.equal(
                ckpt["model"][f"head.gfl_cls.{p}"][k], mm[f"bbox_head.gfl_cls.{p}"][mm_k]
            )
    with pytest.raises(ValueError, match="--ann-file"):
        convert_state(mm, meta)
    with pytest.raises(ValueError, match="no categories named"):
        convert_state(mm, {"CLASSES": ("kiwi", "fig", "date")}, ann)


def test_conversion_fills_counters_reads_bins_refuses_dcn_caffe_and_other_heads(tmp_path):
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 80, fill=torch.zeros)
    # Checkpoints of old torch versions have no BN counters: filled in.
    no_counters = {k: v for k, v in mm.items() if not k.endswith("num_batches_tracked")}
    ckpt = convert_state(no_counters, {})
    assert ckpt["model"]["backbone.bn1.num_batches_tracked"].item() == 0
    assert ckpt["classes"] == list(COCO_CLASSES)  # no CLASSES, 80 channels: COCO
    # Δ = 0.5 bins are read from the Integral buffer; a malformed buffer is an error.
    assert (
        convert_state({**mm, "bbox_head.integral.project": torch.arange(17) * 0.5}, {})["meta"][
            "bin_width"
        ]
        == 0.5
    )
    with pytest.raises(ValueError, match="integral.project"):
        convert_state({**mm, "bbox_head.integral.project": torch.rand(17)}, {})
    dcn = {**mm, "backbone.layer2.0.conv2.conv_offset.weight": torch.zeros(18, 8, 3, 3)}
    with pytest.raises(ValueError, match=r"conv_offset.*no DCN"):
        convert_state(dcn, {})
    with pytest.raises(ValueError, match="caffe"):
        convert_state(mm, {"config": "model = dict(backbone=dict(style='caffe'))"})

    bad = tmp_path / "retina.pth"
    torch.save({"state_dict": {"bbox_head.retina_cls.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="not an MMDetection GFL checkpoint"):
        convert_mmdet(bad)
    with pytest.raises(FileNotFoundError):
        convert_mmdet(tmp_path / "missing.pth")


def test_location_centres_follow_mmdet_v2():
    # MMDetection v2's AnchorGenerator (center_offset 0) puts location (i, j) of stride s at
    # (j*s, i*s): the convention the official weights were trained with.
    points, strides = grid_points([(2, 3), (1, 2)], [8, 16])
    assert points.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8], [0, 0], [16, 0]]
    assert strides.tolist() == [8] * 6 + [16] * 2


def test_official_gflv2_checkpoints_convert_and_load_strictly():
    mm = mmdet_gfl_state(18, 8, 16, 16, 2, 80, fill=torch.randn)
    mm.update(
        {
            "bbox_head.reg_conf.0.weight": torch.randn(64, 20, 1, 1),
            "bbox_head.reg_conf.0.bias": torch.randn(64),
            "bbox_head.reg_conf.2.weight": torch.randn(1, 64, 1, 1),
            "bbox_head.reg_conf.2.bias": torch.randn(1),
        }
    )
    ckpt = convert_state(mm, {"CLASSES": COCO_CLASSES})
    meta = ckpt["meta"]
    assert (meta["head.quality"], meta["head.dgqp.channels"], meta["head.dgqp.inputs"]) == (
        "dgqp",
        64,
        20,
    )
    sets = [
        "model.num_classes=80",
        "model.backbone.pretrained=null",
        "model.backbone.depth=18",
        "model.backbone.base_width=8",
        "model.neck.out_channels=16",
        "model.head.feat_channels=16",
        "model.head.stacked_convs=2",
        "model.head.num_groups=4",
    ]
    model = gfldet.build_model(load_config(V2, sets).model)
    load_model_weights(model, ckpt, "converted")  # strict
    assert torch.equal(model.head.reg_conf[2].bias, mm["bbox_head.reg_conf.2.bias"])
