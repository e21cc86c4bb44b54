"""Never destroy a user's files, never a silently wrong number, and fail before the long work
starts: each test reproduces one way a careless user could lose data or get a traceback."""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_trainer import DEMO, REPO, tiny_sets

import gfldet
from gfldet.cli import main
from gfldet.config import ConfigError, load_config
from gfldet.core import checkpoint as ckpt_module
from gfldet.core.checkpoint import load_checkpoint
from gfldet.data.coco import CocoDetection
from gfldet.data.synth import write_shapes_dataset
from gfldet.data.transforms import TestTransform, rescale_size

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfldet: error: ") and err.count("\n") == 0, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes):
    """A tiny model trained for 2 iterations: (checkpoint, --set items for infer/eval)."""
    root = tmp_path_factory.mktemp("safety")
    sets = tiny_sets(shapes, root / "work", "train.max_iters=2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does (a module fixture cannot use it)
    try:
        assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "work" / "latest.pth", sets, shapes


def infer(trained, *args: str) -> int:
    ckpt, sets, _ = trained
    return main(["infer", "--config", DEMO, "--checkpoint", str(ckpt), *args, "--set", *sets])


def image_folder(trained, folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    for src in sorted(trained[2]["val_img_dir"].glob("*.jpg"))[:n]:
        shutil.copy(src, folder / src.name)
    return folder


# ---------------------------------------------------------------------------- 1. infer


def test_infer_refuses_an_out_dir_that_holds_its_inputs(trained, tmp_path, capsys):
    photos = image_folder(trained, tmp_path / "photos")
    before = snapshot(photos)
    assert infer(trained, str(photos), "--out-dir", str(photos)) == 2
    err = one_line_error(capsys)
    assert "--out-dir" in err and str(photos) in err
    assert snapshot(photos) == before
    # An explicit file inside the out-dir too.
    assert infer(trained, str(photos / sorted(before)[0]), "--out-dir", str(photos)) == 2
    assert snapshot(photos) == before


def test_infer_never_reads_its_own_outputs(trained, tmp_path, capsys):
    photos = image_folder(trained, tmp_path / "photos")
    before = snapshot(photos)
    out = photos / "predicted"
    for _ in range(3):  # the second and third runs must not take the drawn images as inputs
        assert infer(trained, str(photos), "--out-dir", str(out)) == 0
        assert len(json.loads((out / "predictions.json").read_text())) == 2
        assert sorted(p.name for p in out.glob("*.jpg")) == sorted(before)
    # A glob reaching into the out-dir: the same.
    assert infer(trained, str(photos / "**" / "*.jpg"), "--out-dir", str(out)) == 0
    assert len(json.loads((out / "predictions.json").read_text())) == 2
    assert {k: v for k, v in snapshot(photos).items() if "/" not in k} == before
    capsys.readouterr()


# ---------------------------------------------------------------------------- 2. train


def test_a_new_run_refuses_a_work_dir_that_holds_a_run(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, "train.max_iters=2")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    before = snapshot(work)
    assert main(["train", "--config", DEMO, "--set", *sets, "train.epochs=2"]) == 2
    err = one_line_error(capsys)
    assert str(work) in err and "--resume" in err and "--work-dir" in err and "--overwrite" in err
    assert snapshot(work) == before


def test_overwrite_moves_the_old_run_aside(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, "train.max_iters=3")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    before = snapshot(work)
    assert main(["train", "--config", DEMO, "--overwrite", "--set", *sets,
                 "train.max_iters=2"]) == 0  # fmt: skip
    [old] = list((work / "previous").iterdir())
    assert snapshot(old) == before  # every file of the old run, byte for byte
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2]  # only the new run's
    assert load_checkpoint(work / "latest.pth")["iter"] == 2
    assert "previous" in capsys.readouterr().out


def test_keep_last_deletes_only_checkpoints_of_the_current_run(shapes, tmp_path):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, "train.epochs=3")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    old3 = (work / "epoch_3.pth").read_bytes()
    # Go back to epoch 1 and train epoch 2 again, keeping one epoch file.
    assert main(["train", "--config", DEMO, "--resume", str(work / "epoch_1.pth"), "--set",
                 *sets, "train.epochs=2", "train.keep_last=1"]) == 0  # fmt: skip
    assert (work / "epoch_2.pth").is_file(), "keep_last deleted the checkpoint it just wrote"
    assert load_checkpoint(work / "epoch_2.pth")["epoch"] == 2
    assert not (work / "epoch_1.pth").exists()
    assert (work / "epoch_3.pth").read_bytes() == old3  # a later one of the first branch


def test_no_checkpoint_to_resume_does_not_suggest_a_clobber(shapes, tmp_path, capsys):
    sets = tiny_sets(shapes, tmp_path / "w")
    assert main(["train", "--config", DEMO, "--resume", "--set", *sets]) == 2
    err = one_line_error(capsys)
    assert "no checkpoint to resume from" in err and "start over" not in err
    assert "empty --work-dir" in err


# ---------------------------------------------------------------------------- 3. synth


def test_synth_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "holiday"
    (mine / "train" / "images" / "2019").mkdir(parents=True)
    (mine / "train" / "images" / "2019" / "beach.jpg").write_bytes(b"my photo")
    (mine / "val" / "images").mkdir(parents=True)
    (mine / "val" / "images" / "dog.png").write_bytes(b"my dog")
    (mine / "annotations").mkdir()
    (mine / "annotations" / "train.json").write_text("{}")
    before = snapshot(mine)
    assert main(["data", "synth", "--out", str(mine), "--num-train", "2", "--num-val", "1"]) == 2
    err = one_line_error(capsys)
    assert str(mine) in err and "was not written by gfldet data synth" in err
    assert snapshot(mine) == before


def test_synth_regenerates_only_its_own_files(tmp_path):
    out = tmp_path / "shapes"
    small = dict(num_val=2, img_size=32, max_size=16, max_objects=2)
    write_shapes_dataset(out, num_train=6, **small)
    extra = out / "train" / "images" / "mine.png"
    extra.write_bytes(b"a file the generator did not write")
    write_shapes_dataset(out, num_train=3, **small)
    assert extra.read_bytes() == b"a file the generator did not write"
    names = sorted(p.name for p in (out / "train" / "images").iterdir())
    assert names == ["000000.jpg", "000001.jpg", "000002.jpg", "mine.png"]
    assert len(json.loads((out / "annotations" / "train.json").read_text())["images"]) == 3
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    write_shapes_dataset(tmp_path / "empty", num_train=1, **small)


# ---------------------------------------------------------------------------- 4. resume


def test_resume_with_another_optimizer_fails_before_writing(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, "train.max_iters=2")  # shapes_demo.yaml trains with adamw
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    before = snapshot(work)
    config = str(work / "config.yaml")
    args = ["train", "--config", config, "--resume", "--set", "train.max_iters=4"]
    assert main([*args, "train.optimizer=sgd"]) == 2
    err = one_line_error(capsys)
    assert "train.optimizer" in err and "'adamw'" in err and "'sgd'" in err
    assert snapshot(work) == before  # config.yaml, log and checkpoints untouched
    # Frozen stages change what is trained: the optimizer state cannot fit either.
    assert main([*args, "model.backbone.frozen_stages=2"]) == 2
    assert "frozen_stages" in one_line_error(capsys)
    assert snapshot(work) == before
    assert main(args) == 0  # the documented command still works


# ---------------------------------------------------------------------------- 5, 6: ids, YAML


def coco_file(path: Path, images: list[dict], anns: list[dict]) -> Path:
    cats = [{"id": 1, "name": "a"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def identity(image, boxes, rng=None):
    h, w = image.shape[:2]
    return image, boxes, {"img_size": (h, w), "scale_factor": (1.0, 1.0), "flipped": False}


def test_duplicate_annotation_ids(tmp_path, caplog):
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    anns = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": b, "area": 100.0, "iscrowd": 0}
            for b in ([1, 1, 10, 10], [20, 5, 10, 10])]  # fmt: skip
    path = coco_file(tmp_path / "dup.json", images, anns)
    with pytest.raises(ValueError, match=r"dup\.json.*annotation id 7 appears more than once"):
        CocoDetection(path, tmp_path, identity, train=True)
    # Lenient: renumbered with a warning; both boxes are kept, once each.
    logger = logging.getLogger("gfldet")
    logger.addHandler(caplog.handler)
    try:
        ds = CocoDetection(path, tmp_path, identity, train=True, skip_bad=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert "renumbered" in caplog.text
    assert len(ds.coco.anns) == 2 and len(ds._targets[1][0]) == 2


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  num_classes: 2\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key 'train'.*line 1"):
        load_config(path)
    path.write_text("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: duplicate key 'epochs'"):
        load_config(path)


# ---------------------------------------------------------------------------- 7. val set


def test_train_checks_the_val_set_before_the_first_iteration(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, f"data.val.img_dir={tmp_path / 'nowhere'}")
    assert main(["train", "--config", DEMO, "--set", *sets]) == 2
    err = one_line_error(capsys)
    assert "nowhere" in err and "data.val.img_dir" in err
    assert not (work / "log.jsonl").exists() and not (work / "latest.pth").exists()


def test_val_annotations_without_iscrowd_and_area_are_evaluated(shapes, tmp_path):
    data = json.loads(Path(shapes["val_ann"]).read_text())
    for a in data["annotations"]:
        del a["iscrowd"], a["area"]
    val = tmp_path / "val.json"
    val.write_text(json.dumps(data))
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, f"data.val.ann_file={val}", "train.max_iters=1",
                     "train.eval_interval=1")  # fmt: skip
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    assert math.isfinite(json.loads((work / "metrics.json").read_text())["AP"])


# ---------------------------------------------------------------------------- 8. aspect ratio


def test_extreme_aspect_ratios_never_resize_a_side_to_zero(tmp_path):
    for w, h in ((10000, 10), (10, 10000), (1, 1), (3, 2000)):
        new_w, new_h, _, _ = rescale_size(w, h, (128, 128))
        assert new_w >= 1 and new_h >= 1 and max(new_w, new_h) <= 128
    image = np.zeros((10, 10000, 3), np.uint8)
    out, boxes, info = TestTransform((128, 128))(image, np.array([[0, 2, 5000, 8]], np.float32))
    assert out.shape[:2] == info["img_size"] == (1, 128)


def test_extreme_aspect_ratio_trains_evaluates_and_infers(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(imgs / "strip.jpg"), rng.integers(0, 255, (10, 10000, 3), dtype=np.uint8))
    cv2.imwrite(str(imgs / "box.jpg"), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    images = [{"id": 1, "file_name": "strip.jpg", "width": 10000, "height": 10},
              {"id": 2, "file_name": "box.jpg", "width": 80, "height": 60}]  # fmt: skip
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 1, 4000, 8], "area": 3.2e4,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900.0,
             "iscrowd": 0}]  # fmt: skip
    ann = coco_file(tmp_path / "a.json", images, anns)
    work = tmp_path / "w"
    sets = [f"work_dir={work}", f"data.train.ann_file={ann}", f"data.train.img_dir={imgs}",
            f"data.val.ann_file={ann}", f"data.val.img_dir={imgs}",
            "data.train.img_scale=[128,128]", "data.val.img_scale=[128,128]",
            "data.train.num_workers=0", "data.val.num_workers=0",
            "data.train.batch_size=2", "model.backbone.base_width=8", "model.neck.out_channels=16",
            "model.head.feat_channels=16", "model.head.stacked_convs=1", "model.head.num_groups=4",
            "train.epochs=1", "train.warmup_iters=1"]  # fmt: skip
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    assert (work / "metrics.json").is_file()
    assert main(["infer", "--config", DEMO, "--checkpoint", str(work / "latest.pth"), str(imgs),
                 "--out-dir", str(tmp_path / "out"), "--set", *sets]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------- 9. infer skips


def test_infer_writes_predictions_for_what_it_processed(trained, tmp_path, capsys):
    photos = image_folder(trained, tmp_path / "photos", n=3)
    names = sorted(p.name for p in photos.iterdir())
    (photos / names[1]).write_text("not a picture")  # the middle one
    out = tmp_path / "out"
    assert infer(trained, str(photos), "--out-dir", str(out)) == 2
    assert names[1] in one_line_error(capsys)
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == [names[0]]
    # Asked to skip: the others are processed, and the summary counts the skipped one.
    ckpt, sets, _ = trained
    assert main(["infer", "--config", DEMO, "--checkpoint", str(ckpt), str(photos), "--out-dir",
                 str(out), "--set", *sets, "data.skip_bad_images=true"]) == 0  # fmt: skip
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == [names[0], names[2]]
    assert "1 skipped" in capsys.readouterr().out


# ---------------------------------------------------------------------------- 10. validation


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
    sets = tiny_sets(shapes, tmp_path / "w")
    assert main(["train", "--config", DEMO, "--set", *sets, item]) == 2
    err = one_line_error(capsys)
    assert f"'{key}'" in err and "--set" in err
    assert not (tmp_path / "w").exists()  # nothing was created


def test_image_ids_must_be_integers(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
              {"id": "b", "file_name": "b.jpg", "width": 40, "height": 30}]  # fmt: skip
    path = coco_file(tmp_path / "ids.json", images, [])
    with pytest.raises(ValueError, match=r"ids\.json.*image id 'b'.*integer"):
        CocoDetection(path, tmp_path, identity, train=False)


def test_export_checks_its_options_before_exporting(trained, tmp_path, capsys):
    ckpt, sets, _ = trained
    base = ["export", "--config", DEMO, "--checkpoint", str(ckpt), "--set", *sets]
    assert main([*base, "--out", str(tmp_path / "m.onnx"), "--opset", "99"]) == 2
    assert "--opset" in one_line_error(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    assert main([*base, "--out", str(blocker / "m.onnx")]) == 2
    err = one_line_error(capsys)
    assert "--out" in err and str(blocker) in err


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--img-size", "0"], "--img-size"),
        (["--num-train", "0"], "--num-train"),
        (["--num-val", "-1"], "--num-val"),
        (["--min-size", "50", "--max-size", "10"], "--min-size"),
        (["--max-objects", "0"], "--max-objects"),
    ],
)
def test_synth_checks_its_arguments(tmp_path, capsys, args, word):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), *args]) == 2
    assert word in one_line_error(capsys)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("thr", ["1.5", "-0.1", "nan"])
def test_infer_score_threshold_must_be_in_0_1(trained, tmp_path, capsys, thr):
    photos = image_folder(trained, tmp_path / "photos", n=1)
    assert infer(trained, str(photos), "--out-dir", str(tmp_path / "o"), "--score-thr", thr) == 2
    assert "--score-thr" in one_line_error(capsys)


def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_resume(
    shapes, tmp_path, capsys, monkeypatch
):
    work = tmp_path / "w"
    sets = tiny_sets(shapes, work, "train.epochs=2")
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    assert main(["train", "--config", DEMO, "--set", *sets]) == 2
    err = one_line_error(capsys)
    assert "no space left" in err and "--resume" in err and str(work) in err
    assert load_checkpoint(work / "latest.pth")["epoch"] == 1  # the last good one, intact
    assert not list(work.glob(".*.tmp"))  # no half-written file left behind


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: np.zeros((32, 32, 3), np.float32), "float32"),
        (lambda: np.zeros((32, 32), np.uint8), "[32, 32]"),
        (lambda: np.zeros((32, 32, 4), np.uint8), "[32, 32, 4]"),
        (lambda: np.zeros((3, 32, 32), np.uint8), "[3, 32, 32]"),
        (lambda: torch.zeros(32, 32, 3, dtype=torch.uint8), "Tensor"),
    ],
)
def test_predictor_refuses_what_is_not_a_uint8_rgb_image(trained, make, words):
    ckpt, sets, _ = trained
    predictor = gfldet.Predictor(load_config(DEMO, sets), ckpt, device="cpu")
    with pytest.raises(ValueError, match="uint8") as info:
        predictor([make()])
    assert words in str(info.value)


# ---------------------------------------------------------------------------- 11. messages


def test_a_text_file_is_not_a_checkpoint_and_code_is_refused_in_a_sentence(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError) as info:
        load_checkpoint(text)
    msg = str(info.value)
    assert "not a checkpoint" in msg and "refused" not in msg and str(text) in msg
    code = tmp_path / "code.pth"
    torch.save({"model": {}, "f": print}, code)
    with pytest.raises(ValueError) as info:
        load_checkpoint(code)
    msg = str(info.value)
    assert "\x1b" not in msg and "\n" not in msg and "print" in msg and msg.endswith(".")


def test_a_work_dir_that_is_a_file(shapes, tmp_path, capsys):
    blocker = tmp_path / "w"
    blocker.write_text("a file")
    assert main(["train", "--config", DEMO, "--set", *tiny_sets(shapes, blocker)]) == 2
    err = one_line_error(capsys)
    assert "is a file" in err and "File exists" not in err


# ---------------------------------------------------------------------------- also


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and gfldet.__version__ in capsys.readouterr().out
    out = subprocess.run([sys.executable, "-m", "gfldet", "--version"], capture_output=True,
                         text=True, cwd=REPO, check=True)  # fmt: skip
    assert out.stdout.strip() == f"gfldet {gfldet.__version__}"


def test_infer_shows_progress(trained, tmp_path, capsys):
    photos = image_folder(trained, tmp_path / "photos", n=2)
    assert infer(trained, str(photos), "--out-dir", str(tmp_path / "o")) == 0
    out = capsys.readouterr().out  # on stdout, as training's bars: stderr is for errors
    assert re.search(r"infer: 100%\|.*\| 2/2 ", out), out  # tqdm's finished bar
