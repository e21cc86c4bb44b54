"""Deployment (issue 22): self-describing ONNX files, `infer --onnx` and the ONNX runtimes
against PyTorch, the onnxruntime snippet of docs/deploy.md, int8 export, `benchmark --quick`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gfldet
from gfldet.cli import main
from gfldet.core.checkpoint import save_checkpoint
from gfldet.data.synth import shapes_overrides
from gfldet.deploy.compare import detection_agreement
from gfldet.deploy.metadata import DeployInfo, read_metadata
from gfldet.inference.export import DecodedGFL, deploy_info, export_onnx
from gfldet.inference.onnx_predictor import OnnxPredictor
from tests.helpers import DEMO, REPO, TINY_MODEL

ort = pytest.importorskip("onnxruntime")  # the optional "onnx" extra
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, CAT_IDS = ["circle", "square", "triangle"], [3, 7, 11]
# The demo model (configs/shapes_demo.yaml's architecture) at 64 x 64, the `shapes` images' size.
DEMO_SETS = [
    "model.num_classes=3",
    "data.val.img_scale=[64,64]",
    "model.test.score_thr=0.05",
    "device=cpu",
]
TINY_SETS = [*DEMO_SETS, *TINY_MODEL]
# int8 on the tiny untrained model: at least this share of the fp32 detections scoring >= 0.2
# found again (same class, IoU >= 0.5). docs/deploy.md gives it and the trained models' numbers.
INT8_AGREEMENT = 0.7


def spread(model: gfldet.GFL) -> gfldet.GFL:
    """An untrained model with scores spread over (0, 0.5) and boxes of about two strides that
    vary, so that thresholds, NMS and the box decoding have work to do."""
    with torch.no_grad():
        model.head.gfl_cls.bias.uniform_(-4, 0)
        model.head.gfl_reg.weight.normal_(0, 0.2)
        model.head.gfl_reg.bias.view(4, -1)[:, 1] = 4.0
    return model.eval()


def build(sets: list[str], seed: int = 0) -> tuple[gfldet.GFL, object]:
    torch.manual_seed(seed)
    cfg = gfldet.load_config(DEMO, sets)
    return spread(gfldet.build_model(cfg.model)), cfg


@pytest.fixture(scope="module")
def demo(tmp_path_factory, shapes) -> dict:
    """The demo model's checkpoint (classes and category ids in it), its config overrides, and
    its exports at 64 x 64: without NMS, with NMS, int8."""
    folder = tmp_path_factory.mktemp("deploy")
    model, _ = build(DEMO_SETS)
    ckpt = folder / "demo.pth"
    save_checkpoint({"model": model.state_dict(), "classes": CLASSES, "cat_ids": CAT_IDS}, ckpt)
    sets = [*DEMO_SETS, *shapes_overrides(shapes)]
    base = ["export", "--config", DEMO, "--checkpoint", str(ckpt), "--img-size", "64", "64"]
    files = {}
    for name, extra in (("plain", []), ("nms", ["--nms"])):
        files[name] = folder / f"{name}.onnx"
        assert main([*base, "--out", str(files[name]), *extra, "--set", *sets]) == 0
    return {"ckpt": ckpt, "sets": sets, "files": files, "folder": folder, "shapes": shapes}


def test_metadata_round_trips(tmp_path):
    model, _ = build(TINY_SETS)
    path = export_onnx(
        model, tmp_path / "m.onnx", (64, 96), classes=CLASSES, cat_ids=CAT_IDS, img_scale=(96, 64)
    )
    info = read_metadata(path)
    assert info == deploy_info(DecodedGFL(model, (64, 96)), "uint8", CLASSES, CAT_IDS, (96, 64))
    assert DeployInfo.from_props(info.to_props()) == info
    assert info.classes == CLASSES and info.category_ids == CAT_IDS
    assert info.input_shape == [1, 3, 64, 96] and info.input_layout == "NCHW"
    assert info.strides == [8, 16, 32, 64, 128] and info.nms is False
    assert info.num_locations == sum(-(-64 // s) * -(-96 // s) for s in info.strides)
    assert info.normalization == "folded" and info.pad_value == [124.0, 116.0, 104.0]
    assert info.gfldet_version == gfldet.__version__ and info.precision == "fp32"
    # What a user sees with onnxruntime alone: JSON values under plain keys, and a doc_string.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta()
    props = {k: json.loads(v) for k, v in meta.custom_metadata_map.items()}
    assert props["classes"] == CLASSES and props["score_thr"] == pytest.approx(0.05)
    assert props["num_locations"] == info.num_locations and "resize" in meta.description


def test_metadata_of_a_later_version_or_wrong_type_is_refused_in_one_line():
    model, _ = build(TINY_SETS)
    props = deploy_info(DecodedGFL(model, (64, 64)), "uint8", CLASSES, CAT_IDS).to_props()
    for key, text in (("metadata_version", "2"), ("input_shape", "7"), ("classes", "5")):
        with pytest.raises(ValueError, match=f"m.onnx: .*{key}|m.onnx: gfldet metadata"):
            DeployInfo.from_props({**props, key: text}, "m.onnx")


def test_lite_exports_four_levels(tmp_path):
    """The real-time model's pyramid is strides 8..64: 2125 locations at 320 x 320 (the
    number docs/interop.md and docs/deploy.md give)."""
    cfg = gfldet.load_config(
        "configs/gfl_lite_320_coco.yaml", ["model.backbone.pretrained=null", "model.num_classes=2"]
    )
    info = deploy_info(DecodedGFL(gfldet.build_model(cfg.model), (320, 320)), "uint8")
    assert info.strides == [8, 16, 32, 64] and info.num_locations == 2125


def test_a_file_without_metadata_is_refused_clearly(tmp_path):
    model, _ = build(TINY_SETS)
    onnx = pytest.importorskip("onnx")
    path = export_onnx(model, tmp_path / "m.onnx", (64, 64))
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match=r"bare.onnx has no gfldet metadata"):
        read_metadata(bare)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk.onnx is not a readable ONNX model"):
        read_metadata(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        read_metadata(tmp_path / "missing.onnx")


def infer_records(args: list[str], out: Path, capsys) -> tuple[list[dict], str]:
    assert main(["infer", *args, "--out-dir", str(out), "--score-thr", "0.05"]) == 0
    printed = capsys.readouterr().out
    return json.loads((out / "predictions.json").read_text()), printed


def assert_same_predictions(ref: list[dict], got: list[dict], extra_keys: set[str] = frozenset()):
    """Same files, same detections in the same order: boxes within 1e-2 px, scores within
    1e-4, same categories (float32 rounding differs between the runtimes)."""
    assert [r["file"] for r in got] == [r["file"] for r in ref]
    n = 0
    for a, b in zip(ref, got, strict=True):
        assert len(a["detections"]) == len(b["detections"]), a["file"]
        for x, y in zip(a["detections"], b["detections"], strict=True):
            assert set(x) == set(y) | extra_keys
            assert (x["category_id"], x["category_name"]) == (y["category_id"], y["category_name"])
            assert abs(x["score"] - y["score"]) < 1e-4
            assert np.allclose(x["bbox_xyxy"], y["bbox_xyxy"], atol=1e-2)
            n += 1
    assert n > 20


def test_infer_onnx_writes_pytorchs_predictions(demo, tmp_path, capsys):
    """`infer --onnx FILE` needs no config: the metadata carries the classes, resize and
    post-processing; files with and without NMS give PyTorch's predictions.json (less the
    edge uncertainty, which an export has no output for)."""
    images = str(demo["shapes"]["val_img_dir"])
    torch_args = ["--config", DEMO, "--checkpoint", str(demo["ckpt"]), "--runtime", "torch"]
    ref, printed = infer_records(
        [*torch_args, images, "--set", *demo["sets"]], tmp_path / "torch", capsys
    )
    assert "runtime: torch (requested)" in printed
    for name, path in demo["files"].items():
        got, printed = infer_records(
            ["--onnx", str(path), "--runtime", "onnxruntime", images], tmp_path / name, capsys
        )
        assert f"runtime: onnxruntime (requested), fp32 graph {path}" in printed
        assert_same_predictions(ref, got, {"edge_std", "edge_top2"})
        assert {d["category_id"] for r in got for d in r["detections"]} <= set(CAT_IDS)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_checkpoint_in_an_onnx_runtime_gives_pytorchs_predictions(
    demo, runtime, tmp_path, capsys
):
    """--runtime onnxruntime / openvino with a checkpoint: one graph per padded size, each
    image resized and padded as PyTorch does, edge uncertainty included. A non-square image
    checks the resize and the padding."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    import cv2

    for i, (h, w) in enumerate([(64, 64), (40, 64), (64, 48)]):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    common = [
        "--config",
        DEMO,
        "--checkpoint",
        str(demo["ckpt"]),
        str(images),
        "--set",
        *demo["sets"],
    ]
    ref, _ = infer_records([*common, "--runtime", "torch"], tmp_path / "torch", capsys)
    got, printed = infer_records([*common, "--runtime", runtime], tmp_path / runtime, capsys)
    assert f"runtime: {runtime} (requested)" in printed
    assert_same_predictions(ref, got)


def test_infer_onnx_refuses_a_config_too(demo, tmp_path, capsys):
    args = [
        "infer",
        "--onnx",
        str(demo["files"]["plain"]),
        "--config",
        DEMO,
        "--checkpoint",
        str(demo["ckpt"]),
        str(demo["shapes"]["val_img_dir"]),
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "--onnx runs an exported file on its own" in capsys.readouterr().err
    args = [
        "infer",
        "--onnx",
        str(demo["files"]["plain"]),
        "--runtime",
        "torch",
        str(demo["shapes"]["val_img_dir"]),
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "an .onnx file runs in onnxruntime or openvino" in capsys.readouterr().err


def docs_snippet() -> str:
    page = (REPO / "docs" / "deploy.md").read_text()
    found = re.search(r"```python\n(# onnxruntime_example\.py.*?)```", page, re.S)
    assert found, "docs/deploy.md has no python block starting with # onnxruntime_example.py"
    return found.group(1)


def test_the_docs_onnxruntime_snippet_runs_and_matches_the_predictor(demo, tmp_path, monkeypatch):
    """docs/deploy.md's onnxruntime example (onnxruntime, numpy and OpenCV only), run on an
    --nms export and a non-square image, finds what OnnxPredictor finds."""
    import cv2

    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "image.jpg"), image[:, :, ::-1])
    os.link(demo["files"]["nms"], tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(docs_snippet(), "docs/deploy.md", "exec"), namespace)
    ref = OnnxPredictor(tmp_path / "model.onnx")([str(tmp_path / "image.jpg")])[0]
    keep = ref["scores"] >= namespace["SCORE_THR"]
    got = namespace["detections"]
    assert len(got) == int(keep.sum()) > 0
    for (name, cat_id, score, box), r_name, r_id, r_score, r_box in zip(
        got,
        np.array(ref["names"])[keep.numpy()],
        ref["category_ids"][keep],
        ref["scores"][keep],
        ref["boxes"][keep],
        strict=True,
    ):
        assert (name, cat_id) == (r_name, int(r_id)) and score == pytest.approx(float(r_score))
        assert np.allclose(box, r_box.numpy(), atol=1e-3)


def test_int8_export_finds_the_float_models_detections(demo, tmp_path, capsys):
    """`export --int8` (QDQ, per-channel, calibrated on the config's val images) runs, says
    so in its metadata, and finds again most of the fp32 model's detections."""
    out = tmp_path / "int8.onnx"
    args = [
        "export",
        "--config",
        DEMO,
        "--checkpoint",
        str(demo["ckpt"]),
        "--img-size",
        "64",
        "64",
        "--out",
        str(out),
        "--int8",
        "--calib-num",
        "3",
        "--set",
        *demo["sets"],
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "int8 (QDQ)" in printed and "3 calibration images" in printed
    info = read_metadata(out)
    assert info.precision == "int8" and info.quantization["calibration_images"] == 3
    assert info.quantization["float_convs"] and info.classes == CLASSES
    fp32, int8 = OnnxPredictor(demo["files"]["plain"]), OnnxPredictor(out)
    files = sorted(Path(demo["shapes"]["val_img_dir"]).glob("*.jpg"))
    matched, counted = detection_agreement(fp32(files), int8(files), score_thr=0.2)
    assert counted > 20 and matched / counted >= INT8_AGREEMENT, (matched, counted)


def test_int8_options_are_checked_before_the_model_loads(demo, tmp_path, capsys):
    base = [
        "export",
        "--config",
        DEMO,
        "--checkpoint",
        str(demo["ckpt"]),
        "--out",
        str(tmp_path / "m.onnx"),
        "--set",
        *demo["sets"],
    ]
    assert main([*base, "--calib-num", "4"]) == 2
    assert "add --int8" in capsys.readouterr().err
    assert main([*base, "--int8", "--calib", str(tmp_path / "nowhere")]) == 2
    assert "not a folder of images" in capsys.readouterr().err
    assert main([*base, "--int8", "--calib-num", "0"]) == 2
    assert "--calib-num must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_benchmark_quick_times_every_runtime(demo, tmp_path, capsys):
    """`gfldet benchmark --quick`: every available runtime and precision side by side, with
    the machine (CPU, instruction sets) recorded."""
    out = tmp_path / "bench.json"
    args = [
        "benchmark",
        "--config",
        DEMO,
        "--checkpoint",
        str(demo["ckpt"]),
        "--quick",
        "--img-size",
        "64",
        "64",
        "--threads",
        "1",
        "--set",
        *demo["sets"],
    ]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    names = {(r["runtime"], r["precision"]) for r in result["rows"]}
    assert {
        ("torch", "fp32"),
        ("torch", "fp32 prepared"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
    } <= names
    for r in result["rows"]:
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["images_per_s"] > 0
    assert result["machine"]["cpu"] and "cpu_flags" in result["machine"]
    assert "instruction sets:" in printed and "vs torch" in printed
    assert set(result["skipped"]) | {f"{a} {b}" for a, b in names} >= {
        "torch bf16 prepared",
        "openvino fp32",
        "openvino int8",
    }
    # An earlier result at --out is replaced, a user's file never.
    user = tmp_path / "notes.json"
    user.write_text("{}")
    assert main([*args, "--out", str(user)]) == 2
    assert "not a gfldet benchmark result" in capsys.readouterr().err
    assert user.read_text() == "{}"


OPENVINO_THEN_CTRL_C = r"""
import gc, os, signal, sys, time
from gfldet.deploy.sessions import open_session
a = open_session(sys.argv[1], "openvino", 1)
b = open_session(sys.argv[1], "openvino", 1)
del a  # freed in the order they were made, not the reverse
gc.collect()
del b
gc.collect()
got = []
signal.signal(signal.SIGINT, lambda *_: got.append(1))
os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C, handled in Python
time.sleep(0.1)
print("handled" if got else "lost")
"""


def test_a_signal_after_openvino_sessions_is_handled(tmp_path, run_python):
    """OpenVINO swaps the thread's alternate signal stack per compiled model and restores a
    freed one when models are freed out of order: a later Ctrl-C must still be handled."""
    pytest.importorskip("openvino")
    model, _ = build(TINY_SETS)
    onnx_file = export_onnx(model, tmp_path / "tiny.onnx", (64, 64))
    out = run_python("-c", OPENVINO_THEN_CTRL_C, onnx_file)
    assert out.returncode == 0 and out.stdout.strip() == "handled", out.stderr[-2000:]
