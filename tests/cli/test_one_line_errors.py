"""The command line's error handling: every mistake (a bad --set value, a missing file, an
unusable output folder) is one `gfldet: error: ...` line, exit status 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfldet.cli import main
from tests.helpers import DEMO, one_line_error, tiny_train_sets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("data.train.img_scale=[0,0]", "data.train.img_scale"),
        ("data.train.img_scale=[a,b]", "data.train.img_scale"),
        ("data.train.img_scale=[-128,128]", "data.train.img_scale"),
        ("data.val.img_scale=[128]", "data.val.img_scale"),
        ("data.mean=[1,2]", "data.mean"),
        ("data.std=[1,0,1]", "data.std"),
        ("train.lr_steps=[a]", "train.lr_steps"),
        ("device=gpu", "device"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-0.01", "train.lr"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio"),
        ("train.warmup_ratio=-0.1", "train.warmup_ratio"),
        ("data.train.flip_prob=2", "data.train.flip_prob"),
        ("model.test.score_thr=.nan", "model.test.score_thr"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(shapes, tmp_path, capsys, item, key):
    sets = tiny_train_sets(shapes, tmp_path / "w")
    assert main(["train", "--config", DEMO, "--set", *sets, item]) == 2
    err = one_line_error(capsys)
    assert f"'{key}'" in err and "--set" in err
    assert not (tmp_path / "w").exists()  # nothing was created


def test_a_missing_annotation_file_and_an_unusable_out_dir_are_one_line_errors(
    shapes, tmp_path, capsys
):
    sets = tiny_train_sets(shapes, tmp_path / "w")
    missing = tmp_path / "nope.json"
    assert main(["train", "--config", DEMO, "--set", *sets, f"data.train.ann_file={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "annotation file not found" in err and str(missing) in err

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    img = str(Path(shapes["val_img_dir"]) / "*.jpg")
    assert (
        main(
            [
                "infer",
                "--config",
                DEMO,
                "--checkpoint",
                "x.pth",
                img,
                "--out-dir",
                str(blocker / "out"),
                "--set",
                *sets,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(blocker / "out") in err


def test_config_checkpoint_and_input_mistakes_are_one_line_errors(tiny_sets, tmp_path, capsys):
    sets = tiny_sets(tmp_path / "w")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {DEMO}\ntrain:\n  epochz: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.epochz" in err and "bad.yaml" in err

    assert main(["train", "--config", DEMO, "--set", "train.epochs=many"]) == 2
    assert "train.epochs" in capsys.readouterr().err

    assert (
        main(["eval", "--config", DEMO, "--checkpoint", str(tmp_path / "none.pth"), "--set", *sets])
        == 2
    )
    assert "none.pth" in capsys.readouterr().err

    assert main(["infer", "--config", DEMO, "--checkpoint", "x.pth", str(tmp_path / "*.png")]) == 2
    assert "no images matched" in capsys.readouterr().err
