"""ONNX export: onnxruntime against PyTorch, decoding against the model's own post-processing."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms

import gfldet
from gfldet.cli import main
from gfldet.core.checkpoint import save_checkpoint
from gfldet.inference.export import DecodedGFL, check_onnx, export_onnx
from tests.helpers import DEMO, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

ort = pytest.importorskip("onnxruntime")  # the optional "onnx" extra

SETS = [
    "model.num_classes=3",
    "model.backbone.depth=18",
    "model.backbone.base_width=8",
    "model.backbone.pretrained=null",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "model.head.num_groups=4",
    "model.test.score_thr=0.001",
    "model.test.nms_pre=0",
]
H, W = 64, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = gfldet.load_config("configs/shapes_demo.yaml", SETS)
    m = gfldet.build_model(cfg.model).eval()
    with torch.no_grad():  # spread the scores so that thresholds and NMS have work to do,
        m.head.gfl_cls.bias.uniform_(-4, 0)  # and make boxes of about 2 strides that vary
        m.head.gfl_reg.weight.normal_(0, 0.2)
        m.head.gfl_reg.bias.view(4, 17)[:, 1] = 4.0
    return m


def _image(dtype=torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (1, 3, H, W), generator=g, dtype=torch.uint8).to(dtype)


def test_onnx_matches_pytorch_and_decodes_like_the_model(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx", (H, W))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    boxes, scores = session.run(None, {"images": _image().numpy()})
    num_locations = sum(-(-H // s) * -(-W // s) for s in (8, 16, 32, 64, 128))
    assert boxes.shape == (1, num_locations, 4) and scores.shape == (1, num_locations, 3)
    with torch.no_grad():
        ref_boxes, ref_scores = DecodedGFL(model, (H, W))(_image())
    assert abs(boxes - ref_boxes.numpy()).max() < 1e-4
    assert abs(scores - ref_scores.numpy()).max() < 1e-4
    assert (boxes[..., 0::2] >= 0).all() and (boxes[..., 0::2] <= W).all()

    # The decoded boxes and scores, thresholded and NMS'd, are exactly the model's detections.
    tc = model.test
    s = ref_scores[0]
    a, c = (s > tc.score_thr).nonzero(as_tuple=True)
    keep = batched_nms(ref_boxes[0][a], s[a, c], c, tc.nms_iou)[: tc.max_per_img]
    det = model.predict(_image())[0]
    assert len(det["boxes"]) > 10
    torch.testing.assert_close(ref_boxes[0][a[keep]], det["boxes"])
    torch.testing.assert_close(s[a[keep], c[keep]], det["scores"])
    assert torch.equal(c[keep], det["labels"])


def test_onnx_with_nms_and_float_input_gives_the_models_detections(model, tmp_path):
    path = export_onnx(model, tmp_path / "nms.onnx", (H, W), input_dtype="float32", nms=True)
    diffs = check_onnx(path, model, (H, W), nms=True, input_dtype="float32")
    assert set(diffs) == {"boxes", "scores", "labels"} and max(diffs.values()) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"images": _image(torch.float32).numpy()})
    det = model.predict(_image())[0]
    assert len(boxes) == len(det["boxes"]) > 10
    assert abs(boxes - det["boxes"].numpy()).max() < 1e-4
    assert abs(scores - det["scores"].numpy()).max() < 1e-4
    assert (labels == det["labels"].numpy()).all()


def test_the_export_command_checks_the_onnx_file_and_the_input_size(model, tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    save_checkpoint(
        {"model": model.state_dict(), "classes": ["a", "b", "c"], "cat_ids": [1, 2, 3]}, ckpt
    )
    out = tmp_path / "cli.onnx"
    args = [
        "export",
        "--config",
        "configs/shapes_demo.yaml",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--set",
        *SETS[1:],
    ]
    assert main([*args, "--img-size", "64", "96"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "[1, 3, 64, 96] uint8" in printed
    assert "onnxruntime vs PyTorch" in printed
    assert main([*args, "--img-size", "60", "96"]) == 2
    assert "multiples of data.size_divisor" in capsys.readouterr().err


def _export_args(ckpt, out, config="configs/shapes_demo.yaml") -> list[str]:
    args = ["--config", str(config), "--checkpoint", str(ckpt), "--out", str(out)]
    return ["export", *args, "--img-size", "64", "96", "--set", *SETS[1:]]


@pytest.fixture
def checkpoint(model, tmp_path):
    ckpt = tmp_path / "m.pth"
    save_checkpoint({"model": model.state_dict(), "classes": ["a", "b", "c"]}, ckpt)
    return ckpt


def test_export_refuses_an_out_that_is_one_of_its_inputs(checkpoint, tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(Path("configs/shapes_demo.yaml").read_text())
    config = tmp_path / "mine.yaml"
    config.write_text("_base_: base.yaml\n")
    (tmp_path / "ckpt_link.onnx").hardlink_to(checkpoint)
    spelled_otherwise = tmp_path / "sub" / ".." / "m.pth"
    for out in (checkpoint, config, base, tmp_path / "ckpt_link.onnx", spelled_otherwise):
        before = {p: p.read_bytes() for p in (checkpoint, config, base)}
        assert main(_export_args(checkpoint, out, config)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gfldet: error: --out") and "\n" not in err, err
        assert {p: p.read_bytes() for p in before} == before


def test_export_writes_the_onnx_file_atomically(checkpoint, tmp_path, capsys, monkeypatch):
    # An existing --out is replaced by a new file (a rename), never written in place: a file
    # it is a hard link of keeps its bytes, and a failed write leaves the old file whole.
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier export")
    other = tmp_path / "copy.onnx"
    other.hardlink_to(out)
    assert main(_export_args(checkpoint, out)) == 0
    assert other.read_bytes() == b"an earlier export"
    assert out.read_bytes()[:20] != b"an earlier export"[:20]
    capsys.readouterr()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    written = out.read_bytes()
    assert main(_export_args(checkpoint, out)) == 2
    assert "No space left" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.onnx", "m.onnx", "m.pth"]


def test_export_checks_its_options_before_exporting(tiny_trained, tmp_path, capsys):
    ckpt, sets, _ = tiny_trained
    base = ["export", "--config", DEMO, "--checkpoint", str(ckpt), "--set", *sets]
    assert main([*base, "--out", str(tmp_path / "m.onnx"), "--opset", "99"]) == 2
    assert "--opset" in one_line_error(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    assert main([*base, "--out", str(blocker / "m.onnx")]) == 2
    err = one_line_error(capsys)
    assert "--out" in err and str(blocker) in err
