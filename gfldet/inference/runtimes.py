"""Which runtime runs a detector, and the predictor for each: `gfldet infer --runtime`.

    torch         the PyTorch model, prepared (BatchNorm folded, channels_last), float32
    torch-bf16    the same under bfloat16 autocast: offered only where the CPU computes bf16
                  (AMX / AVX512-BF16) or on a GPU; elsewhere it is emulated and slower
    onnxruntime   ONNX graphs in onnxruntime (the `onnx` extra)
    openvino      ONNX graphs in OpenVINO (the `openvino` extra)

A checkpoint runs in the ONNX runtimes as graphs exported on the fly, one per padded input size
met (CheckpointGraphs): each image is resized and padded exactly as PyTorch does it, so the
detections are PyTorch's up to float rounding. An exported .onnx file runs in the ONNX
runtimes only (gfldet.inference.onnx_predictor).

`auto` picks, on a CPU, the first available of AUTO_ORDER, the order of the latencies measured
in docs/deploy.md: for fp32 graphs (a checkpoint's, or an fp32 file) onnxruntime, then
OpenVINO, then PyTorch; for int8 files OpenVINO, then onnxruntime (`gfldet benchmark` measures
them on the user's machine, where another order may win). A checkpoint's graphs are exported
with the `onnx` package, which it then needs as well. A checkpoint must first be
exported (seconds per input size), which only a long run repays: with a checkpoint,
auto picks an ONNX runtime for runs of at least AUTO_MIN_IMAGES images or with a video, and
PyTorch for shorter ones. On a GPU, auto is PyTorch.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.machine import has_bf16
from ..deploy.sessions import INSTALL, ONNX_RUNTIMES, runtime_installed

log = logging.getLogger("gfldet")

RUNTIMES = ("auto", "torch", "torch-bf16", "onnxruntime", "openvino")
AUTO_ORDER = {"fp32": ("onnxruntime", "openvino", "torch"), "int8": ("openvino", "onnxruntime")}
# Images from which exporting a checkpoint's graphs pays off. An export (2.2 s for the real-time
# model at 320², 13.5 s for R-50 at 800x1216, one thread: docs/deploy.md) is won back over tens
# of images of one size; a run meets one graph per padded size, so the threshold leaves room for
# many sizes.
AUTO_MIN_IMAGES = 500


def runtime_status(
    name: str, device: torch.device | None = None, onnx_only: bool = False
) -> str | None:
    """None when runtime `name` can run here, else why not (one line, with what to do).
    onnx_only: for an exported file (a checkpoint must be exported first)."""
    device = device or torch.device("cpu")
    if name == "torch":
        return None
    if name == "torch-bf16":
        if device.type == "cuda":
            return None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16"
        if not has_bf16():
            return (
                "this CPU has no bfloat16 instructions (AMX / AVX512-BF16): bf16 would be "
                "emulated, slower than float32"
            )
        return None
    if name in ONNX_RUNTIMES:
        if device.type != "cpu":
            return f"{name} runs on the CPU: the model's device is {device} (set device=cpu)"
        if not runtime_installed(name):
            return f"not installed: {INSTALL[name]}"
        if not onnx_only and not runtime_installed("onnx"):
            return f"exporting a checkpoint to it needs the onnx package: {INSTALL['onnxruntime']}"
        return None
    raise ValueError(f"--runtime {name!r}: choose one of {', '.join(RUNTIMES)}")


def available_runtimes(device: torch.device | None = None, onnx_only: bool = False) -> list[str]:
    """The runtimes that can run here (RUNTIMES less auto), in RUNTIMES' order."""
    names = ONNX_RUNTIMES if onnx_only else RUNTIMES[1:]
    return [n for n in names if runtime_status(n, device, onnx_only) is None]


def choose_runtime(
    requested: str,
    device: torch.device | None = None,
    onnx_only: bool = False,
    long_run: bool = True,
    precision: str = "fp32",
) -> tuple[str, str]:
    """(runtime, why) for --runtime `requested`: auto resolved (see the module docstring;
    long_run: whether a checkpoint's run is long enough to repay exporting it; precision: an
    exported file's, fp32 or int8), any other checked. Raises ValueError (unknown, or not for
    this model) or ImportError (not installed) naming what to do."""
    device = device or torch.device("cpu")
    if requested not in RUNTIMES:
        raise ValueError(f"--runtime {requested!r}: choose one of {', '.join(RUNTIMES)}")
    if requested == "auto":
        if device.type != "cpu" and not onnx_only:
            return "torch", f"auto: the model's device is {device}"
        if not onnx_only and not long_run:
            return "torch", (
                f"auto: a run under {AUTO_MIN_IMAGES} images without video does not repay "
                "exporting the checkpoint to an ONNX runtime"
            )
        ranked = AUTO_ORDER["int8" if onnx_only and precision == "int8" else "fp32"]
        order = [n for n in ranked if not onnx_only or n in ONNX_RUNTIMES]
        for name in order:
            if runtime_status(name, device, onnx_only) is None:
                return name, f"auto: the fastest available on CPU, of {' > '.join(order)}"
        raise ImportError(f"no runtime for ONNX files is installed: {INSTALL['onnxruntime']}")
    if onnx_only and requested not in ONNX_RUNTIMES:
        raise ValueError(
            f"--runtime {requested}: an .onnx file runs in {' or '.join(ONNX_RUNTIMES)} "
            "(PyTorch runtimes need --config and --checkpoint)"
        )
    why = runtime_status(requested, device, onnx_only)
    if why is not None:
        err = ImportError if "pip install" in why else ValueError
        raise err(f"--runtime {requested}: {why}")
    return requested, "requested"


class CheckpointGraphs:
    """A checkpoint's model run in an ONNX runtime with PyTorch's pre- and post-processing.

    Each image is resized as the PyTorch predictor does (data.val.img_scale) and padded to a
    multiple of data.size_divisor with the exact mean colour (0 after normalisation, as
    PyTorch's padding); the graph for that padded size is exported on first use (float32
    input, no NMS, with the edge distributions where the model has them) into a temporary
    folder and kept. Calls and results are gfldet.Predictor's.
    """

    def __init__(
        self,
        model: Any,
        class_names: list[str],
        cat_ids: list[int],
        img_scale: tuple[int, int],
        size_divisor: int,
        runtime: str,
        threads: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model.cpu().eval()
        self.class_names, self.cat_ids = list(class_names), [int(c) for c in cat_ids]
        self.img_scale, self.size_divisor = tuple(img_scale), int(size_divisor)
        self.runtime, self.threads = runtime, threads
        self.echo = echo or (lambda line: log.info("%s", line))
        self._tmp = tempfile.TemporaryDirectory(prefix="gfldet-graphs-")
        self._graphs: dict[tuple[int, int], Any] = {}

    @property
    def has_distributions(self) -> bool:
        return bool(self.model.head.box.has_distributions)

    @property
    def box_name(self) -> str:
        return str(self.model.head.box.name)

    def padded_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) of the graph that takes a width x height image: PyTorch's resize, padded."""
        from ..data.transforms import rescale_size

        new_w, new_h, _, _ = rescale_size(width, height, self.img_scale)
        d = self.size_divisor
        return -(-new_h // d) * d, -(-new_w // d) * d

    def graph(self, size: tuple[int, int]) -> Any:
        """The OnnxPredictor of the graph for input size (H, W), exported on first use."""
        if size not in self._graphs:
            from .export import export_onnx
            from .onnx_predictor import OnnxPredictor

            path = Path(self._tmp.name) / f"graph_{size[0]}x{size[1]}.onnx"
            self.echo(f"{self.runtime}: exporting the graph for input {size[0]}x{size[1]}")
            export_onnx(
                self.model,
                path,
                size,
                "float32",
                classes=self.class_names,
                cat_ids=self.cat_ids,
                img_scale=self.img_scale,
                dists=self.has_distributions,
            )
            self._graphs[size] = OnnxPredictor(path, self.runtime, self.threads)
        return self._graphs[size]

    def __call__(self, images: list[str | Path | np.ndarray]) -> list[dict]:
        from ..data.coco import load_image
        from .results import check_rgb_image

        results = []
        for k, im in enumerate(images):
            rgb = load_image(im) if isinstance(im, (str, Path)) else im
            check_rgb_image(rgb, k)
            size = self.padded_size(rgb.shape[1], rgb.shape[0])
            results.append(self.graph(size).detect(rgb))
        return results


def make_predictor(
    cfg: Any | None,
    checkpoint: str | Path | None,
    onnx: str | Path | None = None,
    runtime: str = "auto",
    threads: int | None = None,
    echo: Callable[[str], None] = print,
    long_run: bool = True,
) -> Any:
    """The predictor `gfldet infer` runs: for an exported file `onnx` (no cfg / checkpoint
    needed) an OnnxPredictor, else the checkpoint's model (cfg's architecture, on cfg.device)
    in `runtime` (RUNTIMES; auto: choose_runtime, with long_run). Prints the runtime chosen and
    why (echo). All predictors take the same calls and give the same results as
    gfldet.Predictor."""
    if onnx is not None:
        from ..deploy.metadata import read_metadata
        from .onnx_predictor import OnnxPredictor

        info = read_metadata(onnx)  # the file is read once: its precision picks the runtime
        name, why = choose_runtime(runtime, onnx_only=True, precision=info.precision)

        predictor = OnnxPredictor(onnx, name, threads, info)
        echo(f"runtime: {name} ({why}), {predictor.info.precision} graph {onnx}")
        return predictor
    if cfg is None or checkpoint is None:
        raise ValueError("infer: give --config and --checkpoint, or --onnx FILE")
    from ..core.runtime import resolve_device
    from .predictor import Predictor, load_trained_model

    device = resolve_device(cfg.device)
    name, why = choose_runtime(runtime, device, long_run=long_run)
    echo(f"runtime: {name} ({why})")
    if name in ("torch", "torch-bf16"):
        return Predictor(cfg, checkpoint, cfg.device, bf16=name == "torch-bf16")
    model, state = load_trained_model(cfg, checkpoint, torch.device("cpu"))
    n = model.num_classes
    return CheckpointGraphs(
        model,
        list(state.get("classes") or [f"class_{i}" for i in range(n)]),
        [int(c) for c in state.get("cat_ids") or range(n)],
        tuple(cfg.data.val.img_scale),
        cfg.data.size_divisor,
        name,
        threads,
        echo,
    )
