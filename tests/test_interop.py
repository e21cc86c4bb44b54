"""MMDetection v2 GFL checkpoints -> gfldet: key names, shapes, class order, conventions."""

from __future__ import annotations

import json
import re

import pytest
import torch

import gfldet
from gfldet.cli import main
from gfldet.core.checkpoint import load_model_weights
from gfldet.inference.predictor import load_trained_model
from gfldet.interop.mmdet import COCO_CAT_IDS, COCO_CLASSES, convert_mmdet, convert_state
from gfldet.model.box_ops import grid_points

R50_CFG = "configs/gfl_r50_fpn_1x_coco.yaml"
TINY = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.neck.out_channels=16",
        "model.head.feat_channels=16", "model.head.stacked_convs=2", "model.head.num_groups=4",
        "model.backbone.pretrained=null"]  # fmt: skip


def mmdet_gfl_state(
    depth: int = 50, width: int = 64, fpn: int = 256, feat: int = 256, convs: int = 4,
    classes: int = 80, reg_max: int = 16, levels: int = 5, fill=torch.randn,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """A state dict with MMDetection v2's GFL key names and shapes, written from MMDetection's
    module structure (mmdet ResNet, FPN with ConvModule, GFLHead), independently of gfldet."""
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        sd[f"{name}.weight"] = fill(cout, cin, k, k)
        if bias:
            sd[f"{name}.bias"] = fill(cout)

    def bn(name: str, c: int) -> None:
        sd.update({f"{name}.weight": fill(c), f"{name}.bias": fill(c),
                   f"{name}.running_mean": fill(c), f"{name}.running_var": fill(c).abs() + 0.5,
                   f"{name}.num_batches_tracked": torch.tensor(0)})  # fmt: skip

    conv("backbone.conv1", width, 3, 7)
    bn("backbone.bn1", width)
    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    expansion = 4 if bottleneck else 1
    inplanes = width
    for i, n in enumerate(blocks):
        planes = width * 2**i
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            cin = inplanes if j == 0 else planes * expansion
            if bottleneck:  # 1x1 -> 3x3 -> 1x1 (x4)
                conv(f"{p}.conv1", planes, cin, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:  # 3x3 -> 3x3
                conv(f"{p}.conv1", planes, cin, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            if j == 0 and (i > 0 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
        inplanes = planes * expansion
    for n in range(3):  # C3..C5
        conv(f"neck.lateral_convs.{n}.conv", fpn, width * 2 ** (n + 1) * expansion, 1, bias=True)
    for n in range(levels):  # 3 outputs + the extra P6, P7 convs ("on_output")
        conv(f"neck.fpn_convs.{n}.conv", fpn, fpn, 3, bias=True)
    for tower in ("cls_convs", "reg_convs"):
        for n in range(convs):  # ConvModule(conv without bias, GN named "gn")
            conv(f"bbox_head.{tower}.{n}.conv", feat, fpn if n == 0 else feat, 3)
            sd[f"bbox_head.{tower}.{n}.gn.weight"] = fill(feat)
            sd[f"bbox_head.{tower}.{n}.gn.bias"] = fill(feat)
    conv("bbox_head.gfl_cls", classes, feat, 3, bias=True)
    conv("bbox_head.gfl_reg", 4 * (reg_max + 1), feat, 3, bias=True)
    for n in range(levels):
        sd[f"bbox_head.scales.{n}.scale"] = fill(())
    sd["bbox_head.integral.project"] = torch.linspace(0, reg_max, reg_max + 1)
    return sd


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
    torch.save({"meta": {"CLASSES": COCO_CLASSES, "mmdet_version": "2.x", "epoch": 12},
                "state_dict": mm}, src)  # fmt: skip

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
            assert torch.equal(ckpt["model"][f"head.gfl_cls.{p}"][k],
                               mm[f"bbox_head.gfl_cls.{p}"][mm_k])  # fmt: skip
    with pytest.raises(ValueError, match="--ann-file"):
        convert_state(mm, meta)
    with pytest.raises(ValueError, match="no categories named"):
        convert_state(mm, {"CLASSES": ("kiwi", "fig", "date")}, ann)


def test_conversion_errors_and_conventions(tmp_path):
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 80, fill=torch.zeros)
    # Checkpoints of old torch versions have no BN counters: filled in.
    no_counters = {k: v for k, v in mm.items() if not k.endswith("num_batches_tracked")}
    ckpt = convert_state(no_counters, {})
    assert ckpt["model"]["backbone.bn1.num_batches_tracked"].item() == 0
    assert ckpt["classes"] == list(COCO_CLASSES)  # no CLASSES, 80 channels: COCO
    # Δ = 0.5 bins are read from the Integral buffer; a malformed buffer is an error.
    assert convert_state({**mm, "bbox_head.integral.project": torch.arange(17) * 0.5},
                         {})["meta"]["bin_width"] == 0.5  # fmt: skip
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
