"""`gfldet infer`: images, videos and image sequences through a checkpoint, with the rules that
keep a user's files safe.

    summary = run_inference(cfg, "work_dirs/shapes_demo/latest.pth", ["photos/", "clip.mp4"],
                            "work_dirs/infer")

What the run writes, all directly in the output folder: ``<stem>.jpg`` per image and
``predictions.json`` (gfldet.inference.infer), ``<name>.mp4`` and
``<name>.predictions.jsonl`` per video or image sequence (gfldet.inference.video), and
``.gfldet-infer.json``, the list of the files infer wrote there (OutputLedger).

Before any work (before the model is loaded), the run refuses

- an input that lies in the output folder (named on the command line; inputs that a folder
  search or a glob finds there are left out instead, so that the run never reads its outputs);
- an output that is one of the inputs: the same real path, or the same file through a hard
  or symbolic link;
- an output path that holds a file this command did not write (a user's file, or one of its
  outputs changed since), unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.draw import DRAW_SCORE_THR
from ..core.files import make_output_dir, write_json_atomic
from .infer import expand_inputs, image_output_names, infer_images
from .runtimes import AUTO_MIN_IMAGES, make_predictor
from .video import (
    infer_video,
    jsonl_path_for,
    sequence_frames,
    split_inputs,
    video_output_path,
)

log = logging.getLogger("gfldet")

LEDGER_NAME = ".gfldet-infer.json"
MAX_LISTED = 3  # files an error message names before "..."


@dataclass
class InferencePlan:
    """What one run reads and writes, known before any work.

    videos: (source, annotated video, JSONL) per video or image-sequence input.
    images: the image inputs, and image_outputs the drawn copy of each.
    predictions: OUT_DIR/predictions.json when there are images, else None.
    """

    out_dir: Path
    videos: list[tuple[str, Path, Path]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    image_outputs: list[Path] = field(default_factory=list)
    predictions: Path | None = None

    @property
    def outputs(self) -> list[Path]:
        """Every file the run writes (the ledger aside), in the order it writes them."""
        videos = [p for _, video, jsonl in self.videos for p in (video, jsonl)]
        return videos + self.image_outputs + ([self.predictions] if self.predictions else [])

    def input_files(self) -> list[Path]:
        """Every file the run reads: images, videos and each frame of an image sequence."""
        files = list(self.images)
        for src, _, _ in self.videos:
            if "%" in src:
                files += sequence_frames(src)[1].values()
            elif Path(src).is_file():
                files.append(Path(src))
        return files


def plan_inference(inputs: Sequence[str], out_dir: str | Path) -> InferencePlan:
    """Expands `inputs` (image files, folders, globs, videos, image-sequence patterns) and names
    every output. Inputs in `out_dir` are left out or refused (see the module docstring); errors
    name the input (ValueError, FileNotFoundError)."""
    out_dir = Path(out_dir)
    videos, rest = split_inputs(list(inputs), exclude=out_dir)
    plan = InferencePlan(out_dir)
    plan.images = expand_inputs(rest, exclude=out_dir) if rest else []
    used: set[Path] = set()
    for src in videos:
        if "%" not in src and not Path(src).is_file():  # before any other video's long work
            raise FileNotFoundError(f"video file not found: {src}")
        out = video_output_path(src, out_dir)
        while out in used:  # two inputs of the same name
            out = out.with_name(out.stem + "_" + out.suffix)
        used.add(out)
        plan.videos.append((src, out, jsonl_path_for(out)))
    plan.image_outputs = [out_dir / name for name in image_output_names(plan.images)]
    plan.predictions = out_dir / "predictions.json" if plan.images else None
    return plan


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows links: the file that writing to `path` would change
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs_are_not_inputs(plan: InferencePlan, others: Sequence[str | Path] = ()) -> None:
    """Raises ValueError when an output path is one of the inputs (plan.input_files() and
    `others`, e.g. the checkpoint): the same real path, or the same file reached through a hard
    link or a symbolic link."""
    by_path: dict[str, Path] = {}
    by_id: dict[tuple[int, int], Path] = {}
    for f in [*plan.input_files(), *map(Path, others)]:
        by_path.setdefault(os.path.realpath(f), f)
        key = _file_id(f)
        if key is not None:
            by_id.setdefault(key, f)
    for out in plan.outputs:
        key = _file_id(out)
        inp = by_path.get(os.path.realpath(out)) or (by_id.get(key) if key else None)
        if inp is not None:
            raise ValueError(
                f"{out} is the input {inp} (the same file, through a link or another name): "
                "writing it would destroy the input; choose another --out-dir"
            )


class OutputLedger:
    """OUT_DIR/.gfldet-infer.json: the files `gfldet infer` wrote in OUT_DIR, each with its
    size and modification time then.

    A later run replaces a file without asking only while it is listed and unchanged: a file
    the user put there, or changed since, is theirs (see check_overwrites). The ledger is kept
    only in a folder where it is gfldet's own (a file of that name written by anything else is
    left alone, and then every existing output counts as the user's).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LEDGER_NAME
        self.files: dict[str, list[int]] = {}
        self.writable = True
        if not os.path.lexists(self.path):
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            ours = data.get("written_by") == "gfldet infer"
            self.files = {str(k): list(v) for k, v in data["files"].items()} if ours else {}
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            ours = False
        self.writable = ours

    @staticmethod
    def signature(path: Path) -> list[int] | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def wrote(self, path: Path) -> bool:
        """Whether `path` is a file infer wrote, unchanged since."""
        sig = self.signature(path)
        return sig is not None and self.files.get(path.name) == sig

    def record(self, outputs: Sequence[Path], before: dict[Path, list[int] | None]) -> None:
        """Lists the outputs this run wrote (changed since `before`), drops entries whose file
        is gone or changed, and writes the ledger (atomically). A failure to write it is a
        warning: the outputs are whole, the next run will only ask for --overwrite."""
        if not self.writable:
            return
        for path in outputs:
            sig = self.signature(path)
            if sig is not None and sig != before.get(path):
                self.files[path.name] = sig
        folder = self.path.parent
        self.files = {
            name: sig for name, sig in self.files.items() if self.signature(folder / name) == sig
        }
        try:
            write_json_atomic(
                {"written_by": "gfldet infer", "files": dict(sorted(self.files.items()))},
                self.path,
                indent=1,
            )
        except OSError as e:
            log.warning("could not record the files infer wrote in %s: %s", self.path, e)


def check_overwrites(plan: InferencePlan, ledger: OutputLedger) -> None:
    """Raises FileExistsError naming the first few output paths that hold a file infer did not
    write (or that changed since), so that nothing of the user's is replaced without
    --overwrite."""
    theirs = [p for p in plan.outputs if os.path.lexists(p) and not ledger.wrote(p)]
    if theirs:
        names = ", ".join(p.name for p in theirs[:MAX_LISTED])
        more = ", ..." if len(theirs) > MAX_LISTED else ""
        raise FileExistsError(
            f"--out-dir {plan.out_dir} already holds {len(theirs)} "
            f"{'file' if len(theirs) == 1 else 'files'} that infer would replace and did not "
            f"write ({names}{more}): give --overwrite to replace "
            f"{'it' if len(theirs) == 1 else 'them'}, or choose another --out-dir"
        )


def run_inference(
    cfg: Any | None,
    checkpoint: str | Path | None,
    inputs: Sequence[str],
    out_dir: str | Path,
    every: int = 1,
    batch_size: int = 4,
    score_thr: float | None = None,
    show_uncertainty: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    onnx: str | Path | None = None,
    runtime: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """`gfldet infer`: detects objects in images, videos and image sequences, and draws them.

    cfg: the loaded Config (model, model.test, data.val.img_scale, data.size_divisor, device,
    data.skip_bad_images), with `checkpoint`; or, instead of both, `onnx`: a file of `gfldet
    export`, whose metadata carries what the run needs. runtime: what runs the model
    (gfldet.inference.runtimes: auto, torch, torch-bf16, onnxruntime, openvino; the choice is
    printed); threads: the ONNX runtimes' threads (default: theirs). inputs: image files,
    folders (searched recursively), globs, video files and image-sequence patterns. every,
    batch_size: videos only (infer_video). score_thr: what is drawn and recorded (default
    DRAW_SCORE_THR). overwrite: replace files in out_dir that infer did not write. echo:
    receives one summary line per video and one for the images.

    Every check runs before the model is loaded (see the module docstring). Returns
    {"videos": [infer_video's summary per video], "images": infer_images' summary or None,
    "out_dir": out_dir}.
    """
    if score_thr is None:
        score_thr = DRAW_SCORE_THR
    if not (math.isfinite(score_thr) and 0 <= score_thr <= 1):
        raise ValueError(f"--score-thr must be a number in [0, 1], got {score_thr}")
    if every < 1:
        raise ValueError(f"--every must be >= 1 (predict every N-th frame), got {every}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not inputs:
        raise ValueError(
            "infer: give at least one image file, folder, glob, video or image sequence"
        )
    if onnx is not None and (cfg is not None or checkpoint is not None):
        raise ValueError(
            "infer: --onnx runs an exported file on its own: give it without --config and "
            "--checkpoint (its metadata holds the classes, resize and post-processing)"
        )
    if onnx is None and (cfg is None or checkpoint is None):
        raise ValueError("infer: give --config and --checkpoint, or --onnx FILE")
    out_dir = Path(out_dir)
    plan = plan_inference(inputs, out_dir)
    check_outputs_are_not_inputs(plan, [onnx if onnx is not None else checkpoint])
    ledger = OutputLedger(out_dir)
    if not overwrite:
        check_overwrites(plan, ledger)
    make_output_dir(out_dir)

    long_run = bool(plan.videos) or len(plan.images) >= AUTO_MIN_IMAGES
    predictor = make_predictor(cfg, checkpoint, onnx, runtime, threads, echo, long_run)
    if show_uncertainty and not predictor.has_distributions:
        raise ValueError(
            "--show-uncertainty needs edge distributions (model.head.box: general; an ONNX "
            f"file exported without them has none); this model's box representation is "
            f"{predictor.box_name!r}"
        )
    before = {p: OutputLedger.signature(p) for p in plan.outputs}
    summary: dict[str, Any] = {"videos": [], "images": None, "out_dir": out_dir}
    try:
        for src, video, jsonl in plan.videos:
            v = infer_video(
                predictor,
                src,
                video,
                every,
                score_thr,
                show_uncertainty,
                batch_size=batch_size,
                jsonl_path=jsonl,
            )
            summary["videos"].append(v)
            echo(format_video_summary(src, v))
        if plan.images:
            s = infer_images(
                predictor,
                plan.images,
                out_dir,
                score_thr,
                show_uncertainty,
                cfg.data.skip_bad_images if cfg is not None else False,
            )
            summary["images"] = s
            skipped = f", {s['skipped']} skipped as unreadable" if s["skipped"] else ""
            echo(
                f"{s['images']} images{skipped}, {s['detections']} detections "
                f"(score >= {score_thr}) -> {out_dir}"
            )
    finally:
        ledger.record(plan.outputs, before)
    return summary


def format_video_summary(source: str, v: dict[str, Any]) -> str:
    """The line `gfldet infer` prints for one video or image sequence."""
    missing = f"; {v['missing']} missing from the numbering, skipped" if v.get("missing") else ""
    assumed = f" (the source gives none: {v['fps_in']:g} assumed)" if v["fps_assumed"] else ""
    return (
        f"{source}: {v['frames']} frames ({v['predicted']} predicted{missing}), "
        f"{v['detections']} detections, {v['fps_processed']:.1f} frames/s -> {v['video']}"
        f"{assumed}, {v['jsonl']}"
    )
