"""Which runtime `gfldet infer --runtime` picks and refuses, the CPU facts it rests on, and the
bf16 path of the PyTorch predictor."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

import gfldet
from gfldet.core.checkpoint import save_checkpoint
from gfldet.deploy.machine import has_bf16, has_int8_dot, machine, percentile
from gfldet.inference import runtimes
from gfldet.inference.runtimes import available_runtimes, choose_runtime, runtime_status
from tests.helpers import DEMO, TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


def installed(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(runtimes, "runtime_installed", lambda name: name in names)


def test_auto_picks_the_fastest_installed_runtime_and_says_why(monkeypatch):
    installed(monkeypatch, "onnx", "onnxruntime", "openvino")
    assert choose_runtime("auto")[0] == "onnxruntime"
    assert "fastest available" in choose_runtime("auto")[1]
    # A checkpoint's short run does not repay the export; an exported file has none to repay.
    name, why = choose_runtime("auto", long_run=False)
    assert name == "torch" and "does not repay exporting" in why
    assert choose_runtime("auto", onnx_only=True, long_run=False)[0] == "onnxruntime"
    assert choose_runtime("onnxruntime", long_run=False)[0] == "onnxruntime"
    installed(monkeypatch, "onnx", "openvino")
    assert choose_runtime("auto")[0] == "openvino"
    installed(monkeypatch)
    assert choose_runtime("auto")[0] == "torch"
    assert choose_runtime("auto", torch.device("cuda"))[0] == "torch"  # a GPU: PyTorch


def test_int8_files_go_to_openvino_first(monkeypatch):
    """docs/deploy.md: OpenVINO ran the int8 files faster, onnxruntime the fp32 graphs."""
    installed(monkeypatch, "onnxruntime", "openvino")
    assert choose_runtime("auto", onnx_only=True, precision="int8")[0] == "openvino"
    assert choose_runtime("auto", onnx_only=True, precision="fp32")[0] == "onnxruntime"
    installed(monkeypatch, "onnx", "onnxruntime", "openvino")
    assert choose_runtime("auto", precision="int8")[0] == "onnxruntime"  # a checkpoint: fp32


def test_a_checkpoint_needs_onnx_to_reach_an_onnx_runtime(monkeypatch):
    """onnxruntime without the onnx package runs files but cannot export a checkpoint: auto
    falls back to PyTorch, an explicit request says what to install."""
    installed(monkeypatch, "onnxruntime")
    assert choose_runtime("auto")[0] == "torch"
    assert choose_runtime("auto", onnx_only=True)[0] == "onnxruntime"
    with pytest.raises(ImportError, match="needs the onnx package: pip install"):
        choose_runtime("onnxruntime")


def test_an_onnx_file_runs_only_in_onnx_runtimes(monkeypatch):
    installed(monkeypatch, "onnxruntime")
    assert choose_runtime("auto", onnx_only=True) == (
        "onnxruntime",
        "auto: the fastest available on CPU, of onnxruntime > openvino",
    )
    with pytest.raises(ValueError, match="an .onnx file runs in onnxruntime or openvino"):
        choose_runtime("torch", onnx_only=True)
    with pytest.raises(ImportError, match=r"--runtime openvino: not installed: pip install"):
        choose_runtime("openvino", onnx_only=True)
    installed(monkeypatch)
    with pytest.raises(ImportError, match="no runtime for ONNX files is installed"):
        choose_runtime("auto", onnx_only=True)


def test_bf16_is_offered_only_where_the_cpu_computes_it(monkeypatch):
    assert has_bf16(["avx2", "avx512_bf16"]) and has_bf16(["amx_bf16"])
    assert not has_bf16(["avx2", "avx512f"])
    monkeypatch.setattr(runtimes, "has_bf16", lambda: False)
    assert "no bfloat16 instructions" in runtime_status("torch-bf16")
    with pytest.raises(ValueError, match="--runtime torch-bf16: this CPU has no bfloat16"):
        choose_runtime("torch-bf16")
    assert "torch-bf16" not in available_runtimes()
    monkeypatch.setattr(runtimes, "has_bf16", lambda: True)
    assert choose_runtime("torch-bf16") == ("torch-bf16", "requested")
    with pytest.raises(ValueError, match="choose one of auto, torch"):
        choose_runtime("tensorrt")


def test_machine_facts_name_the_cpu_and_its_int8_and_bf16_instructions():
    assert has_int8_dot(["avx2", "avx512_vnni"]) and has_int8_dot(["avx_vnni"])
    assert has_int8_dot(["asimddp"]) and not has_int8_dot(["avx2", "fma"])
    m = machine()
    assert m["cpu"] and isinstance(m["cpu_flags"], list) and m["torch"] == torch.__version__
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([2.0], 90) == 2.0


def test_the_bf16_predictor_finds_the_float32_detections(tmp_path):
    """Predictor(bf16=True): the network under bfloat16 autocast, boxes decoded in float32
    (runs on any CPU: emulated where there is no bf16, hence only offered where there is)."""
    torch.manual_seed(0)
    cfg = gfldet.load_config(
        DEMO, ["model.num_classes=3", "data.val.img_scale=[64,64]", "device=cpu", *TINY_MODEL]
    )
    model = gfldet.build_model(cfg.model)
    with torch.no_grad():
        model.head.gfl_cls.bias.uniform_(-4, 0)
    ckpt = tmp_path / "m.pth"
    save_checkpoint({"model": model.state_dict(), "classes": ["a", "b", "c"]}, ckpt)
    image = torch.randint(0, 256, (64, 80, 3), dtype=torch.uint8).numpy()
    ref = gfldet.Predictor(cfg, ckpt, "cpu")([image])[0]
    got = gfldet.Predictor(cfg, ckpt, "cpu", bf16=True)([image])[0]
    assert got["boxes"].dtype == torch.float32 and len(got["boxes"]) > 0
    assert set(got) == set(ref)
    top = ref["scores"].argmax()
    assert box_iou(ref["boxes"][top : top + 1], got["boxes"]).max() > 0.9
