"""ONNX export: the detector with its box decoding as one graph (`gfldet export`).

The graph takes one image already resized and padded to the export size (H, W), RGB, as
uint8 [1, 3, H, W] (or float32 pixel values 0..255 with input_dtype="float32"); the
normalisation by the config's mean/std is inside the graph. Without NMS it returns, for all
A = sum_l H_l*W_l locations of the pyramid,

    boxes  [1, A, 4]  xyxy in input pixels, clipped to [0, W] x [0, H]
    scores [1, A, C]  the joint class-IoU scores (sigmoid), before any threshold or NMS
                      (for the ablations with a separate quality branch: class × quality)

With NMS (ONNX NonMaxSuppression, opset >= 11) it returns the model's own post-processing
(test.nms_pre per level, test.score_thr, class-wise NMS at test.nms_iou, test.max_per_img):

    boxes [K, 4], scores [K], labels [K] int64 (0..C-1; the checkpoint's cat_ids map them)

Boxes are in the pixels of the network input: divide by the resize factor to get back to the
original image. The graph has a fixed input size (the pyramid's location grid is a constant).
"""

from __future__ import annotations

import io
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..core.files import atomic_open, make_output_dir
from ..deploy.metadata import DeployInfo, pad_value_for, set_metadata
from ..model.box_ops import distance2bbox, grid_points
from ..model.detector import GFL
from .predictor import load_trained_model

INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


class DecodedGFL(nn.Module):
    """A GFL detector for one fixed input size, with box decoding (and optionally NMS) inside.

    forward: images [1, 3, H, W] uint8 or float (0..255, RGB) -> (boxes [1, A, 4],
    scores [1, A, C]); with nms=True -> (boxes [K, 4], scores [K], labels [K]). dists=True
    (no NMS, box representation "general") adds the edge distributions [1, A, 4, n+1], from
    which the runtime computes the edge uncertainty of the kept detections as PyTorch does.
    """

    def __init__(
        self, model: GFL, img_size: tuple[int, int], nms: bool = False, dists: bool = False
    ) -> None:
        super().__init__()
        if dists and (nms or not model.head.box.has_distributions):
            raise ValueError(
                "dists: a third output of the edge distributions needs a model with them "
                "(model.head.box general) and no NMS in the graph"
            )
        self.model, self.img_size, self.nms, self.dists = model.eval(), tuple(img_size), nms, dists
        h, w = self.img_size
        with torch.no_grad():  # the feature sizes of this input size, from the network itself
            feats = model.features(torch.zeros(1, 3, h, w))
        self.sizes = [tuple(f.shape[-2:]) for f in feats]
        points, strides = grid_points(self.sizes, model.strides)
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("max_shape", torch.tensor([h, w]), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        x = m.preprocess(images, None)
        cls, reg, quality = m.head(m.features(x))
        if self.nms:
            det = m.postprocess(
                cls, reg, self.points, self.strides, self.sizes, self.img_size, None, quality
            )[0]
            return det["boxes"], det["scores"], det["labels"]
        scores = m.head.quality.scores(cls, quality)
        dist = m.decode(reg) * self.strides[:, None]
        boxes = distance2bbox(self.points, dist, max_shape=self.max_shape)
        if self.dists:
            return boxes, scores, m.head.box.distributions(reg)
        return boxes, scores


def onnx_opset_range() -> tuple[int, int]:
    """The ONNX opsets this torch's (TorchScript-based) exporter writes, (lowest, highest)."""
    try:  # a private module, but the only place torch states its range
        from torch.onnx import _constants as c

        return c.ONNX_MIN_OPSET, c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):
        return 7, 17  # what every torch since 1.13 writes


def export_onnx(
    model: GFL,
    out: str | Path,
    img_size: tuple[int, int],
    input_dtype: str = "uint8",
    nms: bool = False,
    opset: int = 17,
    *,
    classes: Sequence[str] | None = None,
    cat_ids: Sequence[int] | None = None,
    img_scale: Sequence[int] | None = None,
    dists: bool = False,
) -> Path:
    """Writes model (eval mode, CPU) to an ONNX file, atomically (core.files.atomic_open);
    returns its path.

    img_size: (H, W) of the network input. See the module docstring for inputs and outputs.
    The file carries its own description in metadata_props (gfldet.deploy.metadata):
    `classes` and `cat_ids` (default class_0.. and 0..C-1), `img_scale` (the keep-ratio resize
    rule, (long, short); default the input size), the normalisation, pyramid and
    post-processing. dists: add the edge distributions as a third output (DecodedGFL).
    Needs the onnx package (`pip install "gfldet[onnx]"`) to write the metadata.
    """
    if input_dtype not in INPUT_DTYPES:
        choices = ", ".join(INPUT_DTYPES)
        raise ValueError(f"input dtype must be one of {choices}, got {input_dtype!r}")
    if nms and opset < 11:
        raise ValueError(f"NMS needs ONNX opset >= 11 (NonMaxSuppression), got {opset}")
    h, w = img_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h} x {w}")
    onnx = _import_onnx("exporting to ONNX")
    wrapper = DecodedGFL(model.cpu(), (h, w), nms, dists)
    info = deploy_info(wrapper, input_dtype, classes, cat_ids, img_scale)
    dummy = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8).to(INPUT_DTYPES[input_dtype])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False) needs no extra package (the dynamo one
        # needs onnxscript); its deprecation notice and tracer remarks are not the user's concern.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (dummy,),
            buf,
            input_names=[info.input_name],
            output_names=info.outputs,
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    set_metadata(proto, info, info.describe())
    out = Path(out)
    # Through a temp file in the same folder, renamed over `out` once complete: a failed write
    # leaves any earlier file whole, and a link at `out` is replaced, never written through.
    with atomic_open(out, "wb") as f:
        f.write(proto.SerializeToString())
    return out


def _import_onnx(purpose: str) -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(f"{purpose} needs the onnx package: pip install 'gfldet[onnx]'") from None
    return onnx


def deploy_info(
    wrapper: DecodedGFL,
    input_dtype: str,
    classes: Sequence[str] | None = None,
    cat_ids: Sequence[int] | None = None,
    img_scale: Sequence[int] | None = None,
) -> DeployInfo:
    """The metadata of `wrapper` exported with `input_dtype` (see export_onnx)."""
    m = wrapper.model
    n = m.num_classes
    classes = list(classes) if classes else [f"class_{i}" for i in range(n)]
    cat_ids = [int(c) for c in cat_ids] if cat_ids else list(range(n))
    if len(classes) != n or len(cat_ids) != n:
        raise ValueError(
            f"the model has {n} classes, but {len(classes)} class names and {len(cat_ids)} "
            "category ids were given"
        )
    h, w = wrapper.img_size
    scale = [int(v) for v in img_scale] if img_scale else [max(h, w), min(h, w)]
    mean = [float(v) for v in m.mean.flatten()]
    outputs = ["boxes", "scores", "labels"] if wrapper.nms else ["boxes", "scores"]
    if wrapper.dists:
        outputs.append("dists")
    t = m.test
    return DeployInfo(
        classes=classes,
        category_ids=cat_ids,
        input_shape=[1, 3, h, w],
        input_dtype=input_dtype,
        img_scale=[max(scale), min(scale)],
        pad_value=pad_value_for(mean, input_dtype),
        mean=mean,
        std=[float(v) for v in m.std.flatten()],
        strides=[int(s) for s in m.strides],
        feature_sizes=[[int(a), int(b)] for a, b in wrapper.sizes],
        nms=wrapper.nms,
        score_thr=float(t.score_thr),
        nms_iou=float(t.nms_iou),
        nms_pre=int(t.nms_pre),
        max_per_img=int(t.max_per_img),
        outputs=outputs,
        bin_width=float(m.head.box.bin_width) if wrapper.dists else None,
        gfldet_version=__version__,
    )


def calibration_files(
    val_split: Any | None, calib_dir: str | Path | None, num: int, seed: int = 0
) -> list[Path]:
    """The images to calibrate on: `num` of them (a seeded sample, in a stable order) from
    `calib_dir` (searched recursively) when given, else from the config's val split
    (`val_split`: the cfg.data.val section). Raises ValueError when there are none."""
    if num < 1:
        raise ValueError(f"--calib-num must be >= 1, got {num}")
    if calib_dir is not None:
        from .infer import expand_inputs

        if not Path(calib_dir).is_dir():
            raise NotADirectoryError(f"--calib {calib_dir}: not a folder of images")
        files, where = expand_inputs([str(calib_dir)]), f"--calib {calib_dir}"
    elif val_split is not None:
        from ..data.loader import build_dataset

        ds = build_dataset(val_split, train=False, skip_bad=True)
        files = [ds.img_dir / ds.coco.imgs[i]["file_name"] for i in ds.img_ids]
        where = f"data.val ({val_split.ann_file})"
    else:
        raise ValueError("int8 calibration needs images: give --calib DIR")
    if not files:
        raise ValueError(f"{where}: no images to calibrate int8 on")
    if len(files) > num:
        files = sorted(random.Random(seed).sample(files, num), key=str)
    return list(files)


def default_img_size(cfg: Any) -> tuple[int, int]:
    """(H, W) for the config's test scale, landscape, padded to size_divisor: e.g. 800 x 1344."""
    d = cfg.data
    div = d.size_divisor
    short, long = min(d.val.img_scale), max(d.val.img_scale)
    return -(-short // div) * div, -(-long // div) * div


def input_size(cfg: Any, img_size: Sequence[int] | None) -> tuple[int, int]:
    """--img-size (H, W), or default_img_size; raises ValueError unless both are positive
    multiples of data.size_divisor, the padding the model was trained with."""
    size = tuple(img_size) if img_size else default_img_size(cfg)
    div = cfg.data.size_divisor
    if len(size) != 2 or any(v <= 0 or v % div for v in size):
        raise ValueError(
            f"--img-size {' '.join(map(str, size))}: height and width must be positive "
            f"multiples of data.size_divisor ({div}), the padding the model was trained with"
        )
    return size


def check_onnx(
    path: str | Path,
    model: GFL,
    img_size: tuple[int, int],
    nms: bool = False,
    input_dtype: str = "uint8",
    seed: int = 0,
) -> dict[str, float]:
    """Runs the ONNX file with onnxruntime and the PyTorch model on the same random image.

    Returns the largest difference per output name, |onnx - torch| / max(1, |torch|): absolute
    for scores in [0, 1], relative for box coordinates in pixels (float32 keeps ~7 digits, so a
    box edge at 500 px agrees to ~1e-4 px at best). Needs the optional onnxruntime package
    (`pip install "gfldet[onnx]"`).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            "checking an ONNX export needs onnxruntime: pip install 'gfldet[onnx]'"
        ) from None
    gen = torch.Generator().manual_seed(seed)
    h, w = img_size
    images = torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8)
    images = images.to(INPUT_DTYPES[input_dtype])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        ref = DecodedGFL(model.cpu(), img_size, nms)(images)
    diffs = {}
    for out, a, b in zip(session.get_outputs(), got, ref, strict=True):
        b = b.numpy()
        if a.shape != b.shape:
            raise ValueError(f"{path}: output {out.name} has shape {a.shape}, PyTorch {b.shape}")
        err = abs(a.astype("float64") - b) / np.maximum(1.0, abs(b.astype("float64")))
        diffs[out.name] = float(err.max()) if a.size else 0.0
    return diffs


def _same_file(a: Path, b: Path) -> bool:
    """Whether writing `a` would write `b`: the same real path, or one file through links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: not the same file
        return False


def check_export_out(out: Path, inputs: Sequence[str | Path]) -> None:
    """Refuses an --out that is not a new or replaceable .onnx file: a folder, a name without
    the .onnx extension (a config, a _base_ of it or a checkpoint is never one), or any of
    `inputs` (compared by real path and by file identity, so links count)."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder: name the .onnx file to write")
    for inp in inputs:
        if _same_file(out, Path(inp)):
            raise ValueError(
                f"--out {out} is the input {inp}: refusing to write over it; name a new .onnx file"
            )
    if out.suffix.lower() != ".onnx":
        raise ValueError(
            f"--out {out}: name a .onnx file (the extension ONNX runtimes expect); a config or "
            "checkpoint is never written over"
        )


def export_checkpoint(
    cfg: Any,
    checkpoint: str | Path,
    out: str | Path,
    img_size: tuple[int, int] | None = None,
    input_dtype: str = "uint8",
    nms: bool = False,
    opset: int = 17,
    inputs: Sequence[str | Path] = (),
    echo: Callable[[str], None] = print,
    int8: bool = False,
    calib: str | Path | None = None,
    calib_num: int | None = None,
) -> dict[str, Any]:
    """`gfldet export`: the checkpoint's model (cfg's architecture) as an ONNX file at `out`,
    described by its metadata (classes and category ids from the checkpoint, the config's
    resize rule and post-processing: gfldet.deploy.metadata), then checked against PyTorch with
    onnxruntime when it is installed.

    img_size: (H, W), multiples of data.size_divisor (default: default_img_size(cfg)).
    inputs: the other files the export reads (the config and its _base_ files): `out` may be
    none of them, nor the checkpoint (check_export_out). Every option is checked before the
    model is loaded; the file is written atomically. echo receives the summary lines.
    int8: write the int8 version instead (gfldet.deploy.quantize: QDQ, per-channel),
    calibrated on calib_num images (default DEFAULT_CALIB_NUM) of the folder `calib`, or of
    the config's val split; then report how many of the fp32 model's detections the int8 one
    finds again on some of those images (detection_agreement).

    Returns {"out": Path, "img_size": (H, W), "diffs": check_onnx's result (of the fp32 graph),
    or None when onnxruntime is missing, "agreement": the int8 check (None without int8)}.
    """
    from ..deploy.quantize import DEFAULT_CALIB_NUM

    lo, hi = onnx_opset_range()
    if not lo <= opset <= hi:
        raise ValueError(
            f"--opset {opset}: torch {torch.__version__} exports ONNX opsets {lo} to {hi}"
        )
    if not int8 and (calib is not None or calib_num is not None):
        raise ValueError("--calib and --calib-num choose the int8 calibration images: add --int8")
    out = Path(out)
    check_export_out(out, [checkpoint, *inputs])
    size = input_size(cfg, img_size)
    files = []
    if int8:
        num = DEFAULT_CALIB_NUM if calib_num is None else calib_num
        files = calibration_files(None if calib else cfg.data.val, calib, num)
    _import_onnx("exporting to ONNX")
    make_output_dir(out.parent, "--out")
    model, state = load_trained_model(cfg, checkpoint, torch.device("cpu"))
    meta = {
        "classes": state.get("classes"),
        "cat_ids": state.get("cat_ids"),
        "img_scale": cfg.data.val.img_scale,
    }
    with tempfile.TemporaryDirectory(prefix="gfldet-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if int8 else out
        export_onnx(model, fp32, size, input_dtype, nms, opset, **meta)
        kind = "boxes, scores, labels after NMS" if nms else "boxes [1, A, 4], scores [1, A, C]"
        try:
            diffs = check_onnx(fp32, model, size, nms, input_dtype)
        except ImportError as e:
            echo(f"not checked: {e}")
            diffs = None
        agreement = None
        if int8:
            from ..deploy.quantize import quantize_onnx

            quantize_onnx(fp32, out, files, echo=echo)
            agreement = int8_agreement(fp32, out, files[:AGREEMENT_IMAGES])
    precision = "int8 (QDQ) " if int8 else ""
    echo(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {precision}input images [1, 3, "
        f"{size[0]}, {size[1]}] {input_dtype} RGB; outputs {kind}; its metadata_props "
        "describe it (classes, resize, post-processing)"
    )
    if diffs is not None:
        echo(
            f"onnxruntime vs PyTorch{' (the fp32 graph)' if int8 else ''}, max |difference|: "
            + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        )
    if agreement is not None:
        head = f"int8 vs fp32 on {agreement['images']} calibration images: "
        if agreement["reference"]:
            echo(
                f"{head}{agreement['matched']:.1%} of the {agreement['reference']} fp32 "
                f"detections scoring >= {agreement['score_thr']} found again (same class, "
                f"IoU >= {agreement['iou_thr']})"
            )
        else:
            echo(f"{head}no fp32 detection scores >= {agreement['score_thr']}: nothing to compare")
    return {"out": out, "img_size": size, "diffs": diffs, "agreement": agreement}


AGREEMENT_IMAGES = 8  # calibration images the int8 export compares with fp32 on


def int8_agreement(fp32: Path, int8: Path, files: Sequence[Path]) -> dict[str, Any]:
    """How many of the fp32 file's detections the int8 file finds again on `files`
    (gfldet.deploy.compare.detection_agreement at its defaults), both run in onnxruntime."""
    from ..deploy.compare import IOU_THR, SCORE_THR, detection_agreement
    from .onnx_predictor import OnnxPredictor

    ref, other = OnnxPredictor(fp32), OnnxPredictor(int8)
    a = [ref([f])[0] for f in files]
    b = [other([f])[0] for f in files]
    matched, total = detection_agreement(a, b)
    return {
        "images": len(files),
        "reference": total,
        "matched": matched / total if total else 1.0,
        "score_thr": SCORE_THR,
        "iou_thr": IOU_THR,
    }
