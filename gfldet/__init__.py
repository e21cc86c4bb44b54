"""gfldet: a Generalized Focal Loss object detector.

cfg = gfldet.load_config("configs/shapes_demo.yaml", overrides=["train.epochs=2"])
model = gfldet.build_model(cfg)              # needs model.num_classes set
predictor = gfldet.Predictor(cfg, "work_dirs/shapes_demo/latest.pth")
detections = predictor(["image.jpg"])      # boxes, scores, labels, category_ids, names
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import load_config

__all__ = ["GFL", "Predictor", "build_model", "load_config"]
__version__ = "0.1.0"

# Imported on first use, so that torch-free commands (config, data synth) start fast.
_LAZY = {
    "GFL": "gfldet.model.detector",
    "build_model": "gfldet.model.build",
    "Predictor": "gfldet.inference.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gfldet' has no attribute {name!r}")
