"""Detection on videos and image sequences: the video half of `gfldet infer`.

    predictor = gfldet.Predictor(cfg, "work_dirs/shapes_demo/latest.pth")
    summary = infer_video(predictor, "clip.mp4", "out/clip.mp4", every=2)
    # out/clip.mp4: every input frame, annotated; out/clip.predictions.jsonl: one line per
    # predicted frame

Three parts: a frame source (FrameSource: VideoFileSource reads a video file with OpenCV's
``VideoCapture`` and its FFmpeg backend; ImageSequenceSource reads a printf-style pattern such as
``frames/img_%06d.jpg`` file by file, from number 0 or 1, through gaps), a sink
(AnnotatedVideoSink: the annotated video and the JSONL) and the loop between them
(infer_video: batches frames through the predictor and draws the detections).
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from ..core.draw import DRAW_SCORE_THR, draw_detections
from ..core.files import json_safe
from ..core.records import prediction_record
from ..data.coco import IMAGE_EXTENSIONS
from .infer import input_in_out_dir_error, is_within

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
MAX_NAMED_GAPS = 10  # the missing frame numbers a warning names

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


def split_inputs(inputs: list[str], exclude: Path | None = None) -> tuple[list[str], list[str]]:
    """Splits `gfldet infer` inputs into (videos and image-sequence patterns, the rest).

    The rest (image files, folders, image globs) goes to infer.expand_inputs. Videos are
    recognised by extension (a missing one included, so that it fails as a missing video);
    patterns by their form (one %d / %0Nd, image extension), so that a pattern whose frames are
    missing fails as such. A glob contributes its video matches here, and is also kept in the
    rest when it matches anything else. Folders are searched for images only. Order is kept;
    repeats are dropped.

    exclude: the output folder. As for images (infer.expand_inputs), a video or a pattern given
    by name that lies there is an error (ValueError), and the videos a glob finds there are
    left out, so that a run never reads its own outputs, nor writes over an input.
    """
    videos: list[str] = []
    rest: list[str] = []
    for inp in inputs:
        if Path(inp).exists():  # a file or folder, even one whose name holds a '%' or a '*'
            if is_video(inp):
                _refuse_in_out_dir(inp, Path(inp), exclude)
                videos.append(inp)
            else:
                rest.append(inp)
        elif _is_pattern(inp):
            _refuse_in_out_dir(inp, Path(inp).parent, exclude)
            videos.append(inp)
        elif any(c in inp for c in "*?["):
            hits = sorted(glob.glob(inp, recursive=True))
            found = [h for h in hits if is_video(h) and Path(h).is_file()]
            kept = [h for h in found if exclude is None or not is_within(Path(h), exclude)]
            videos += kept
            if not hits and is_video(inp):
                videos.append(inp)  # `clips/*.mp4` matching nothing: "video file not found"
            elif not kept or len(found) < len(hits):
                rest.append(inp)  # images, or nothing left: "no images matched"
        else:
            (videos if is_video(inp) else rest).append(inp)
    return list(dict.fromkeys(videos)), rest


def _refuse_in_out_dir(inp: str, path: Path, exclude: Path | None) -> None:
    if exclude is not None and is_within(path, exclude):
        raise input_in_out_dir_error(inp, exclude)


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


class FrameSource:
    """The frames of one input, in order: ``frames()`` yields (index, BGR uint8 frame).

    index is the frame's place in the input: the count of frames before it in a video, the
    file number minus the first one's in an image sequence (so a gap in the numbering shows as
    a jump). fps is None when the input states no frame rate; total is the number of frames
    when known; missing counts the numbers absent from an image sequence.
    """

    name: str
    fps: float | None = None
    total: int | None = None
    missing: int = 0

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the source holds (the decoder); safe to call twice."""


class VideoFileSource(FrameSource):
    """A video file, decoded by OpenCV's FFmpeg backend."""

    def __init__(self, path: str | Path) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        self.name = str(path)
        self._cap = cv2.VideoCapture(str(path))
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.total = int(count) if math.isfinite(count) and count > 0 else None

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        index = 0
        while self._cap.isOpened():
            ok, frame = self._cap.read()
            if not ok or frame is None:
                return
            yield index, _as_bgr8(frame)
            index += 1

    def close(self) -> None:
        self._cap.release()


def sequence_frames(pattern: str) -> tuple[int, dict[int, Path]]:
    """The frames of an image-sequence pattern: (first number, {number: file} in order).

    The first frame is file number 0, or 1 when there is no 0 (is_image_sequence); the last is
    the highest number present. Files are found by listing the folder, so that a gap in the
    numbering does not end the sequence.
    """
    if not is_image_sequence(pattern):
        raise FileNotFoundError(
            f"image sequence {pattern}: no first frame ({Path(pattern % 0).name} or "
            f"{Path(pattern % 1).name})"
            if _is_pattern(pattern)
            else f"not an image-sequence pattern (one %d or %0Nd, image extension): {pattern}"
        )
    first = 0 if Path(pattern % 0).is_file() else 1
    placeholder = _SEQ_PLACEHOLDER.search(pattern)
    prefix, suffix = pattern[: placeholder.start()], pattern[placeholder.end() :]
    found: dict[int, Path] = {}
    for hit in glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        try:
            number = int(hit[len(prefix) : len(hit) - len(suffix)])
        except ValueError:
            continue
        # Exactly the name the pattern gives this number (padding included), nothing else.
        if number >= first and pattern % number == hit and Path(hit).is_file():
            found[number] = Path(hit)
    return first, dict(sorted(found.items()))


class ImageSequenceSource(FrameSource):
    """A printf-style image-sequence pattern (``frames/img_%06d.jpg``), read file by file.

    Frames are decoded as OpenCV's image-sequence reader (CAP_IMAGES) decodes them
    (IMREAD_UNCHANGED, then 8-bit BGR), but a gap in the numbering does not end the sequence
    (CAP_IMAGES stops at the first missing file): the missing numbers are named in a warning
    and skipped, and the frames after them keep their place (index = number - first number).
    An image sequence states no frame rate.
    """

    def __init__(self, pattern: str) -> None:
        self.name = pattern
        self._first, self._files = sequence_frames(pattern)
        self.total = len(self._files)
        numbers = list(self._files)
        self.missing = numbers[-1] + 1 - self._first - len(numbers)
        if self.missing:
            gaps: list[int] = []
            for a, b in itertools.pairwise([self._first - 1, *numbers]):
                gaps += range(a + 1, min(b, a + 1 + MAX_NAMED_GAPS))
            shown = ", ".join(str(n) for n in gaps[:MAX_NAMED_GAPS])
            more = " ..." if self.missing > MAX_NAMED_GAPS else ""
            log.warning(
                "image sequence %s: %d frame(s) missing from the numbering (%s%s): skipped, "
                "the frames after them are read",
                pattern,
                self.missing,
                shown,
                more,
            )

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for number, path in self._files.items():
            frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if frame is None:
                raise ValueError(
                    f"cannot read frame {path} of image sequence {self.name}: not an image "
                    "OpenCV can decode (corrupt or truncated?)"
                )
            yield number - self._first, _as_bgr8(frame)


def open_source(source: str | Path) -> FrameSource:
    """A video file, or an image sequence when ``source`` holds a '%' placeholder."""
    return ImageSequenceSource(str(source)) if "%" in str(source) else VideoFileSource(source)


def _as_bgr8(frame: np.ndarray) -> np.ndarray:
    """Frames as 8-bit 3-channel BGR (VideoCapture already converts most; be safe)."""
    if frame.dtype != np.uint8:
        frame = cv2.convertScaleAbs(frame, alpha=255.0 / 65535.0 if frame.dtype == np.uint16 else 1)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class AnnotatedVideoSink:
    """Where one source's results go: the annotated video and its predictions.jsonl.

    The video is written at ``fps`` and ``size`` (W, H); a frame of another size is stretched
    to it (``resized`` counts them). Each JSONL line is flushed as it is written, and close()
    releases the writer, so that a crash or Ctrl-C leaves a playable video and a valid JSONL of
    every finished frame. An existing file at either path is unlinked first, so that a link
    there is replaced rather than written through.
    """

    def __init__(
        self, video: Path, jsonl: Path, fps: float, size: tuple[int, int], fourcc: str
    ) -> None:
        self.video, self.jsonl, self.size, self.resized = video, jsonl, size, 0
        self._file: IO[str] | None = None
        try:
            video.parent.mkdir(parents=True, exist_ok=True)
            jsonl.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create output folder for {video}: {e}") from None
        video.unlink(missing_ok=True)
        self._writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise OSError(
                f"cannot write video {video}: OpenCV could not open a {fourcc!r} writer for "
                f"{video.suffix.lower() or 'this extension'} (codec not in this OpenCV build, "
                "or not writable?)"
            )
        try:
            jsonl.unlink(missing_ok=True)
            # Not atomic_open: the lines must reach the disk as frames finish, not at the end.
            self._file = open(jsonl, "w", encoding="utf-8")  # noqa: SIM115  (closed in close())
        except BaseException:
            self._writer.release()
            raise

    def write_frame(self, bgr: np.ndarray) -> None:
        if bgr.shape[1::-1] != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
            self.resized += 1
        self._writer.write(bgr)

    def write_line(self, record: dict) -> None:
        self._file.write(json.dumps(json_safe(record)) + "\n")
        self._file.flush()  # a crash or Ctrl-C keeps every finished frame's line

    def close(self) -> None:
        # Release even on Ctrl-C: the container gets its index and stays playable.
        self._writer.release()
        if self._file is not None:
            self._file.close()


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links and symlinks
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _codec(out_path: Path, fourcc: str | None) -> str:
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
    return fourcc


def jsonl_path_for(out_path: str | Path) -> Path:
    """The default predictions file of an annotated video: ``<name>.predictions.jsonl``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.predictions.jsonl")


def infer_video(
    predictor: Predictor,
    source: str | Path,
    out_path: str | Path,
    every: int = 1,
    score_thr: float = DRAW_SCORE_THR,
    show_uncertainty: bool = False,
    progress: bool = True,
    batch_size: int = 1,
    jsonl_path: str | Path | None = None,
    fourcc: str | None = None,
) -> dict[str, Any]:
    """Runs ``predictor`` on a video or image sequence; writes an annotated video and a JSONL.

    source: a video file, or an image-sequence pattern such as ``frames/img_%06d.jpg``
        (open_source). A gap in a sequence's numbering is named in a warning and skipped;
        ``summary["missing"]`` counts the missing numbers.
    every: predict the frames whose index (see FrameSource) is 0, every, 2·every, ...
    out_path: the annotated video, at the source's frame rate (DEFAULT_FPS = 25 when the source
        reports none: then ``summary["fps_assumed"]`` is True) and the first frame's size. Every
        frame read is written; a frame that was not predicted (``every > 1``) is drawn with the
        most recent predicted frame's detections, so that the output plays smoothly. Frames of
        another size than the first (image sequences can have them) are drawn at their own
        size, then stretched to the first frame's size for the writer
        (``summary["resized"]`` counts them). The codec follows out_path's extension
        (WRITE_FOURCC; ``fourcc`` overrides it, e.g. "avc1" where the OpenCV build has H.264).
    jsonl_path: default ``<out_path without extension>.predictions.jsonl``, beside the video.
        One line per *predicted* frame, ``{"frame": i, "time_s": i / fps, "detections": [...]}``
        where i is the frame's index and each detection is a prediction_record one
        (bbox_xyxy in that frame's pixels, score, category_id, category_name, and edge_std /
        edge_top2 [4] for models with edge distributions), score >= score_thr.
    show_uncertainty: also draw ±std bands along each box edge (needs model.head.box general).
    batch_size: predicted frames per predictor call. The frames between them wait in memory
        until their batch is predicted, at most MAX_BUFFERED_FRAMES frames in all.

    A crash or Ctrl-C leaves a playable video and a valid JSONL of every finished frame (a
    batch in flight is lost): see AnnotatedVideoSink.

    Returns {"frames": frames read, "predicted": frames predicted, "missing": numbers missing
    from an image sequence, "fps_in": the output's frame rate, "fps_assumed": bool,
    "fps_processed": frames read per second of wall time, "video": out_path, "jsonl": jsonl
    path, "detections": detections written, "resized": int}.

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
    fourcc = _codec(out_path, fourcc)
    jsonl = Path(jsonl_path) if jsonl_path is not None else jsonl_path_for(out_path)
    for out in (out_path, jsonl):
        if "%" not in str(source) and _same_file(out, Path(source)):
            raise ValueError(f"output {out} is the input video {source}: refusing to overwrite it")
    if show_uncertainty and not predictor.has_distributions:
        raise ValueError(
            f"show_uncertainty needs edge distributions (model.head.box: general); "
            f"this model's box representation is {predictor.box_name!r}"
        )

    src = open_source(source)
    sink: AnnotatedVideoSink | None = None
    bar = None
    try:
        frames = src.frames()
        first = next(frames, None)
        if first is None:
            raise ValueError(
                f"cannot read video {source}: OpenCV could not decode it "
                f"(codec not supported by this OpenCV build?)"
            )
        fps, fps_assumed = src.fps, src.fps is None
        if fps is None:
            log.warning("%s reports no frame rate: writing %g fps", source, DEFAULT_FPS)
            fps = DEFAULT_FPS
        height, width = first[1].shape[:2]
        sink = AnnotatedVideoSink(out_path, jsonl, fps, (width, height), fourcc)
        bar = tqdm(total=src.total, desc=Path(str(source)).name, unit="frame", disable=not progress)
        loop = _AnnotateLoop(
            predictor, sink, str(source), fps, every, batch_size, score_thr, show_uncertainty
        )
        start = time.perf_counter()
        for index, frame in itertools.chain([first], frames):
            loop.add(index, frame)
            bar.update(1)
        loop.flush()
        elapsed = max(time.perf_counter() - start, 1e-9)
    finally:
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
        src.close()
    return {
        "frames": loop.read,
        "predicted": loop.predicted,
        "missing": src.missing,
        "fps_in": fps,
        "fps_assumed": fps_assumed,
        "fps_processed": loop.read / elapsed,
        "video": str(out_path),
        "jsonl": str(jsonl),
        "detections": loop.detections,
        "resized": sink.resized,
    }


class _AnnotateLoop:
    """The frames of one source through the predictor and into the sink, in batches.

    Frames wait until the batch of predicted frames they belong with is full (batch_size
    predicted frames, or MAX_BUFFERED_FRAMES frames in all); a frame that is not predicted is
    drawn with the latest detections before it.
    """

    def __init__(
        self,
        predictor: Predictor,
        sink: AnnotatedVideoSink,
        source: str,
        fps: float,
        every: int,
        batch_size: int,
        score_thr: float,
        show_uncertainty: bool,
    ) -> None:
        self.predictor, self.sink, self.source, self.fps = predictor, sink, source, fps
        self.every, self.batch_size, self.score_thr = every, batch_size, score_thr
        self.show_uncertainty = show_uncertainty
        self.read = self.predicted = self.detections = 0
        self.last: dict | None = None  # detections drawn on the frames that follow
        self.pending: list[tuple[int, np.ndarray, bool]] = []  # (index, BGR frame, predict it?)
        self.n_batch = 0

    def add(self, index: int, frame: np.ndarray) -> None:
        predict = index % self.every == 0
        self.pending.append((index, frame, predict))
        self.n_batch += predict
        self.read += 1
        # n_batch == 0: no prediction pending, so the frame can be drawn and written now.
        if self.n_batch in (0, self.batch_size) or len(self.pending) >= MAX_BUFFERED_FRAMES:
            self.flush()

    def flush(self) -> None:
        p = self.predictor
        todo = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for _, bgr, pred in self.pending if pred]
        dets = iter(p(todo) if todo else [])
        for index, bgr, pred in self.pending:
            if pred:
                det = next(dets)  # edge_std in frame pixels (Predictor)
                rec = prediction_record(
                    self.source, bgr.shape, det, p.cat_ids, p.class_names, self.score_thr
                )
                self.sink.write_line(
                    {"frame": index, "time_s": index / self.fps, "detections": rec["detections"]}
                )
                self.predicted += 1
                self.detections += len(rec["detections"])
                self.last = det
            drawn = bgr
            if self.last is not None:
                last = self.last
                edge_std = last.get("edge_std") if self.show_uncertainty else None
                drawn = draw_detections(
                    bgr,
                    last["boxes"],
                    last["scores"],
                    last["labels"],
                    p.class_names,
                    self.score_thr,
                    edge_std=edge_std,
                )
            self.sink.write_frame(drawn)
        self.pending.clear()
        self.n_batch = 0
