"""File helpers: writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON (readable by any parser)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Like open(path, mode) for writing, but through a temp file in the same folder that
    replaces `path` only once the block completes: readers (or a crash mid-write) never see a
    truncated file. The file gets the permissions a plain open() would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash never leaves it empty
        umask = os.umask(0)  # mkstemp makes 0600 files; give 0666 & ~umask like open()
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_output_dir(folder: str | Path, option: str = "--out-dir") -> Path:
    """Creates `folder` (where `option`'s output goes) or raises a one-line PermissionError
    saying why it cannot: before the work, so that a long run never ends on a folder it cannot
    write."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"{option}: cannot create output folder {folder}: {e.strerror}"
        ) from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{option}: output folder is not writable: {folder}")
    return folder


def write_json_atomic(obj: Any, path: str | Path, indent: int | None = None) -> None:
    """Write JSON atomically (see atomic_open); NaN/inf become null (strict JSON)."""
    with atomic_open(path) as f:
        json.dump(json_safe(obj), f, indent=indent)


def write_yaml_atomic(obj: dict, path: str | Path) -> None:
    """Writes a plain dict as YAML, atomically (see atomic_open), keys in their order."""
    import yaml

    with atomic_open(path) as f:
        yaml.safe_dump(obj, f, sort_keys=False)


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
    import torch  # here, so that this module stays importable without torch

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
