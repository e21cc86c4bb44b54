"""GFLv2: the Distribution-Guided Quality Predictor, its joint score, configs and conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_interop import mmdet_gfl_state

import gfldet
from gfldet.cli import main
from gfldet.config import Config, load_config
from gfldet.core.checkpoint import load_checkpoint, load_model_weights
from gfldet.data.synth import shapes_overrides
from gfldet.interop.mmdet import COCO_CLASSES, convert_state
from gfldet.model.build import build_model
from gfldet.model.fuse import prepare_for_inference
from gfldet.model.losses import quality_focal_loss
from gfldet.model.representations import distribution_statistics

ROOT = Path(__file__).resolve().parents[1]
V2 = ROOT / "configs" / "gflv2_r50_fpn_1x_coco.yaml"
V2_ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("v2_*.yaml"))
GFL_PARAMS = 32_440_537
pytestmark = pytest.mark.usefixtures("one_thread")


def test_distribution_statistics_by_hand():
    # One location; the left edge's distribution over 5 bins, the others uniform.
    probs = torch.full((1, 4, 5, 1, 1), 0.2)
    probs[0, 0, :, 0, 0] = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.05])
    stats = distribution_statistics(probs, topk=4, add_mean=True)
    assert stats.shape == (1, 20, 1, 1)
    left = [0.5, 0.3, 0.1, 0.05, (0.5 + 0.3 + 0.1 + 0.05) / 4]  # top-4, decreasing, and mean
    torch.testing.assert_close(stats[0, :5, 0, 0], torch.tensor(left))
    torch.testing.assert_close(stats[0, 5:, 0, 0], torch.full((15,), 0.2))
    no_mean = distribution_statistics(probs, topk=2, add_mean=False)
    torch.testing.assert_close(no_mean[0, :, 0, 0], torch.tensor([0.5, 0.3] + [0.2] * 6))


def test_gflv2_r50_has_1409_parameters_more_than_gfl():
    cfg = load_config(V2, ["model.num_classes=80", "model.backbone.pretrained=null"])
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == GFL_PARAMS + 1409 == 32_441_946
    assert tuple(model.head.reg_conf[0].weight.shape) == (64, 20, 1, 1)
    assert not hasattr(model.head, "gfl_quality")


def test_the_gflv2_ablation_configs_are_all_there():
    # The parametrized test below runs over whatever the glob finds: an empty or short glob
    # would skip or shrink it silently.
    topk = {f"v2_topk_{k}{s}" for k in (1, 2, 3, 4, 8) for s in ("", "_no_mean")}
    channels = {f"v2_channels_{c}" for c in (16, 32, 64, 128)}
    assert [p.stem for p in V2_ABLATIONS] == sorted(topk | channels)


@pytest.mark.parametrize("path", V2_ABLATIONS, ids=[p.stem for p in V2_ABLATIONS])
def test_every_gflv2_ablation_config_builds(path):
    cfg = load_config(path, ["model.num_classes=80", "model.backbone.pretrained=null"])
    d = cfg.model.head.dgqp
    name = path.stem
    if name.startswith("v2_topk"):
        assert d.topk == int(name.split("_")[2]) and d.add_mean == (
            not name.endswith("no_mean")
        ) and d.channels == 64  # fmt: skip
    else:
        assert (d.topk, d.add_mean, d.channels) == (4, True, int(name.split("_")[-1]))
    with torch.device("meta"):
        model = build_model(cfg.model)
    inputs, c = 4 * (d.topk + d.add_mean), d.channels
    expect = GFL_PARAMS + inputs * c + c + c + 1
    assert sum(p.numel() for p in model.parameters()) == expect
    # Everything else is the GFLv2 recipe.
    base = load_config(V2, ["model.num_classes=80", "model.backbone.pretrained=null"])
    base.model.head.dgqp, base.work_dir = d, cfg.work_dir
    assert cfg == base


def tiny(quality: str = "dgqp", init_bias: float = 0.0) -> torch.nn.Module:
    cfg = Config()
    m = cfg.model
    m.num_classes = 2
    vars(m.backbone).update(depth=18, base_width=8)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4, quality=quality)
    m.head.dgqp.init_bias = init_bias
    torch.manual_seed(0)
    return build_model(cfg.model)


def test_dgqp_starts_at_sigmoid_of_init_bias():
    """I starts at 0.5 as the official code's, or at sigmoid(init_bias): the last conv's
    weights are N(0, 0.01), so the statistics move it by far less than 0.01."""
    for bias, expect in ((0.0, 0.5), (4.0, torch.sigmoid(torch.tensor(4.0)).item())):
        model = tiny(init_bias=bias)
        feats = [torch.randn(1, 16, 4, 4)]
        _, _, quality = model.head(feats)
        assert quality.shape == (1, 16, 1)
        assert torch.allclose(quality, torch.full_like(quality, expect), atol=1e-3)


def test_the_joint_score_is_trained_with_qfl_on_probabilities():
    model = tiny()
    # One location at (0, 0), stride 8, made positive for one gt (see test_ablations).
    cls = torch.tensor([[[0.3, -1.2]]])
    quality = torch.tensor([[[0.6]]])  # DGQP's I for this location
    reg = torch.zeros(1, 1, 68)
    targets = [{"img_size": (64, 64), "boxes": torch.tensor([[-8.0, -8, 8, 8]]),
                "labels": torch.tensor([1])}]  # fmt: skip
    points, strides = torch.zeros(1, 2), torch.full((1,), 8.0)
    losses = model.losses(cls, reg, points, strides, [(1, 1)], targets, quality)
    # The uniform distributions decode to 8 bins = 8 strides per edge: box [-8, -8, 8, 8] in
    # strides, whose IoU with the gt box [-1, -1, 1, 1] is 4/256.
    y, p = 4 / 256, torch.sigmoid(cls[0, 0]) * 0.6

    def bce(p: float, t: float) -> float:
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expect = bce(p[0].item(), 0) * p[0].item() ** 2 + bce(p[1].item(), y) * abs(y - p[1]) ** 2
    torch.testing.assert_close(losses["loss_qfl"], torch.tensor(float(expect)))
    # GIoU weighted by the best joint score (detached; its sum < 1 is not clamped up here:
    # w / max(w, 1) with w < 1 keeps w): the predicted box encloses the gt, so 1 - GIoU = 1 - IoU.
    w = p.max().item()
    torch.testing.assert_close(losses["loss_giou"], torch.tensor(2.0 * w * (1 - 4 / 256)))


def test_qfl_on_probabilities_equals_qfl_on_logits():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 3, 2, 3, 1, 3])
    scores = torch.rand(6)
    a = quality_focal_loss(logits, labels, scores, 2.0, "none")
    b = quality_focal_loss(logits.sigmoid(), labels, scores, 2.0, "none", probabilities=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    (ga,) = torch.autograd.grad(a.sum(), logits)
    (gb,) = torch.autograd.grad(b.sum(), logits)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)


def test_the_distributions_are_trained_through_the_quality_predictor():
    model = tiny().train()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    targets = [{"img_size": (64, 96), "boxes": torch.tensor([[10.0, 8, 50, 40]]),
                "labels": torch.tensor([1])} for _ in range(2)]  # fmt: skip
    losses = model(images, targets)
    assert set(losses) == {"loss_qfl", "loss_giou", "loss_dfl"}
    losses["loss_qfl"].backward()  # QFL alone: it reaches gfl_reg only through DGQP
    assert model.head.gfl_reg.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in model.head.reg_conf.parameters())
    # Scores at test time: sigmoid(cls) x I, in (0, 1), the same after BN folding.
    model.eval()
    meta = [{"img_size": (64, 96)}]
    model.test.score_thr = 0.0
    det = model.predict(images[:1], meta)[0]
    fast = prepare_for_inference(model).predict(images[:1], meta)[0]
    assert len(det["scores"]) > 0 and (det["scores"] < 0.01).all()  # prior 0.01 x I < 1
    torch.testing.assert_close(fast["scores"], det["scores"], atol=1e-6, rtol=1e-4)


def test_gflv2_trains_evaluates_infers_and_exports(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = [f"work_dir={work}", "model.head.quality=dgqp", "model.backbone.base_width=8",
            "model.neck.out_channels=16", "model.head.feat_channels=16",
            "model.head.stacked_convs=1", "model.head.num_groups=4", "model.test.score_thr=0.001",
            *shapes_overrides(shapes),
            "data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]",
            "data.train.num_workers=0", "data.val.num_workers=0", "train.max_iters=2"]  # fmt: skip
    demo = str(ROOT / "configs" / "shapes_demo.yaml")
    assert main(["train", "--config", demo, "--set", *sets]) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert "pearson" in metrics["quality"]
    ckpt = str(work / "latest.pth")
    # The checkpoint holds a trained DGQP: its quality predictor, and no centerness branch.
    weights = load_checkpoint(ckpt)["model"]
    assert {k for k in weights if k.startswith("head.reg_conf.")} == {
        f"head.reg_conf.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    assert not any(k.startswith("head.gfl_quality") for k in weights)
    out = tmp_path / "infer"
    assert main(["infer", "--config", demo, "--checkpoint", ckpt, str(shapes["val_img_dir"]),
                 "--out-dir", str(out), "--score-thr", "0", "--set", *sets]) == 0  # fmt: skip
    preds = json.loads((out / "predictions.json").read_text())
    detections = [d for p in preds for d in p["detections"]]
    assert len(preds) == 3 and detections and all("edge_std" in d for d in detections)
    for nms in ([], ["--nms"]):
        assert main(["export", "--config", demo, "--checkpoint", ckpt, "--out",
                     str(tmp_path / "m.onnx"), *nms, "--set", *sets]) == 0  # fmt: skip
        assert "onnxruntime vs PyTorch" in capsys.readouterr().out


def test_official_gflv2_checkpoints_convert():
    mm = mmdet_gfl_state(18, 8, 16, 16, 2, 80, fill=torch.randn)
    mm.update({"bbox_head.reg_conf.0.weight": torch.randn(64, 20, 1, 1),
               "bbox_head.reg_conf.0.bias": torch.randn(64),
               "bbox_head.reg_conf.2.weight": torch.randn(1, 64, 1, 1),
               "bbox_head.reg_conf.2.bias": torch.randn(1)})  # fmt: skip
    ckpt = convert_state(mm, {"CLASSES": COCO_CLASSES})
    meta = ckpt["meta"]
    assert (meta["head.quality"], meta["head.dgqp.channels"], meta["head.dgqp.inputs"]) == (
        "dgqp",
        64,
        20,
    )
    sets = ["model.num_classes=80", "model.backbone.pretrained=null", "model.backbone.depth=18",
            "model.backbone.base_width=8", "model.neck.out_channels=16",
            "model.head.feat_channels=16", "model.head.stacked_convs=2",
            "model.head.num_groups=4"]  # fmt: skip
    model = gfldet.build_model(load_config(V2, sets).model)
    load_model_weights(model, ckpt, "converted")  # strict
    assert torch.equal(model.head.reg_conf[2].bias, mm["bbox_head.reg_conf.2.bias"])
