"""What an exported ONNX file says about itself: the ONNX `metadata_props` that `gfldet export`
writes, so that a runtime needs the file alone (no config, no checkpoint).

Every value is JSON text (strings quoted, lists as lists), readable in any ONNX viewer and with
`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`:

    gfldet_version, metadata_version   the writer and the layout of these keys (1)
    classes, category_ids             label k (0..C-1): name classes[k], dataset id category_ids[k]
    input_name, input_shape           "images", [1, 3, H, W] (fixed)
    input_layout, input_dtype         "NCHW", "uint8" or "float32"
    input_color, input_range          "RGB", [0, 255]: raw pixels
    resize                            "keep_ratio_bilinear": see DeployInfo.fit_size
    img_scale                         [long, short]: the config's test scale (data.val.img_scale)
    pad, pad_value                    "bottom_right", the per-channel pixel value of the padding
    normalization, mean, std          "folded": (x - mean) / std is in the graph; feed raw pixels
    strides, feature_sizes            the pyramid: [8, 16, ...], [[H_l, W_l], ...]
    num_locations                     A = sum H_l * W_l
    nms                               true: outputs boxes [K, 4], scores [K], labels [K];
                                      false: boxes [1, A, 4], scores [1, A, C] for every location
    score_thr, nms_iou, nms_pre,      the model's post-processing (model.test); in the graph
    max_per_img                       with nms, applied by the runtime without
    outputs                           the output names in order: boxes, scores (, labels)
                                      (, dists: edge distributions, with their bin_width)
    box_format                        "xyxy_input_pixels": divide by the resize factor
    precision                         "fp32" or "int8"; int8 files add "quantization" (how)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.transforms import rescale_size

METADATA_VERSION = 1
RESIZE_RULE = "keep_ratio_bilinear"
PAD_RULE = "bottom_right"
BOX_FORMAT = "xyxy_input_pixels"


@dataclass
class DeployInfo:
    """The metadata of one exported model (see the module docstring for each key)."""

    classes: list[str]
    category_ids: list[int]
    input_shape: list[int]
    input_dtype: str
    img_scale: list[int]
    pad_value: list[float]
    mean: list[float]
    std: list[float]
    strides: list[int]
    feature_sizes: list[list[int]]
    nms: bool
    score_thr: float
    nms_iou: float
    nms_pre: int
    max_per_img: int
    outputs: list[str]
    bin_width: float | None = None
    precision: str = "fp32"
    quantization: dict[str, Any] | None = None
    gfldet_version: str = ""
    metadata_version: int = METADATA_VERSION
    input_name: str = "images"
    input_layout: str = "NCHW"
    input_color: str = "RGB"
    input_range: list[int] = field(default_factory=lambda: [0, 255])
    resize: str = RESIZE_RULE
    pad: str = PAD_RULE
    normalization: str = "folded"
    box_format: str = BOX_FORMAT

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        return int(self.input_shape[2]), int(self.input_shape[3])

    @property
    def num_locations(self) -> int:
        return sum(h * w for h, w in self.feature_sizes)

    def fit_size(self, width: int, height: int) -> tuple[int, int, float, float]:
        """The resize of a width x height image: (new_w, new_h, w_scale, h_scale).

        The config's keep-ratio rule first (data.transforms.rescale_size at img_scale: the long
        side at most max(img_scale), the short side at most min(img_scale)), exactly what the
        PyTorch predictor does; when that does not fit the fixed input H x W (a portrait image
        in a landscape export), the keep-ratio size that fits H x W instead. The image is then
        placed at the top left and padded at the bottom and right to H x W with pad_value.
        """
        h_in, w_in = self.input_size
        new_w, new_h, ws, hs = rescale_size(width, height, tuple(self.img_scale))
        if new_w <= w_in and new_h <= h_in:
            return new_w, new_h, ws, hs
        factor = min(w_in / width, h_in / height)
        new_w, new_h = max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5))
        new_w, new_h = min(new_w, w_in), min(new_h, h_in)
        return new_w, new_h, new_w / width, new_h / height

    def describe(self) -> str:
        """The file's doc_string: what to feed it and what it returns, in words."""
        h, w = self.input_size
        c, a = len(self.classes), self.num_locations
        if self.nms:
            outs = "boxes [K, 4], scores [K], labels [K] (after score threshold and NMS)"
        else:
            outs = f"boxes [1, {a}, 4], scores [1, {a}, {c}] (every location)"
        return (
            f"gfldet GFL detector ({self.precision}), {c} classes. Input {self.input_name} "
            f"[1, 3, {h}, {w}] {self.input_dtype} RGB 0..255: resize keeping the aspect ratio "
            f"to fit {self.img_scale[0]}x{self.img_scale[1]} (long x short) and {w}x{h} "
            f"(width x height), at the top left; pad bottom and right with {self.pad_value}; "
            f"the normalisation is in the graph. Outputs {outs}, boxes xyxy in input pixels: "
            "divide by the resize factor. Details: metadata_props."
        )

    def to_props(self) -> dict[str, str]:
        """The metadata_props entries: every field as JSON text, plus num_locations."""
        props = {k: json.dumps(v) for k, v in asdict(self).items() if v is not None}
        props["num_locations"] = json.dumps(self.num_locations)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "the ONNX file") -> DeployInfo:
        """Parses metadata_props written by to_props. Raises ValueError naming `where` and the
        key when the file has no gfldet metadata or a value does not parse."""
        if "classes" not in props or "input_shape" not in props:
            raise ValueError(
                f"{where} has no gfldet metadata (no 'classes' / 'input_shape' in its "
                "metadata_props): export it with `gfldet export`, which writes them"
            )
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for key, text in props.items():
            if key not in known:
                continue  # num_locations (derived), and keys of later versions
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{where}: metadata {key}={text!r} is not JSON") from None
        try:
            info = cls(**values)
        except TypeError as e:
            raise ValueError(f"{where}: incomplete gfldet metadata ({e})") from None
        try:
            info.check(where)
        except (TypeError, AttributeError) as e:  # a value of the wrong type, e.g. a number
            raise ValueError(f"{where}: gfldet metadata does not fit: {e}") from None
        return info

    def check(self, where: str) -> None:
        """Raises ValueError when the values do not describe a model gfldet can run."""
        if not isinstance(self.metadata_version, int) or self.metadata_version > METADATA_VERSION:
            raise ValueError(
                f"{where}: metadata_version {self.metadata_version!r} is newer than this gfldet "
                f"reads ({METADATA_VERSION}): upgrade gfldet, or export the file with this one"
            )
        problems = []
        if len(self.input_shape) != 4 or self.input_shape[:2] != [1, 3]:
            problems.append(f"input_shape {self.input_shape} is not [1, 3, H, W]")
        if self.input_dtype not in ("uint8", "float32"):
            problems.append(f"input_dtype {self.input_dtype!r} is not uint8 or float32")
        if len(self.classes) != len(self.category_ids) or not self.classes:
            problems.append(
                f"{len(self.classes)} classes but {len(self.category_ids)} category_ids"
            )
        if len(self.strides) != len(self.feature_sizes):
            problems.append(f"{len(self.strides)} strides but {len(self.feature_sizes)} levels")
        expected = ["boxes", "scores", "labels"] if self.nms else ["boxes", "scores"]
        if self.outputs[: len(expected)] != expected:
            problems.append(f"outputs {self.outputs} do not start with {expected}")
        if self.resize != RESIZE_RULE or self.pad != PAD_RULE or self.box_format != BOX_FORMAT:
            problems.append(
                f"resize {self.resize!r} / pad {self.pad!r} / box_format {self.box_format!r} "
                "are not this gfldet version's"
            )
        if problems:
            raise ValueError(f"{where}: gfldet metadata does not fit: {'; '.join(problems)}")


def pad_value_for(mean: list[float], input_dtype: str) -> list[float]:
    """The padding pixel: the mean colour, so that the padding is (about) 0 after the graph's
    normalisation, as the PyTorch model's padding is exactly 0. uint8 inputs round it (the
    padding is then within 0.5 / std, < 0.01, of 0); float32 inputs use it as it is."""
    if input_dtype == "uint8":
        return [float(np.clip(np.round(m), 0, 255)) for m in mean]
    return [float(m) for m in mean]


def metadata_from_file(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict, read with onnxruntime (which every gfldet
    runtime path has) or, without it, the onnx package."""
    try:
        import onnxruntime as ort
    except ImportError:
        try:
            import onnx
        except ImportError:
            raise ImportError(
                "reading an ONNX file needs onnxruntime: pip install 'gfldet[onnx]'"
            ) from None
        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def read_metadata(path: str | Path) -> DeployInfo:
    """The DeployInfo of an exported ONNX file. Raises FileNotFoundError for a missing file and
    ValueError, naming the file, for one that is not ONNX or has no gfldet metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        props = metadata_from_file(path)
    except ImportError:
        raise
    except Exception as e:  # onnxruntime's and onnx's own errors for a file they cannot parse
        raise ValueError(f"{path} is not a readable ONNX model: {str(e).splitlines()[0]}") from None
    return DeployInfo.from_props(props, str(path))


def set_metadata(model: Any, info: DeployInfo, doc: str | None = None) -> None:
    """Writes info's entries into an onnx.ModelProto's metadata_props (replacing gfldet's keys,
    keeping any others) and names gfldet as its producer."""
    props = info.to_props()
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "gfldet"
    model.producer_version = info.gfldet_version
    if doc is not None:
        model.doc_string = doc


def letterbox(rgb: np.ndarray, info: DeployInfo) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 RGB [h, w, 3] -> the network input [1, 3, H, W] of info's dtype, and
    {"img_size": (new_h, new_w), "scale_factor": (w_scale, h_scale)} (info.fit_size's resize,
    as the PyTorch predictor's TestTransform gives them), padded with info.pad_value."""
    h, w = rgb.shape[:2]
    new_w, new_h, ws, hs = info.fit_size(w, h)
    if (new_w, new_h) != (w, h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dtype = np.uint8 if info.input_dtype == "uint8" else np.float32
    hh, ww = info.input_size
    canvas = np.empty((hh, ww, 3), dtype)
    canvas[...] = np.asarray(info.pad_value, dtype)
    canvas[:new_h, :new_w] = rgb
    x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])
    return x, {"img_size": (new_h, new_w), "scale_factor": (ws, hs)}
