"""Fixtures shared by the tests of every folder (plain helpers live in tests/helpers.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gfldet.cli import main
from gfldet.config import Config
from gfldet.data.coco import read_coco_json
from gfldet.data.synth import CLASSES, write_shapes_dataset
from gfldet.data.voc import write_voc
from gfldet.data.yolo import write_yolo
from tests.helpers import (
    DEMO,
    REPO,
    read_log_records,
    tiny_train_cfg,
    tiny_train_sets,
    write_mixed_coco,
)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> dict:
    """A tiny shapes dataset (8 train / 3 val images of 64x64): its paths, as
    write_shapes_dataset returns them. Tests that need other sizes define their own."""
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(
        root, num_train=8, num_val=3, img_size=64, max_size=40, max_objects=3
    )


@pytest.fixture
def coco_files(tmp_path: Path) -> tuple[Path, Path]:
    """tests.helpers.write_mixed_coco in tmp_path: (its annotation file, its image folder)."""
    return write_mixed_coco(tmp_path), tmp_path / "images"


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_sets(shapes) -> Callable[..., list[str]]:
    """tiny_sets(work, *extra): tests.helpers.tiny_train_sets on the `shapes` dataset."""
    return lambda work, *extra: tiny_train_sets(shapes, work, *extra)


@pytest.fixture(scope="session")
def tiny_cfg(shapes) -> Callable[..., Config]:
    """tiny_cfg(work, *extra): the config of tiny_sets."""
    return lambda work, *extra: tiny_train_cfg(shapes, work, *extra)


@pytest.fixture(scope="session")
def log_records() -> Callable[[Path], list[dict]]:
    """log_records(work): the records of WORK/log.jsonl."""
    return read_log_records


@pytest.fixture
def gfldet_log(caplog):
    """The warnings of gfldet's logger, which stops propagating once training has set it up:
    listened to directly."""
    logger = logging.getLogger("gfldet")
    old = logger.propagate
    logger.propagate = False
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="gfldet")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = old


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, shapes) -> tuple[Path, list[str], dict]:
    """The tiny model trained for one iteration by `gfldet train` on `shapes`: (its checkpoint,
    the --set items of its run, the dataset's paths)."""
    root = tmp_path_factory.mktemp("tiny_trained")
    sets = tiny_train_sets(shapes, root / "work", "train.max_iters=1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does (a session fixture cannot use it)
    try:
        assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "work" / "latest.pth", sets, shapes


@pytest.fixture(scope="session")
def run_python() -> Callable[..., subprocess.CompletedProcess]:
    """run_python(*args, timeout=900, check=False, one_thread=True): `python ARGS` with this
    interpreter, from the repository root, output captured as text; with one_thread, one
    intra-op thread (OMP_NUM_THREADS=1, as the tests' own process under `one_thread`). The one
    way tests run a module or a script in a process of its own."""

    def run(
        *args: str, timeout: float = 900, check: bool = False, one_thread: bool = True
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if one_thread else None
        return subprocess.run(
            [sys.executable, *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    return run


def _split_sets(kind: str, ann: dict, img_dirs: dict) -> list[str]:
    """--set items pointing data.train / data.val at a dataset of this format."""
    out = []
    for split in ("train", "val"):
        out += [
            f"data.{split}.format={kind}",
            f"data.{split}.ann_file={ann[split]}",
            f"data.{split}.img_dir={img_dirs[split]}",
        ]
    return out


@pytest.fixture(scope="session")
def shapes_in_voc_and_yolo(tmp_path_factory, shapes) -> tuple[Path, dict[str, list[str]]]:
    """The `shapes` set written as VOC (ROOT/voc) and as YOLO (ROOT/yolo), and the COCO files of
    both made by `gfldet data convert` (ROOT/voc_train.json ...): (ROOT, {"voc", "yolo",
    "voc_as_coco", "yolo_as_coco": the --set items pointing both splits at that form})."""
    root = tmp_path_factory.mktemp("formats")
    sets = {}
    voc_ann, yolo_ann, coco_of = {}, {}, {"voc": {}, "yolo": {}}
    for split in ("train", "val"):
        coco = read_coco_json(Path(shapes[f"{split}_ann"]))
        # The val images are named as train's (000000.jpg ...): a prefix keeps them apart.
        prefix = "val_" if split == "val" else ""
        voc_ann[split] = write_voc(
            coco, shapes[f"{split}_img_dir"], root / "voc", split, prefix=prefix
        )
        yolo_ann[split] = write_yolo(coco, shapes[f"{split}_img_dir"], root / "yolo", split)
    voc_imgs = {"train": root / "voc", "val": root / "voc"}
    yolo_imgs = {s: root / "yolo" / "images" / s for s in ("train", "val")}
    # The 8 train images need not show every class: VOC gets all six by name (sorted, as VOC's
    # default order is), for both splits, as training and conversion alike.
    classes = sorted(CLASSES)
    for kind, ann, imgs in (("voc", voc_ann, voc_imgs), ("yolo", yolo_ann, yolo_imgs)):
        sets[kind] = _split_sets(kind, ann, imgs)
        if kind == "voc":
            sets[kind].append(f"data.classes=[{','.join(classes)}]")
        for split in ("train", "val"):
            out = root / f"{kind}_{split}.json"
            extra = ["--classes", *classes] if kind == "voc" else []
            args = [str(ann[split]), str(out), "--img-dir", str(imgs[split]), *extra]
            assert main(["data", "convert", "--from", kind, "--to", "coco", *args]) == 0
            coco_of[kind][split] = out
        sets[f"{kind}_as_coco"] = _split_sets("coco", coco_of[kind], imgs)
    return root, sets
