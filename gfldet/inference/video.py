"""Detection on videos and image sequences: the video half of `gfldet infer`.

    predictor = gfldet.Predictor(cfg, "work_dirs/shapes_demo/latest.pth")
    summary = infer_video(predictor, "clip.mp4", "out/clip.mp4", every=2)
    # out/clip.mp4: every input frame, annotated; out/clip.predictions.jsonl: one line per
    # predicted frame

Sources are read with OpenCV's ``VideoCapture``: video files through its FFmpeg backend, and
printf-style image-sequence patterns (``frames/img_%06d.jpg``) through its image-sequence
backend (CAP_IMAGES), which starts at file number 0 or 1.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from ..core.draw import draw_detections
from ..core.files import json_safe
from ..core.records import prediction_record
from ..data.coco import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from .predictor import Predictor

log = logging.getLogger("gfldet")

# Extensions read as videos (lower-case). Anything FFmpeg demuxes works; these are the ones
# routed to infer_video rather than to the image path.
VIDEO_EXTS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)

# Output container -> FourCC. All of these were written and read back by opencv-python-headless'
# FFmpeg build. H.264 ("avc1") is not in it (no encoder), so .mp4 gets MPEG-4 Part 2.
WRITE_FOURCC = {
    ".mp4": "mp4v",
    ".m4v": "mp4v",
    ".mov": "mp4v",
    ".mkv": "mp4v",
    ".avi": "MJPG",
    ".webm": "VP80",
}

DEFAULT_FPS = 25.0  # when the source reports no frame rate (image sequences, some containers)
MAX_BUFFERED_FRAMES = 64  # batching never holds more decoded frames than this

# Exactly one %d / %0Nd placeholder and no other '%': the patterns CAP_IMAGES reads.
_SEQ_PLACEHOLDER = re.compile(r"%0?\d*d")


def is_video(path: str | Path) -> bool:
    """True when ``path`` has a video extension (VIDEO_EXTS, any case).

    By name only: a missing file still counts, so that it reaches infer_video and fails there
    with "cannot open video ..." rather than as an unmatched image.
    """
    return Path(path).suffix.lower() in VIDEO_EXTS


def _is_pattern(pattern: str) -> bool:
    """The form of an image-sequence pattern, whether or not its frames exist."""
    return (
        pattern.count("%") == 1
        and _SEQ_PLACEHOLDER.search(pattern) is not None
        and Path(pattern).suffix.lower() in IMAGE_EXTENSIONS
    )


def is_image_sequence(pattern: str) -> bool:
    """True for a printf-style image-sequence pattern whose first frame exists.

    The pattern must hold exactly one ``%d`` or ``%0Nd`` (e.g. ``frames/img_%06d.jpg``), no
    other ``%``, and an image extension; its first frame is file number 0 or 1, as OpenCV's
    image-sequence reader starts at either.
    """
    pattern = str(pattern)
    return _is_pattern(pattern) and any(Path(pattern % i).is_file() for i in (0, 1))


def split_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Splits `gfldet infer` inputs into (videos and image-sequence patterns, the rest).

    The rest (image files, folders, image globs) goes to infer.expand_inputs. Videos are
    recognised by extension (a missing one included, so that it fails as a missing video);
    patterns by their form (one %d / %0Nd, image extension), so that a pattern whose frames are
    missing fails as such. A glob contributes its video matches here, and is also kept in the
    rest when it matches anything else. Folders are searched for images only. Order is kept;
    repeats are dropped.
    """
    videos: list[str] = []
    rest: list[str] = []
    for inp in inputs:
        if Path(inp).exists():  # a file or folder, even one whose name holds a '%' or a '*'
            (videos if is_video(inp) else rest).append(inp)
        elif _is_pattern(inp):
            videos.append(inp)
        elif any(c in inp for c in "*?["):
            hits = sorted(glob.glob(inp, recursive=True))
            found = [h for h in hits if is_video(h) and Path(h).is_file()]
            videos += found
            if not hits and is_video(inp):
                videos.append(inp)  # `clips/*.mp4` matching nothing: "video file not found"
            elif not found or len(found) < len(hits):
                rest.append(inp)
        else:
            (videos if is_video(inp) else rest).append(inp)
    return list(dict.fromkeys(videos)), rest


def video_output_path(source: str | Path, out_dir: str | Path) -> Path:
    """Where ``gfldet infer`` writes the annotated video of ``source``: ``out_dir/<name>.mp4``.

    <name> is the video's stem; for an image-sequence pattern, the file-name part without its
    placeholder (``frames/img_%06d.jpg`` -> ``img``), or the folder name when nothing is left
    (``frames/%06d.jpg`` -> ``frames``). Callers still make names unique across inputs.
    """
    src = Path(source)
    stem = src.stem
    if "%" in stem:
        stem = _SEQ_PLACEHOLDER.sub("", stem).strip("_-. ") or src.parent.name or "frames"
    return Path(out_dir) / f"{stem}.mp4"


def _open_source(source: str | Path) -> cv2.VideoCapture:
    src = str(source)
    if "%" in src:
        if not is_image_sequence(src):
            raise FileNotFoundError(
                f"image sequence {src}: no first frame ({Path(src % 0).name} or "
                f"{Path(src % 1).name})"
                if _is_pattern(src)
                else f"not an image-sequence pattern (one %d or %0Nd, image extension): {src}"
            )
        # CAP_IMAGES rather than FFmpeg's image2 demuxer: it reads frames of different sizes
        # and does not invent a frame rate.
        return cv2.VideoCapture(src, cv2.CAP_IMAGES)
    if not Path(src).is_file():
        raise FileNotFoundError(f"video file not found: {src}")
    return cv2.VideoCapture(src)


def _as_bgr8(frame: np.ndarray) -> np.ndarray:
    """Frames as 8-bit 3-channel BGR (VideoCapture already converts most; be safe)."""
    if frame.dtype != np.uint8:
        frame = cv2.convertScaleAbs(frame, alpha=255.0 / 65535.0 if frame.dtype == np.uint16 else 1)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links and symlinks
    except OSError:
        pass
    return a.resolve() == b.resolve()


def infer_video(
    predictor: Predictor,
    source: str | Path,
    out_path: str | Path,
    every: int = 1,
    score_thr: float = 0.3,
    show_uncertainty: bool = False,
    progress: bool = True,
    batch_size: int = 1,
    jsonl_path: str | Path | None = None,
    fourcc: str | None = None,
) -> dict[str, Any]:
    """Runs ``predictor`` on a video or image sequence; writes an annotated video and a JSONL.

    source: a video file, or an image-sequence pattern such as ``frames/img_%06d.jpg``.
    every: predict frames 0, every, 2·every, ... (``every >= 1``).
    out_path: the annotated video, at the source's frame rate (DEFAULT_FPS = 25 when the source
        reports none: then ``summary["fps_assumed"]`` is True) and the first frame's size. Every
        input frame is written; a frame that was not predicted (``every > 1``) is drawn with the
        most recent predicted frame's detections, so that the output plays smoothly. Frames of
        another size than the first (image sequences can have them) are drawn at their own
        size, then stretched to the first frame's size for the writer
        (``summary["resized"]`` counts them). The codec follows out_path's extension
        (WRITE_FOURCC; ``fourcc`` overrides it, e.g. "avc1" where the OpenCV build has H.264).
    jsonl_path: default ``<out_path without extension>.predictions.jsonl``, beside the video.
        One line per *predicted* frame, ``{"frame": i, "time_s": i / fps, "detections": [...]}``
        where i counts frames read from 0 and each detection is a prediction_record one
        (bbox_xyxy in that frame's pixels, score, category_id, category_name, and edge_std /
        edge_top2 [4] for models with edge distributions), score >= score_thr.
    show_uncertainty: also draw ±std bands along each box edge (needs model.head.box general).
    batch_size: predicted frames per predictor call. The frames between them wait in memory
        until their batch is predicted, at most MAX_BUFFERED_FRAMES frames in all.

    Each JSONL line is flushed once its frame is written, and the writer is released in a
    ``finally:``, so a crash or Ctrl-C leaves a playable video and a valid JSONL of every
    finished frame (a batch in flight is lost).

    Returns {"frames": frames read, "predicted": frames predicted, "fps_in": the output's
    frame rate, "fps_assumed": bool, "fps_processed": frames read per second of wall time,
    "video": out_path, "jsonl": jsonl path, "detections": detections written, "resized": int}.

    Raises ValueError for every < 1, batch_size < 1, an output extension without a codec, an
    output that is the source, --show-uncertainty on a model without distributions, or a
    source OpenCV cannot decode; FileNotFoundError for a missing source; OSError for an
    output folder that cannot be created or a video writer that cannot be opened.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1 (predict every N-th frame), got {every}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    ext = out_path.suffix.lower()
    if fourcc is None:
        if ext not in WRITE_FOURCC:
            raise ValueError(
                f"cannot write video {out_path}: no codec for {ext or 'no extension'!r}; "
                f"use one of {', '.join(sorted(WRITE_FOURCC))}"
            )
        fourcc = WRITE_FOURCC[ext]
    if len(fourcc) != 4:
        raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
    jsonl = (
        Path(jsonl_path)
        if jsonl_path is not None
        else out_path.with_name(f"{out_path.stem}.predictions.jsonl")
    )
    for out in (out_path, jsonl):
        if "%" not in str(source) and _same_file(out, Path(source)):
            raise ValueError(f"output {out} is the input video {source}: refusing to overwrite it")
    box = predictor.model.head.box
    if show_uncertainty and not box.has_distributions:
        raise ValueError(
            f"show_uncertainty needs edge distributions (model.head.box: general); "
            f"this model's box representation is {box.name!r}"
        )

    cap = _open_source(source)
    writer: cv2.VideoWriter | None = None
    f: IO[str] | None = None
    bar = None
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            raise ValueError(
                f"cannot read video {source}: OpenCV could not decode it "
                f"(codec not supported by this OpenCV build?)"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        fps_assumed = not (math.isfinite(fps) and fps > 0)
        if fps_assumed:
            log.warning("%s reports no frame rate: writing %g fps", source, DEFAULT_FPS)
            fps = DEFAULT_FPS
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        total = int(count) if math.isfinite(count) and count > 0 else None

        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            jsonl.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create output folder for {out_path}: {e}") from None
        frame = _as_bgr8(frame)
        height, width = frame.shape[:2]
        writer = cv2.VideoWriter(
            str(out_path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height)
        )
        if not writer.isOpened():
            raise OSError(
                f"cannot write video {out_path}: OpenCV could not open a {fourcc!r} writer for "
                f"{ext or 'this extension'} (codec not in this OpenCV build, or not writable?)"
            )
        # Not atomic_open: the lines must reach the disk as frames finish, not at the end.
        f = open(jsonl, "w", encoding="utf-8")  # noqa: SIM115  (closed in the finally)
        bar = tqdm(total=total, desc=Path(str(source)).name, unit="frame", disable=not progress)

        stats = {"predicted": 0, "detections": 0, "resized": 0}
        last: dict | None = None  # detections drawn on the frames that follow
        pending: list[tuple[int, np.ndarray, bool]] = []  # (index, BGR frame, predict it?)

        def flush() -> None:
            nonlocal last
            todo = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for _, bgr, pred in pending if pred]
            dets = iter(predictor(todo) if todo else [])
            for index, bgr, pred in pending:
                if pred:
                    det = next(dets)  # edge_std in frame pixels (Predictor)
                    rec = prediction_record(
                        source, bgr.shape, det, predictor.cat_ids, predictor.class_names, score_thr
                    )
                    line = {"frame": index, "time_s": index / fps, "detections": rec["detections"]}
                    f.write(json.dumps(json_safe(line)) + "\n")
                    f.flush()  # a crash or Ctrl-C keeps every finished frame's line
                    stats["predicted"] += 1
                    stats["detections"] += len(rec["detections"])
                    last = det
                drawn = bgr
                if last is not None:
                    drawn = draw_detections(
                        bgr, last["boxes"], last["scores"], last["labels"],
                        predictor.class_names, score_thr,
                        edge_std=last.get("edge_std") if show_uncertainty else None,
                    )  # fmt: skip
                if drawn.shape[:2] != (height, width):
                    drawn = cv2.resize(drawn, (width, height), interpolation=cv2.INTER_AREA)
                    stats["resized"] += 1
                writer.write(drawn)
            pending.clear()

        start = time.perf_counter()
        n_read, n_batch = 0, 0
        while ok:
            frame = _as_bgr8(frame)
            predict = n_read % every == 0
            pending.append((n_read, frame, predict))
            n_batch += predict
            n_read += 1
            bar.update(1)
            # n_batch == 0: no prediction pending, so the frame can be drawn and written now.
            if n_batch in (0, batch_size) or len(pending) >= MAX_BUFFERED_FRAMES:
                flush()
                n_batch = 0
            ok, frame = cap.read()
        flush()
        elapsed = max(time.perf_counter() - start, 1e-9)
    finally:
        # Release even on Ctrl-C: the container gets its index and stays playable.
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.release()
        if f is not None:
            f.close()
        cap.release()
    return {
        "frames": n_read,
        "predicted": stats["predicted"],
        "fps_in": fps,
        "fps_assumed": fps_assumed,
        "fps_processed": n_read / elapsed,
        "video": str(out_path),
        "jsonl": str(jsonl),
        "detections": stats["detections"],
        "resized": stats["resized"],
    }
