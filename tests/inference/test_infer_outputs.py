"""`gfldet infer` writes only to files it may write: never over one of its inputs (videos and
image sequences included, also through links), never over a file in --out-dir that it did not
write unless asked to (--overwrite), and it never takes its own earlier outputs as inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import gfldet
from gfldet.cli import main
from gfldet.core.checkpoint import save_checkpoint
from tests.helpers import DEMO, TINY_MODEL, one_line_error, snapshot

SETS = [
    "model.num_classes=3",
    *TINY_MODEL,
    "model.test.max_per_img=5",
    "data.val.img_scale=[64,64]",
    "device=cpu",
]
# What infer writes for the inputs photo.jpg and street.mp4.
OUTPUTS = ["photo.jpg", "predictions.json", "street.mp4", "street.predictions.jsonl"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model: what infer writes is under test here, not what it detects."""
    torch.manual_seed(0)
    model = gfldet.build_model(gfldet.load_config(DEMO, SETS).model)
    ckpt = tmp_path_factory.mktemp("infer_model") / "tiny.pth"
    save_checkpoint({"model": model.state_dict(), "classes": ["a", "b", "c"]}, ckpt)
    return ckpt


def infer(checkpoint: Path, *args: str) -> int:
    return main(["infer", "--config", DEMO, "--checkpoint", str(checkpoint), *args, "--set", *SETS])


def write_image(path: Path, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((40, 56, 3), value, np.uint8)
    cv2.rectangle(img, (10, 8), (30, 30), (30, 200, 240), cv2.FILLED)
    assert cv2.imwrite(str(path), img)
    return path


def write_video(path: Path, n: int = 4, shift: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    assert writer.isOpened()
    for k in range(n):
        img = np.full((48, 64, 3), 60, np.uint8)
        x = 4 + 3 * k + shift
        cv2.rectangle(img, (x, 10), (x + 18, 34), (40, 200, 240), cv2.FILLED)
        writer.write(img)
    writer.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# ------------------------------------------------------------------- inputs are never written


def test_a_video_in_the_out_dir_is_refused_before_anything_is_written(checkpoint, tmp_path, capsys):
    # The user's second clip sits where the first one's annotated copy would go.
    first = write_video(tmp_path / "clips" / "street.mp4")
    out = tmp_path / "annotated"
    second = write_video(out / "street.mp4", shift=5)
    before = snapshot(tmp_path)
    assert infer(checkpoint, str(first), str(second), "--out-dir", str(out)) == 2
    err = one_line_error(capsys)
    assert "--out-dir" in err and str(second) in err
    assert snapshot(tmp_path) == before


def test_an_image_sequence_in_the_out_dir_is_refused(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    for k in range(3):
        write_image(out / "frames" / f"{k:04d}.png")
    before = snapshot(tmp_path)
    assert infer(checkpoint, str(out / "frames" / "%04d.png"), "--out-dir", str(out)) == 2
    assert "--out-dir" in one_line_error(capsys)
    assert snapshot(tmp_path) == before


def test_globs_never_take_earlier_outputs_as_inputs(checkpoint, tmp_path, capsys):
    clips = tmp_path / "clips"
    write_video(clips / "street.mp4")
    write_image(clips / "photo.jpg")
    out = clips / "annotated"
    for _ in range(2):  # the second run must not re-annotate the first run's outputs
        assert infer(checkpoint, str(clips / "**" / "*"), "--out-dir", str(out)) == 0
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        assert names == OUTPUTS
        assert len(json.loads((out / "predictions.json").read_text())) == 1
    capsys.readouterr()


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_output_that_is_an_input_through_a_link_is_refused(checkpoint, tmp_path, capsys, link):
    # out/photo.jpg and out/street.mp4 are the inputs under another name: writing the
    # annotated copies would write into the inputs themselves.
    photo = write_image(tmp_path / "in" / "photo.jpg")
    clip = write_video(tmp_path / "in" / "street.mp4")
    out = tmp_path / "out"
    out.mkdir()
    for src in (photo, clip):
        (os.link if link == "hard" else os.symlink)(src, out / src.name)
        before = snapshot(tmp_path / "in")
        assert infer(checkpoint, str(src), "--out-dir", str(out), "--overwrite") == 2
        err = one_line_error(capsys)
        assert str(out / src.name) in err and "input" in err
        assert snapshot(tmp_path / "in") == before
        (out / src.name).unlink()


# ---------------------------------------------------------- files infer did not write are kept


@pytest.mark.parametrize("theirs", OUTPUTS)
def test_files_infer_did_not_write_are_refused_unless_overwrite(
    checkpoint, tmp_path, capsys, theirs
):
    photo = write_image(tmp_path / "in" / "photo.jpg")
    clip = write_video(tmp_path / "in" / "street.mp4")
    out = tmp_path / "out"
    out.mkdir()
    (out / theirs).write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("unrelated")
    assert infer(checkpoint, str(photo), str(clip), "--out-dir", str(out)) == 2
    err = one_line_error(capsys)
    assert str(out) in err and theirs in err and "--overwrite" in err
    assert snapshot(out) == {theirs: b"the user's own file", "notes.txt": b"unrelated"}

    assert infer(checkpoint, str(photo), str(clip), "--out-dir", str(out), "--overwrite") == 0
    assert (out / theirs).read_bytes() != b"the user's own file"
    assert (out / "notes.txt").read_text() == "unrelated"
    capsys.readouterr()


def test_the_refusal_lists_the_first_few_files(checkpoint, tmp_path, capsys):
    photos = [write_image(tmp_path / "in" / f"p{k}.jpg") for k in range(6)]
    out = tmp_path / "out"
    for p in photos:
        write_image(out / p.name, value=200)
    before = snapshot(out)
    assert infer(checkpoint, str(tmp_path / "in"), "--out-dir", str(out)) == 2
    err = one_line_error(capsys)
    assert "6 files" in err and "p0.jpg" in err and "p5.jpg" not in err
    assert snapshot(out) == before


def test_a_rerun_replaces_its_own_outputs_but_not_edited_ones(checkpoint, tmp_path, capsys):
    photo = write_image(tmp_path / "in" / "photo.jpg")
    clip = write_video(tmp_path / "in" / "street.mp4")
    out = tmp_path / "out"
    args = [str(photo), str(clip), "--out-dir", str(out)]
    assert infer(checkpoint, *args) == 0
    assert infer(checkpoint, *args) == 0  # its own files: replaced without --overwrite
    assert count_frames(out / "street.mp4") == 4
    capsys.readouterr()
    # A file the user changed since is the user's.
    (out / "predictions.json").write_text("[]  # my curated list")
    assert infer(checkpoint, *args) == 2
    assert "predictions.json" in one_line_error(capsys)
    assert (out / "predictions.json").read_text() == "[]  # my curated list"


def test_an_overwritten_output_never_writes_through_a_link(checkpoint, tmp_path, capsys):
    # --overwrite replaces the files in --out-dir, not other files they are links to.
    photo = write_image(tmp_path / "in" / "photo.jpg")
    clip = write_video(tmp_path / "in" / "street.mp4")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUTS:
        (elsewhere / name).write_bytes(b"kept")
        os.link(elsewhere / name, out / name)
    assert infer(checkpoint, str(photo), str(clip), "--out-dir", str(out), "--overwrite") == 0
    assert snapshot(elsewhere) == dict.fromkeys(OUTPUTS, b"kept")
    assert all((out / name).read_bytes() != b"kept" for name in OUTPUTS)
    capsys.readouterr()
