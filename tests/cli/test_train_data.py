"""`gfldet train --data PATH --model NAME`: from a dataset to a trained detector with no config
written by the user (gfldet.presets), and `gfldet eval` / `infer` on its checkpoint with the
work dir's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from gfldet import cli
from gfldet.config import ConfigError, load_config
from gfldet.data.convert import convert_annotations
from gfldet.model.build import build_model
from gfldet.presets import DEFAULT_PRESET, PRESETS, config_for_data, free_work_dir

LITE_WEIGHTS = "shufflenetv2_x1-5666bf0f80.pth"  # the file torchvision's lite backbone downloads


@pytest.fixture(scope="module")
def yolo(shapes, tmp_path_factory) -> Path:
    """The tiny shapes dataset as a YOLO data.yaml (both splits), as users export them."""
    out = tmp_path_factory.mktemp("yolo")
    for split in ("train", "val"):
        convert_annotations(
            "coco", "yolo", shapes[f"{split}_ann"], out, shapes[f"{split}_img_dir"], split=split
        )
    return out / "data.yaml"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """The current folder is an empty tmp folder (the default work dirs go there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A TORCH_HOME whose hub cache holds the lite backbone's ImageNet file (random weights
    here): the preset's pretrained weights load offline, as they do once downloaded."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    weights = torchvision.models.shufflenet_v2_x1_0().state_dict()
    torch.save(weights, home / "hub" / "checkpoints" / LITE_WEIGHTS)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_the_cli_names_the_same_presets_as_the_library():
    assert tuple(PRESETS) == cli.MODELS and cli.DEFAULT_MODEL == DEFAULT_PRESET


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_loads_and_builds_with_the_small_dataset_recipe(name):
    cfg = load_config(PRESETS[name], ["model.num_classes=3", "model.backbone.pretrained=null"])
    t, d = cfg.train, cfg.data.train
    assert t.lr_schedule == "cosine" and t.ema and t.ema_ramp_iters > 0 and t.patience > 0
    assert d.mosaic_prob > 0 and d.affine_scale and d.brightness > 0 and not d.filter_empty
    assert d.mosaic_close_epochs < t.epochs
    with torch.device("meta"):
        build_model(cfg.model)


def test_a_yolo_data_yaml_fills_both_splits_and_the_run_gets_its_own_work_dir(yolo, in_tmp):
    cfg = config_for_data(yolo, "lite")
    for split in (cfg.data.train, cfg.data.val):
        assert split.format == "yolo" and Path(split.ann_file) == yolo.resolve()
    assert cfg.data.train.img_dir.endswith("train") and cfg.data.val.img_dir.endswith("val")
    assert Path(cfg.work_dir) == Path("work_dirs") / f"{yolo.parent.name}-lite"
    # A folder that holds a run is never reused: the next run gets -2.
    Path(cfg.work_dir).mkdir(parents=True)
    (Path(cfg.work_dir) / "latest.pth").write_bytes(b"")
    assert config_for_data(yolo, "lite").work_dir.endswith("-lite-2")
    assert free_work_dir(in_tmp / "empty") == in_tmp / "empty"


def test_epochs_img_size_and_batch_size_then_set_items_win(yolo, in_tmp):
    base = load_config(PRESETS["lite"])
    cfg = config_for_data(yolo, "lite", epochs=10, img_size=256, batch_size=4)
    assert cfg.train.epochs == 10
    # Mosaic's closing epochs scale with the schedule (15 of 100 -> 2 of 10, at least 1).
    expect = max(1, round(base.data.train.mosaic_close_epochs * 10 / base.train.epochs))
    assert cfg.data.train.mosaic_close_epochs == expect
    assert cfg.data.train.img_scale == cfg.data.val.img_scale == [256, 256]
    assert cfg.data.train.batch_size == 4
    cfg = config_for_data(
        yolo, "lite", batch_size=4, overrides=["data.train.batch_size=3", "work_dir=mine"]
    )
    assert cfg.data.train.batch_size == 3 and cfg.work_dir == "mine"


def test_a_config_file_as_the_model(yolo, in_tmp):
    cfg = config_for_data(yolo, "shapes_demo")  # a shipped config by name
    assert cfg.model.backbone.depth == 18 and cfg.data.train.format == "yolo"
    assert cfg.work_dir.endswith("-shapes_demo")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "nano"}, "neither a preset"),
        ({"img_size": 300}, "multiple of 32.*320"),
        ({"epochs": 0}, "--epochs must be"),
        ({"batch_size": -1}, "--batch-size must be"),
    ],
)
def test_bad_choices_are_one_line_errors(yolo, in_tmp, kwargs, match):
    with pytest.raises((ValueError, ConfigError), match=match) as info:
        config_for_data(yolo, **kwargs)
    assert "\n" not in str(info.value)


def test_a_path_that_is_no_dataset_says_what_was_expected(in_tmp, capsys):
    assert cli.main(["train", "--data", str(in_tmp)]) == 2
    err = capsys.readouterr().err
    assert "not a dataset gfldet recognises" in err and "data.yaml" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train"], "give --config CFG, or --data PATH"),
        (["train", "--config", "shapes_demo", "--data", "x"], "not both"),
        (["train", "--config", "shapes_demo", "--epochs", "3"], "--epochs go with --data"),
    ],
)
def test_config_or_data_exactly_one(argv, match, capsys):
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_train_data_then_eval_and_infer_with_the_work_dirs_config(
    yolo, shapes, in_tmp, hub_cache, capsys
):
    # The command, verbatim but for the tiny sizes of the test data.
    argv = [
        "train",
        "--data",
        str(yolo),
        "--model",
        "lite",
        "--epochs",
        "2",
        "--img-size",
        "64",
        "--batch-size",
        "4",
        "--set",
        "device=cpu",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    work = in_tmp / "work_dirs" / f"{yolo.parent.name}-lite"
    assert f"work dir {Path('work_dirs') / work.name}" in out
    files = {p.name for p in work.iterdir()}
    assert {"config.yaml", "latest.pth", "best.pth", "metrics.json", "train_batch0.jpg"} <= files
    cfg = load_config(work / "config.yaml")  # the resolved config: reproducible and editable
    assert cfg.data.train.format == "yolo" and cfg.train.epochs == 2 and cfg.data.train.mosaic_prob
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert sum("val" in r for r in log) == 2  # evaluated every epoch: best.pth follows val AP

    config, ckpt = str(work / "config.yaml"), str(work / "best.pth")
    assert (
        cli.main(
            ["eval", "--config", config, "--checkpoint", ckpt, "--out-dir", str(in_tmp / "eval")]
        )
        == 0
    )
    assert (in_tmp / "eval" / "metrics.json").is_file()
    images = str(Path(shapes["val_img_dir"]) / "*.jpg")
    assert (
        cli.main(
            [
                "infer",
                "--config",
                config,
                "--checkpoint",
                ckpt,
                images,
                "--score-thr",
                "0",
                "--out-dir",
                str(in_tmp / "infer"),
                "--set",
                "model.test.score_thr=0.001",
            ]
        )
        == 0
    )
    preds = json.loads((in_tmp / "infer" / "predictions.json").read_text())
    assert len(preds) == 3
    # YOLO data: category ids are the YOLO class indices (an untrained model predicts many).
    ids = {d["category_id"] for p in preds for d in p["detections"]}
    assert ids and ids <= set(range(6))
