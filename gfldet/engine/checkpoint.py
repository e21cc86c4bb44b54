"""Checkpoints: atomic writes, safe loads (weights_only=True), clear errors, RNG states."""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def torch_load_safely(path: Path) -> Any:
    """torch.load(path, weights_only=True) with one-line errors naming the file: not a
    checkpoint at all, cut short, or holding pickled objects that could run code (refused)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (PK) or, in its legacy format, a pickle (protocol >= 2).
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise ValueError(
            f"{path}: not a checkpoint (not a file written by torch.save; it starts with {head!r})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = _ANSI.sub("", str(e))
        found = _GLOBAL.search(text)
        if found:
            raise ValueError(
                f"{path}: refused to load: it holds a pickled Python object ({found.group(1)}) "
                "that is not a tensor or a plain value, and loading it could run code. gfldet "
                "loads checkpoints with weights_only=True; if you trust the file, load it with "
                "plain torch and save its state dict."
            ) from None
        reason = " ".join(text.split())[:160]
        raise ValueError(f"{path}: not a readable checkpoint ({reason})") from None
    except Exception as e:  # noqa: BLE001 - the unpickler raises many types on junk input
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint without executing code from it (weights_only=True).

    Returns a dict with at least "model" (a state dict). A bare state dict is accepted too.
    """
    path = Path(path)
    state = torch_load_safely(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    if "model" not in state:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise ValueError(f"{path}: not a gfldet checkpoint (no 'model' entry)")
    return state


def load_model_weights(
    model: nn.Module, state: dict[str, Any], path: str | Path, key: str = "model"
) -> None:
    """Strictly loads state[key] ("model", or "ema" for the averaged weights) into model; a
    mismatch names a few keys and shapes."""
    weights = state[key]
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
