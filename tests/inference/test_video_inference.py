"""Video and image-sequence inference (gfldet.inference.video) with a tiny untrained model.

Videos are generated here with cv2.VideoWriter: 12 frames of 64x48 at 10 fps, MPEG-4 Part 2
(mp4v) in .mp4 and Motion JPEG in .avi, both of which opencv-python-headless writes and reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import gfldet
from gfldet.cli import main
from gfldet.core.checkpoint import save_checkpoint
from gfldet.core.records import prediction_record
from gfldet.data.synth import shapes_overrides
from gfldet.data.transforms import rescale_size
from gfldet.inference import video
from gfldet.inference.predictor import Predictor
from gfldet.inference.uncertainty import edge_uncertainty
from gfldet.inference.video import (
    infer_video,
    is_image_sequence,
    is_video,
    split_inputs,
    video_output_path,
)
from tests.helpers import DEMO, TINY_MODEL, TINY_RUN

N_FRAMES, W, H, FPS = 12, 64, 48, 10.0
CLASSES = ["circle", "square", "triangle"]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_frames(n: int = N_FRAMES, w: int = W, h: int = H) -> list[np.ndarray]:
    """BGR frames with a bright rectangle moving over a gradient (so frames differ)."""
    frames = []
    for k in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = np.linspace(20, 120, w, dtype=np.uint8)[None, :, None]
        x = 4 + 3 * k
        cv2.rectangle(img, (x, 10), (x + 18, 34), (40, 200, 240), cv2.FILLED)
        frames.append(img)
    return frames


def write_video(path: Path, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (W, H))
    # Both codecs are in opencv-python-headless, which gfldet depends on: a failure here is a
    # broken install, not a reason to skip the video tests.
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc} {path.suffix}"
    for frame in make_frames():
        writer.write(frame)
    writer.release()
    return path


def read_video(path: str | Path, api: int = cv2.CAP_ANY) -> tuple[list[np.ndarray], float]:
    """All frames (BGR) and the reported frame rate."""
    cap = cv2.VideoCapture(str(path), api)
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# An untrained tiny model (scores ~0.01) with a score threshold that keeps detections.
SETS = [
    "model.num_classes=3",
    *TINY_MODEL,
    "model.test.score_thr=0.001",
    "model.test.max_per_img=20",
    "data.val.img_scale=[64,64]",
    "device=cpu",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = gfldet.build_model(gfldet.load_config(DEMO, SETS).model)
    ckpt = tmp_path_factory.mktemp("video_model") / "tiny.pth"
    save_checkpoint({"model": model.state_dict(), "classes": CLASSES, "cat_ids": [1, 2, 3]}, ckpt)
    return ckpt


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor(gfldet.load_config(DEMO, SETS), checkpoint, "cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(root / "clip.mp4", "mp4v"),
        "avi": write_video(root / "clip.avi", "MJPG"),
    }


def expected_detections(predictor: Predictor, bgr: np.ndarray, thr: float) -> list[dict]:
    det = predictor([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])[0]
    return prediction_record("x", bgr.shape, det, predictor.cat_ids, predictor.class_names, thr)[
        "detections"
    ]


def assert_same_detections(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g["category_id"] == w["category_id"]
        assert g["category_name"] == w["category_name"]
        assert g["score"] == pytest.approx(w["score"], rel=1e-5, abs=1e-7)
        assert g["bbox_xyxy"] == pytest.approx(w["bbox_xyxy"], abs=0.011)


def test_predictor_reports_edge_spreads_in_original_pixels(predictor):
    # The Predictor summarises the edge distributions once, for infer, video and API users,
    # with each image's own resize: a 160 x 96 image is shrunk by 0.4 into the 64 x 64 input.
    rgb = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    det = predictor([rgb])[0]
    w_scale, h_scale = rescale_size(160, 96, predictor.transform.img_scale)[2:]
    assert (w_scale, h_scale) == (0.4, 38 / 96) and len(det["scores"]) > 0
    bin_width = predictor.model.head.box.bin_width
    want = edge_uncertainty(det["dists"], det["strides"], bin_width, (w_scale, h_scale))
    torch.testing.assert_close(det["edge_std"], want["edge_std"])
    torch.testing.assert_close(det["edge_top2"], want["edge_top2"])


@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_every_frame_predicted_and_written(predictor, videos, tmp_path, kind):
    src = videos[kind]
    out = tmp_path / "out" / f"annotated.{kind}"
    summary = infer_video(predictor, src, out, score_thr=0.0, progress=False)

    frames_out, fps_out = read_video(out)
    assert len(frames_out) == N_FRAMES
    assert frames_out[0].shape == (H, W, 3)
    assert fps_out == pytest.approx(FPS)
    jsonl = Path(summary["jsonl"])
    assert jsonl == tmp_path / "out" / "annotated.predictions.jsonl"
    lines = read_jsonl(jsonl)
    assert [r["frame"] for r in lines] == list(range(N_FRAMES))
    assert [r["time_s"] for r in lines] == pytest.approx([k / FPS for k in range(N_FRAMES)])
    assert summary["frames"] == summary["predicted"] == N_FRAMES
    assert summary["fps_in"] == pytest.approx(FPS) and not summary["fps_assumed"]
    assert summary["detections"] == sum(len(r["detections"]) for r in lines) > 0
    assert summary["video"] == str(out) and summary["fps_processed"] > 0
    # The default model has edge distributions: every record carries their summaries.
    assert all(
        len(d["edge_std"]) == 4 and len(d["edge_top2"]) == 4 for r in lines for d in r["detections"]
    )

    # Frame k's line holds what the predictor gives for frame k, decoded the same way.
    frames_in, _ = read_video(src)
    for k in (0, 5, N_FRAMES - 1):
        assert_same_detections(
            lines[k]["detections"], expected_detections(predictor, frames_in[k], 0.0)
        )
    # Annotations were drawn: the output differs from the input beyond codec noise.
    assert np.abs(frames_out[0].astype(int) - frames_in[0].astype(int)).max() > 100


def test_every_nth_frame_is_predicted_and_every_frame_written(
    predictor, videos, tmp_path, monkeypatch
):
    drawn = []  # (boxes passed to draw_detections) per written frame
    real_draw = video.draw_detections

    def spy_draw(img, boxes, *args, **kwargs):
        drawn.append(boxes)
        return real_draw(img, boxes, *args, **kwargs)

    monkeypatch.setattr(video, "draw_detections", spy_draw)
    out = tmp_path / "every5.mp4"
    summary = infer_video(predictor, videos["mp4"], out, every=5, score_thr=0.0, progress=False)

    lines = read_jsonl(summary["jsonl"])
    assert [r["frame"] for r in lines] == [0, 5, 10]
    assert [r["time_s"] for r in lines] == pytest.approx([0.0, 0.5, 1.0])
    assert summary["frames"] == N_FRAMES and summary["predicted"] == 3
    frames_out, fps_out = read_video(out)
    assert len(frames_out) == N_FRAMES and fps_out == pytest.approx(FPS)
    # Every frame is drawn, frames 1-4 with frame 0's detections, 6-9 with frame 5's.
    assert len(drawn) == N_FRAMES
    assert all(drawn[k] is drawn[0] for k in range(5))
    assert all(drawn[k] is drawn[5] for k in range(5, 10))
    assert drawn[5] is not drawn[0] and drawn[10] is not drawn[5]

    frames_in, _ = read_video(videos["mp4"])
    assert_same_detections(
        lines[1]["detections"], expected_detections(predictor, frames_in[5], 0.0)
    )


def test_batched_prediction_matches_frame_by_frame(predictor, videos, tmp_path):
    one = infer_video(
        predictor, videos["avi"], tmp_path / "b1.avi", every=2, score_thr=0.0, progress=False
    )
    four = infer_video(
        predictor,
        videos["avi"],
        tmp_path / "b4.avi",
        every=2,
        score_thr=0.0,
        progress=False,
        batch_size=4,
    )
    a, b = read_jsonl(one["jsonl"]), read_jsonl(four["jsonl"])
    assert [r["frame"] for r in b] == [0, 2, 4, 6, 8, 10]
    for ra, rb in zip(a, b, strict=True):
        assert ra["frame"] == rb["frame"]
        assert_same_detections(rb["detections"], ra["detections"])
    assert len(read_video(tmp_path / "b4.avi")[0]) == N_FRAMES


def test_an_image_sequence_numbered_from_1_with_a_resized_frame(predictor, tmp_path):
    seq = tmp_path / "frames"
    seq.mkdir()
    frames = make_frames(6)
    frames[3] = cv2.resize(frames[3], (80, 60))  # a frame of another size
    for k, f in enumerate(frames, start=1):  # numbered from 1, as many exporters do
        cv2.imwrite(str(seq / f"img_{k:04d}.png"), f)
    pattern = str(seq / "img_%04d.png")
    assert is_image_sequence(pattern)
    assert not is_image_sequence(str(seq / "img_%04d.jpg"))  # no such frames
    assert not is_image_sequence(str(seq / "img_%s.png"))
    assert not is_image_sequence(str(seq / "img_%04d_%d.png"))
    assert not is_image_sequence(str(seq / "img_0001.png"))

    out = tmp_path / "seq.mp4"
    summary = infer_video(predictor, pattern, out, score_thr=0.0, progress=False)
    assert summary["frames"] == summary["predicted"] == 6
    assert summary["fps_assumed"] and summary["fps_in"] == 25.0
    assert summary["resized"] == 1
    frames_out, fps_out = read_video(out)
    assert len(frames_out) == 6 and frames_out[3].shape == (H, W, 3)
    assert fps_out == pytest.approx(25.0)
    lines = read_jsonl(summary["jsonl"])
    assert [r["frame"] for r in lines] == list(range(6))
    # PNG is lossless: frame 3 is predicted at its own size, boxes in its own pixels.
    assert_same_detections(lines[3]["detections"], expected_detections(predictor, frames[3], 0.0))
    assert video_output_path(pattern, tmp_path / "o") == tmp_path / "o" / "img.mp4"
    assert video_output_path(str(seq / "%06d.jpg"), "o") == Path("o/frames.mp4")


@pytest.mark.parametrize(
    "image",
    [
        np.arange(20 * 30, dtype=np.uint8).reshape(20, 30),  # gray
        np.arange(20 * 30 * 3, dtype=np.uint16).reshape(20, 30, 3) * 70,  # 16-bit
        np.arange(20 * 30 * 4, dtype=np.uint8).reshape(20, 30, 4),  # with alpha
    ],
    ids=["gray", "16-bit", "rgba"],
)
def test_sequence_frames_decode_as_opencvs_image_sequence_reader(tmp_path, image):
    # ImageSequenceSource reads the files itself (so that a gap does not end the sequence);
    # its frames are those of OpenCV's own image-sequence reader, CAP_IMAGES.
    for k in (1, 2):
        cv2.imwrite(str(tmp_path / f"f{k:03d}.png"), image)
    pattern = str(tmp_path / "f%03d.png")
    ours = [frame for _, frame in video.open_source(pattern).frames()]
    theirs = [video._as_bgr8(f) for f in read_video(pattern, cv2.CAP_IMAGES)[0]]
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == np.uint8 and a.shape == (20, 30, 3) and np.array_equal(a, b)


def test_inputs_split_into_images_videos_and_sequences(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.MOV").write_bytes(b"")
    (tmp_path / "c.jpg").write_bytes(b"")
    (tmp_path / "d.txt").write_bytes(b"")
    t = str(tmp_path)
    videos, rest = split_inputs(
        [
            f"{t}/c.jpg",
            f"{t}/a.mp4",
            f"{t}/missing.avi",
            f"{t}/f_%05d.png",
            t,
            f"{t}/*.mp4",
            f"{t}/*",
            f"{t}/*.png",
            f"{t}/a.mp4",
            f"{t}/*.mkv",
            f"{t}/missing.jpg",
        ]
    )
    assert videos == [
        f"{t}/a.mp4",
        f"{t}/missing.avi",
        f"{t}/f_%05d.png",
        f"{t}/b.MOV",
        f"{t}/*.mkv",
    ]
    # Folders and globs that match more than videos (or nothing) go to expand_inputs.
    assert rest == [f"{t}/c.jpg", t, f"{t}/*", f"{t}/*.png", f"{t}/missing.jpg"]


def test_videos_are_known_by_extension_and_written_as_mp4():
    assert is_video("a/B.MP4") and is_video("x.webm") and is_video("missing.avi")
    assert not is_video("a.jpg") and not is_video("mp4") and not is_video("folder")
    assert video_output_path("in/clip.avi", "out") == Path("out/clip.mp4")


def test_bad_sources_outputs_and_options_are_clear_errors(predictor, videos, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(
        ValueError,
        match=r"^cannot read video .*garbage\.mp4: OpenCV could not "
        r"decode it \(codec not supported by this OpenCV build\?\)$",
    ):
        infer_video(predictor, garbage, tmp_path / "g" / "out.mp4", progress=False)
    assert not (tmp_path / "g").exists()  # nothing written for a bad source

    with pytest.raises(FileNotFoundError, match="video file not found: .*nothere.mp4"):
        infer_video(predictor, tmp_path / "nothere.mp4", tmp_path / "o.mp4", progress=False)
    with pytest.raises(FileNotFoundError, match="image sequence .*: no first frame"):
        infer_video(predictor, str(tmp_path / "f_%03d.png"), tmp_path / "o.mp4", progress=False)
    with pytest.raises(ValueError, match="every must be >= 1"):
        infer_video(predictor, videos["mp4"], tmp_path / "o.mp4", every=0, progress=False)
    with pytest.raises(ValueError, match=r"no codec for '\.gif'"):
        infer_video(predictor, videos["mp4"], tmp_path / "o.gif", progress=False)

    src = videos["avi"]
    before = src.read_bytes()
    same = src.parent / "." / src.name  # the same file, spelled differently
    with pytest.raises(ValueError, match="is the input video .*refusing to overwrite it"):
        infer_video(predictor, src, same, progress=False)
    assert src.read_bytes() == before

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot create output folder for .*a_file/sub/o.mp4"):
        infer_video(predictor, src, blocker / "sub" / "o.mp4", progress=False)

    with pytest.raises(
        OSError,
        match=r"cannot write video .*o\.mp4: OpenCV could not open a "
        r"'ZZZZ' writer",
    ):
        infer_video(predictor, src, tmp_path / "w" / "o.mp4", fourcc="ZZZZ", progress=False)
    assert not (tmp_path / "w" / "o.predictions.jsonl").exists()


class InterruptAt:
    """A predictor that raises KeyboardInterrupt (as Ctrl-C does) when asked for frame `at`."""

    def __init__(self, predictor: Predictor, at: int, jsonl: Path) -> None:
        self.inner, self.at, self.seen, self.jsonl = predictor, at, 0, jsonl
        self.on_disk: list[str] = []  # the JSONL as a crash at that moment would leave it

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        if self.seen <= self.at < self.seen + len(images):
            self.on_disk = self.jsonl.read_text().splitlines()
            raise KeyboardInterrupt
        self.seen += len(images)
        return self.inner(images)


def test_ctrl_c_keeps_finished_frames(predictor, videos, tmp_path, monkeypatch):
    released = []
    real_writer = cv2.VideoWriter

    class SpyWriter:  # cv2.VideoWriter that records its release
        def __init__(self, *args):
            self.w = real_writer(*args)

        def __getattr__(self, name):
            return getattr(self.w, name)

        def release(self):
            released.append(True)
            self.w.release()

    monkeypatch.setattr(video.cv2, "VideoWriter", SpyWriter)
    out = tmp_path / "ctrlc.mp4"
    jsonl = tmp_path / "ctrlc.predictions.jsonl"
    interrupting = InterruptAt(predictor, 6, jsonl)
    with pytest.raises(KeyboardInterrupt):
        infer_video(interrupting, videos["mp4"], out, score_thr=0.0, progress=False)
    monkeypatch.undo()

    assert released == [True]
    lines = read_jsonl(jsonl)  # every line is complete JSON
    assert [r["frame"] for r in lines] == list(range(6))
    # Flushed as written: frames 0-5 were on disk before the interrupt (a SIGKILL keeps them).
    assert [json.loads(line)["frame"] for line in interrupting.on_disk] == list(range(6))
    # Released, so the MP4 got its index: frames 0-5 play back.
    frames_out, fps_out = read_video(out)
    assert len(frames_out) == 6 and fps_out == pytest.approx(FPS)


def test_show_uncertainty_draws_bands(predictor, videos, tmp_path):
    plain = infer_video(
        predictor, videos["avi"], tmp_path / "p.avi", every=6, score_thr=0.0, progress=False
    )
    bands = infer_video(
        predictor,
        videos["avi"],
        tmp_path / "u.avi",
        every=6,
        score_thr=0.0,
        show_uncertainty=True,
        progress=False,
    )
    assert read_jsonl(plain["jsonl"]) == read_jsonl(bands["jsonl"])
    a, b = read_video(plain["video"])[0], read_video(bands["video"])[0]
    assert len(a) == len(b) == N_FRAMES
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() > 1


def test_a_gap_in_an_image_sequence_is_reported_and_skipped(predictor, tmp_path, caplog):
    seq = tmp_path / "frames"
    seq.mkdir()
    for k, f in enumerate(make_frames(10)):
        if k not in (4, 7):
            cv2.imwrite(str(seq / f"{k:06d}.png"), f)
    pattern, out = str(seq / "%06d.png"), tmp_path / "gap.mp4"
    with caplog.at_level("WARNING", logger="gfldet"):
        summary = infer_video(predictor, pattern, out, score_thr=0.0, progress=False)
    assert summary["frames"] == summary["predicted"] == 8
    assert summary["missing"] == 2
    [warning] = [m for m in caplog.messages if "missing" in m]
    assert "%06d.png" in warning and "4, 7" in warning
    # The lines keep each frame's place in the numbering, and its time.
    lines = read_jsonl(summary["jsonl"])
    assert [r["frame"] for r in lines] == [0, 1, 2, 3, 5, 6, 8, 9]
    assert lines[4]["time_s"] == pytest.approx(5 / 25)
    assert len(read_video(out)[0]) == 8


def test_a_gap_is_named_in_the_summary_line(checkpoint, tmp_path, capsys):
    seq = tmp_path / "frames"
    seq.mkdir()
    for k, f in enumerate(make_frames(6)):
        if k != 4:
            cv2.imwrite(str(seq / f"{k:06d}.jpg"), f)
    args = ["--checkpoint", str(checkpoint), str(seq / "%06d.jpg")]
    out_dir = ["--out-dir", str(tmp_path / "out")]
    assert main(["infer", "--config", DEMO, *args, *out_dir, "--set", *SETS]) == 0
    out = capsys.readouterr().out
    assert "5 frames" in out and "1 missing" in out


@pytest.mark.slow
def test_infer_command_on_a_video_of_a_trained_model(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = [*TINY_RUN, *shapes_overrides(shapes), "train.eval_interval=0"]
    assert main(["train", "--config", DEMO, "--set", *sets, f"work_dir={work}"]) == 0
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    frames = sorted(Path(shapes["val_img_dir"]).glob("*.jpg"))
    for i in range(12):
        writer.write(cv2.resize(cv2.imread(str(frames[i % len(frames)])), (64, 48)))
    writer.release()
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                "--config",
                DEMO,
                "--checkpoint",
                str(work / "latest.pth"),
                str(video),
                "--out-dir",
                str(out),
                "--every",
                "3",
                "--score-thr",
                "0",
                "--set",
                *sets,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "12 frames (4 predicted)" in printed and "frames/s" in printed
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    cap.release()
    lines = (out / "clip.predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 3, 6, 9]
