"""int8 ONNX files: onnxruntime's static post-training quantization of an exported fp32 file
(`gfldet export --int8`).

QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantized op, which
onnxruntime and OpenVINO both turn into int8 kernels), weights int8 per output channel,
activations uint8 per tensor with MinMax ranges from calibration images. Only convolutions are
quantized: the box decoding (softmax, integral, distances), the scores' sigmoid and NMS stay in
float32, as does every op listed in KEEP_FLOAT (the head's last convs by default, whose
outputs are the class logits and the edge distributions: small, and where rounding moves
scores and box edges most).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_open
from .metadata import DeployInfo, letterbox, read_metadata, set_metadata

log = logging.getLogger("gfldet")

# Name fragments of the ONNX nodes kept in float32 (the exporter names nodes by module path,
# one per call of a shared module: "/head/gfl_cls/Conv", "/head/gfl_reg_1/Conv", ...).
KEEP_FLOAT = ("/head/gfl_cls", "/head/gfl_reg")
DEFAULT_CALIB_NUM = 32


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over image files: each file letterboxed as
    the runtime will feed it (letterbox)."""

    def __init__(self, files: Sequence[Path], info: DeployInfo) -> None:
        self.files, self.info = list(files), info
        self._it: Iterator[Path] = iter(self.files)

    def get_next(self) -> dict[str, np.ndarray] | None:
        from ..data.coco import BadImageError, load_image

        for path in self._it:
            try:
                rgb = load_image(path)
            except BadImageError as e:
                log.warning("calibration: skipped an unreadable image: %s", e)
                continue
            return {self.info.input_name: letterbox(rgb, self.info)[0]}
        return None

    def rewind(self) -> None:
        self._it = iter(self.files)


def float_nodes(model: Any, keep_float: Sequence[str]) -> list[str]:
    """The names of the Conv nodes of `model` (an onnx.ModelProto) that stay float32."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and any(k in n.name for k in keep_float)
    ]


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path,
    files: Sequence[Path],
    keep_float: Sequence[str] = KEEP_FLOAT,
    reduce_range: bool = True,
    echo: Callable[[str], None] = print,
) -> DeployInfo:
    """Writes the int8 version of the fp32 ONNX file `fp32_path` (a `gfldet export` output) to
    `out`, atomically, calibrated on `files`; returns its metadata (precision "int8" and a
    "quantization" entry saying how).

    keep_float: name fragments of the convs kept in float32 (KEEP_FLOAT; () quantizes every
    conv). reduce_range: 7-bit weights (the default), which avoid the saturation of the
    uint8 x int8 products in the int16 sums of the AVX2 kernels of CPUs without VNNI: measured
    on the trained real-time model (docs/deploy.md), 8-bit weights lost 0.1-0.3 AP there, 7-bit
    none; files are run on machines other than the one that made them.
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ImportError("int8 export needs onnxruntime: pip install 'gfldet[onnx]'") from None
    info = read_metadata(fp32_path)
    if info.precision != "fp32":
        raise ValueError(f"{fp32_path} is already {info.precision}: quantize an fp32 export")
    with tempfile.TemporaryDirectory(prefix="gfldet-int8-") as tmp:
        # Shape inference and graph cleanup first (onnxruntime's recommended pre-processing:
        # constant-folded biases become initializers, which quantize_static needs).
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = float_nodes(onnx.load(str(prepared)), keep_float)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            _Reader(files, info),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(str(quantized))
    info.precision = "int8"
    info.quantization = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 per channel" + (" (7-bit range)" if reduce_range else ""),
        "activations": "uint8 per tensor, MinMax",
        "quantized_ops": ["Conv"],
        "float_convs": excluded,
        "calibration_images": len(files),
    }
    set_metadata(model, info, info.describe())
    with atomic_open(Path(out), "wb") as f:
        f.write(model.SerializeToString())
    echo(
        f"int8: {len(files)} calibration images; {len(excluded)} convs kept float32 "
        f"({', '.join(keep_float) or 'none'})"
    )
    return info
