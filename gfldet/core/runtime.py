"""Run-time set-up shared by training, evaluation and inference: the device, seeds,
deterministic kernels, logging, and the class count a dataset or checkpoint implies."""

from __future__ import annotations

import logging
import logging.handlers
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import dist as gdist

if TYPE_CHECKING:  # the config layer sits above the jobs: types only, never imported here
    from ..config import Config
    from ..model.options import ModelOptions

log = logging.getLogger("gfldet")
LOG_FORMAT = ("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def setup_logging(work_dir: Path | None = None) -> None:
    """Console logging on the main rank. With `work_dir`, records are also kept in memory until
    `start_log_file(work_dir)` writes them (and all later ones) to WORK_DIR/train.log: nothing
    is written into a run's folder before the run is known to be valid."""
    log.handlers.clear()
    log.setLevel(logging.INFO if gdist.is_main() else logging.WARNING)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(*LOG_FORMAT))
    log.addHandler(console)
    if work_dir is not None and gdist.is_main():
        log.addHandler(logging.handlers.MemoryHandler(1 << 20, logging.CRITICAL + 1))


def start_log_file(work_dir: Path) -> None:
    """Sends the records kept since setup_logging, and every later one, to WORK_DIR/train.log."""
    if not gdist.is_main():
        return
    file = logging.FileHandler(work_dir / "train.log")
    file.setFormatter(logging.Formatter(*LOG_FORMAT))
    for h in list(log.handlers):
        if isinstance(h, logging.handlers.MemoryHandler):
            h.setTarget(file)
            h.flush()
            log.removeHandler(h)
    log.addHandler(file)


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_determinism(enabled: bool) -> None:
    """train.deterministic: deterministic kernels wherever torch has them. On the CPU training
    is then bitwise reproducible (and resumable); on CUDA the few ops without a deterministic
    kernel only warn."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_num_classes(cfg: Config, class_names: list[str], source: str) -> None:
    """cfg.model.num_classes from the dataset when unset; a mismatch is an error."""
    set_num_classes(cfg.model, class_names, source)


def set_num_classes(model: ModelOptions, class_names: list[str], source: str) -> None:
    """model.num_classes (a config's model section) from `class_names` (of the data or a
    checkpoint: `source`) when unset; ValueError when it is set to another number."""
    n = model.num_classes
    if n is None:
        model.num_classes = len(class_names)
    elif n != len(class_names):
        raise ValueError(f"model.num_classes is {n} but {source} has {len(class_names)} categories")
