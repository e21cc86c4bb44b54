"""`gfldet convert-mmdet` never writes over one of its inputs."""

from __future__ import annotations

import json
import re

import pytest
import torch

from gfldet.cli import main
from gfldet.config import Config
from gfldet.model.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def mmdet_checkpoint(path) -> None:
    """A tiny GFL in MMDetection's names (what the converter reads), 3 classes."""
    m = Config().model
    m.num_classes = 3
    vars(m.backbone).update(depth=18, base_width=8, pretrained=None)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    sd = {}
    for k, v in build_model(m).state_dict().items():
        k = re.sub(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.", r"neck.\1.\2.conv.", k)
        sd[re.sub(r"^head\.", "bbox_head.", k)] = v
    sd["bbox_head.integral.project"] = torch.linspace(0, 16, 17)
    torch.save({"meta": {"CLASSES": ("a", "b", "c")}, "state_dict": sd}, path)


@pytest.mark.parametrize("target", ["input", "ann_file", "config"])
def test_output_that_is_an_input_is_refused(tmp_path, capsys, target):
    src, ann, cfg = tmp_path / "gfl.pth", tmp_path / "ann.json", tmp_path / "cfg.yaml"
    mmdet_checkpoint(src)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate("abc")]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    cfg.write_text(
        "model:\n  backbone: {depth: 18, base_width: 8, pretrained: null}\n"
        "  neck: {out_channels: 16}\n  head: {feat_channels: 16, stacked_convs: 1, num_groups: 4}\n"
    )
    out = {"input": src, "ann_file": ann, "config": cfg}[target]
    before = out.read_bytes()
    args = ["convert-mmdet", str(src), str(out), "--ann-file", str(ann), "--config", str(cfg)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "refusing to overwrite" in err and str(out) in err
    assert out.read_bytes() == before
    out = tmp_path / "gfldet.pth"  # elsewhere: converted, checked against the config, written
    assert main([*args[:2], str(out), *args[3:]]) == 0
    assert "no missing or unexpected keys" in capsys.readouterr().out and out.is_file()
