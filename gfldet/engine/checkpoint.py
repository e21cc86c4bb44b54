"""Checkpoints: atomic writes, safe loads (weights_only=True), clear errors."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Writes to a temp file in the same folder, then renames: a crash mid-write (or Ctrl-C)
    leaves the previous file at `path` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint without executing code from it (weights_only=True).

    Returns a dict with at least "model" (a state dict). A bare state dict is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: refused to load: it is not a plain checkpoint of tensors ({first})"
        ) from None
    except Exception as e:  # noqa: BLE001 - the unpickler raises many types on junk input
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    if "model" not in state:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise ValueError(f"{path}: not a gfldet checkpoint (no 'model' entry)")
    return state


def load_model_weights(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Strictly loads state["model"] into model; a mismatch names a few keys and shapes."""
    weights = state["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{name}: {', '.join(keys[:3])}{more}")
        raise ValueError(
            f"{path}: checkpoint does not match the model of this config; " + "; ".join(parts)
        )
    model.load_state_dict(weights)
