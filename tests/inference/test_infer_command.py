"""`gfldet infer` on images (gfldet.inference.infer / run): which inputs it takes, that it never
reads its own outputs or writes into its inputs, what it writes when an image is unreadable,
its checks and its progress bar."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from gfldet.cli import main
from gfldet.inference.infer import expand_inputs
from tests.helpers import DEMO, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def infer(tiny_trained, *args: str) -> int:
    """`gfldet infer ARGS` with the tiny trained model; its exit status."""
    ckpt, sets, _ = tiny_trained
    return main(["infer", "--config", DEMO, "--checkpoint", str(ckpt), *args, "--set", *sets])


def image_folder(tiny_trained, folder: Path, n: int = 2) -> Path:
    """A new folder holding copies of the first n val images of the tiny model's dataset."""
    folder.mkdir(parents=True)
    for src in sorted(tiny_trained[2]["val_img_dir"].glob("*.jpg"))[:n]:
        shutil.copy(src, folder / src.name)
    return folder


def _write_image(path):
    """A black 4x4 image at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))


def test_infer_refuses_an_out_dir_that_holds_its_inputs(tiny_trained, tmp_path, capsys):
    photos = image_folder(tiny_trained, tmp_path / "photos")
    before = snapshot(photos)
    assert infer(tiny_trained, str(photos), "--out-dir", str(photos)) == 2
    err = one_line_error(capsys)
    assert "--out-dir" in err and str(photos) in err
    assert snapshot(photos) == before
    # An explicit file inside the out-dir too.
    assert infer(tiny_trained, str(photos / sorted(before)[0]), "--out-dir", str(photos)) == 2
    assert snapshot(photos) == before


def test_infer_never_reads_its_own_outputs(tiny_trained, tmp_path, capsys):
    photos = image_folder(tiny_trained, tmp_path / "photos")
    before = snapshot(photos)
    out = photos / "predicted"
    for _ in range(3):  # the second and third runs must not take the drawn images as inputs
        assert infer(tiny_trained, str(photos), "--out-dir", str(out)) == 0
        assert len(json.loads((out / "predictions.json").read_text())) == 2
        assert sorted(p.name for p in out.glob("*.jpg")) == sorted(before)
    # A glob reaching into the out-dir: the same.
    assert infer(tiny_trained, str(photos / "**" / "*.jpg"), "--out-dir", str(out)) == 0
    assert len(json.loads((out / "predictions.json").read_text())) == 2
    assert {k: v for k, v in snapshot(photos).items() if "/" not in k} == before
    capsys.readouterr()


def test_infer_writes_predictions_for_what_it_processed(tiny_trained, tmp_path, capsys):
    photos = image_folder(tiny_trained, tmp_path / "photos", n=3)
    names = sorted(p.name for p in photos.iterdir())
    (photos / names[1]).write_text("not a picture")  # the middle one
    out = tmp_path / "out"
    assert infer(tiny_trained, str(photos), "--out-dir", str(out)) == 2
    assert names[1] in one_line_error(capsys)
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == [names[0]]
    # Asked to skip: the others are processed, and the summary counts the skipped one.
    ckpt, sets, _ = tiny_trained
    assert (
        main(
            [
                "infer",
                "--config",
                DEMO,
                "--checkpoint",
                str(ckpt),
                str(photos),
                "--out-dir",
                str(out),
                "--set",
                *sets,
                "data.skip_bad_images=true",
            ]
        )
        == 0
    )
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == [names[0], names[2]]
    assert "1 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("thr", ["1.5", "-0.1", "nan"])
def test_infer_score_threshold_must_be_in_0_1(tiny_trained, tmp_path, capsys, thr):
    photos = image_folder(tiny_trained, tmp_path / "photos", n=1)
    assert (
        infer(tiny_trained, str(photos), "--out-dir", str(tmp_path / "o"), "--score-thr", thr) == 2
    )
    assert "--score-thr" in one_line_error(capsys)


def test_infer_shows_a_progress_bar_on_stdout(tiny_trained, tmp_path, capsys):
    photos = image_folder(tiny_trained, tmp_path / "photos", n=2)
    assert infer(tiny_trained, str(photos), "--out-dir", str(tmp_path / "o")) == 0
    out = capsys.readouterr().out  # on stdout, as training's bars: stderr is for errors
    assert re.search(r"infer: 100%\|.*\| 2/2 ", out), out  # tqdm's finished bar


def test_inputs_expand_in_order_without_duplicates(tmp_path):
    for rel in ("a/1.jpg", "a/sub/2.PNG", "b/3.jpg", "a/notes.txt"):
        _write_image(tmp_path / rel) if not rel.endswith("txt") else (tmp_path / rel).write_text("")
    single = tmp_path / "b" / "3.jpg"
    assert expand_inputs([str(single)]) == [single]
    assert expand_inputs([str(tmp_path / "a")]) == [tmp_path / "a/1.jpg", tmp_path / "a/sub/2.PNG"]
    # Folder then glob: order by input, duplicates (3.jpg) dropped.
    got = expand_inputs([str(tmp_path / "b"), str(tmp_path / "**" / "*.jpg")])
    assert got == [single, tmp_path / "a/1.jpg"]
    with pytest.raises(FileNotFoundError, match=r"no images matched: .*nope"):
        expand_inputs([str(single), str(tmp_path / "nope*.jpg")])
