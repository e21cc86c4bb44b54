"""Checkpoints: atomic writes, safe loads (weights_only=True), clear errors, RNG states."""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .files import atomic_open, torch_load_safely


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Writes to a temp file in the same folder, then renames: a crash mid-write (or Ctrl-C,
    or a full disk) leaves the previous file at `path` intact."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def link_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Atomically makes `dst` hold the same bytes as `src` (e.g. latest.pth <- epoch_12.pth).

    A hard link costs no disk space or time; where links are not supported it is a copy. Either
    way a new name is built beside `dst` and renamed over it, so `dst` is never half-written.
    Deleting `src` later leaves `dst` intact.
    """
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prune_checkpoints(folder: str | Path, keep_last: int, up_to: int | None = None) -> list[Path]:
    """Deletes all but the `keep_last` newest epoch_N.pth files in `folder` (0 keeps all).

    Only epoch_N.pth files with N <= `up_to` (the epoch just saved) are candidates: those of
    later epochs were written by this run before it was resumed from an earlier epoch, and are
    left alone. latest.pth is never deleted. Returns the deleted paths.
    """
    if keep_last <= 0:
        return []
    numbered = []
    for p in Path(folder).glob("epoch_*.pth"):
        m = re.fullmatch(r"epoch_(\d+)\.pth", p.name)
        if m and (up_to is None or int(m.group(1)) <= up_to):
            numbered.append((int(m.group(1)), p))
    old = [p for _, p in sorted(numbered)[:-keep_last]]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states, as plain types and tensors
    that `torch.load(weights_only=True)` accepts."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restores what `rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint without executing code from it (weights_only=True).

    Returns a dict with at least "model" (a state dict). A bare state dict is accepted too.
    Raises ValueError (one line, naming the file) when the file holds something else, or when
    its "model" / "ema" entries are not state dicts (names -> tensors) or "classes" is not a
    list of names: such a file would otherwise fail later, deep inside the model's loading.
    """
    path = Path(path)
    state = torch_load_safely(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    if "model" not in state:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            state = {"model": state}
        else:
            raise ValueError(f"{path}: not a gfldet checkpoint (no 'model' entry)")
    for key in ("model", "ema"):
        if key in state and (problem := _not_a_state_dict(state[key])):
            raise ValueError(f"{path}: not a gfldet checkpoint: its '{key}' entry {problem}")
    classes = state.get("classes")
    if classes is not None and not (
        isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(
            f"{path}: not a gfldet checkpoint: its 'classes' entry is not a list of names "
            f"(holds a {type(classes).__name__})"
        )
    return state


def _not_a_state_dict(weights: Any) -> str | None:
    """Why `weights` is not a state dict (names -> tensors), or None when it is one."""
    if not isinstance(weights, dict):
        return f"is a {type(weights).__name__}, not a state dict of tensors"
    for k, v in weights.items():
        if not isinstance(k, str):
            return f"has a key {k!r} that is not a tensor name (a state dict maps names to tensors)"
        if not isinstance(v, torch.Tensor):
            return f"maps {k[:60]!r} to a {type(v).__name__}, not a tensor (not a state dict)"
    return None


def rename_legacy_keys(weights: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints of gfldet 0.1 named the neck `fpn`: their keys, renamed as the model's."""
    if any(k.startswith("fpn.") for k in weights) and not any(
        k.startswith("neck.") for k in weights
    ):
        return {("neck." + k[4:] if k.startswith("fpn.") else k): v for k, v in weights.items()}
    return weights


def load_model_weights(
    model: nn.Module, state: dict[str, Any], path: str | Path, key: str = "model"
) -> None:
    """Strictly loads state[key] ("model", or "ema" for the averaged weights) into model; a
    mismatch names a few keys and shapes."""
    weights = rename_legacy_keys(state[key])
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
