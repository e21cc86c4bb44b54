"""The runtimes an exported ONNX file runs in: onnxruntime (the `onnx` extra) and OpenVINO (the
`openvino` extra), behind one call: `session(images) -> [outputs as numpy arrays]`.

    session = open_session("model.onnx", "onnxruntime", threads=4)
    boxes, scores = session(images)      # images: numpy [1, 3, H, W] of the file's input dtype
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ONNX_RUNTIMES = ("onnxruntime", "openvino")
INSTALL = {
    "onnxruntime": "pip install 'gfldet[onnx]'",
    "openvino": "pip install 'gfldet[openvino]'",
}


def runtime_installed(name: str) -> bool:
    """Whether the package of ONNX runtime `name` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


class OnnxRuntimeSession:
    """An ONNX file in onnxruntime's CPU execution provider (graph optimisations on: Conv +
    BatchNorm fusion, constant folding, and int8 kernels for QDQ files)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its optimiser's notes are not the user's
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: images})


class _SignalStack(ctypes.Structure):
    """stack_t, read and written back whole (the field order differs between systems)."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """The calling thread's alternate signal stack as it was before the block.

    OpenVINO installs a stack of its own in the thread that compiles a model and, when the model
    is freed, puts back the one it found. Models freed in another order than made leave the
    stack of a freed model installed, and the next signal the process handles (a Ctrl-C: Python
    handles signals on that stack) crashes it. Putting the stack back after compiling makes
    every model find, and put back, the original one. Linux and macOS; elsewhere a no-op."""
    libc = ctypes.CDLL(None) if sys.platform != "win32" else None
    if libc is None or not hasattr(libc, "sigaltstack"):
        yield
        return
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for the CPU, latency-optimised. OpenVINO runs the int8
    QDQ files of `gfldet export --int8` with its own int8 kernels."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        with keep_signal_stack():
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
            self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer([images])
        # The request reuses its buffers on the next call: copy.
        return [np.array(result[o]) for o in self.compiled.outputs]


SESSIONS = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVinoSession}


def open_session(path: str | Path, runtime: str = "onnxruntime", threads: int | None = None) -> Any:
    """An ONNX file ready to run in `runtime` (ONNX_RUNTIMES). Raises ValueError for an
    unknown runtime and ImportError, naming the pip command, when its package is missing."""
    if runtime not in SESSIONS:
        raise ValueError(
            f"runtime {runtime!r} does not run ONNX files: choose one of {', '.join(SESSIONS)}"
        )
    if not runtime_installed(runtime):
        raise ImportError(f"runtime {runtime} is not installed: {INSTALL[runtime]}")
    return SESSIONS[runtime](path, threads)
