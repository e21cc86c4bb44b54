"""Your own data through the command line: VOC and YOLO sets train, evaluate and infer exactly
as their COCO conversion does."""

from __future__ import annotations

import json

import pytest

from gfldet.cli import main
from gfldet.data.synth import CLASSES
from tests.helpers import DEMO, TINY_RUN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["voc", "yolo"])
def test_voc_and_yolo_sets_give_the_detections_of_their_coco_conversion(
    shapes_in_voc_and_yolo, kind, capsys
):
    root, sets = shapes_in_voc_and_yolo
    detections = {}
    for name in (kind, f"{kind}_as_coco"):
        work = root / f"work_{name}"
        assert (
            main(["train", "--config", DEMO, "--set", *TINY_RUN, *sets[name], f"work_dir={work}"])
            == 0
        )
        ckpt = str(work / "latest.pth")
        out = root / f"eval_{name}"
        assert (
            main(
                [
                    "eval",
                    "--config",
                    DEMO,
                    "--checkpoint",
                    ckpt,
                    "--out-dir",
                    str(out),
                    "--set",
                    *TINY_RUN,
                    *sets[name],
                ]
            )
            == 0
        )
        detections[name] = json.loads((out / "detections.json").read_text())
        infer_out = root / f"infer_{name}"
        images = str(root / "yolo" / "images" / "val")
        args = [images, "--out-dir", str(infer_out), "--score-thr", "0"]
        assert (
            main(
                [
                    "infer",
                    "--config",
                    DEMO,
                    "--checkpoint",
                    ckpt,
                    *args,
                    "--set",
                    *TINY_RUN,
                    *sets[name],
                ]
            )
            == 0
        )
        detections[name + "_infer"] = json.loads((infer_out / "predictions.json").read_text())
    assert len(detections[kind]) > 0
    if kind == "yolo":  # the ids users see are the YOLO class indices
        from gfldet.core.files import torch_load_safely

        state = torch_load_safely(root / "work_yolo" / "latest.pth")
        assert state["cat_ids"] == list(range(len(CLASSES)))
        assert {d["category_id"] for d in detections[kind]} <= set(range(len(CLASSES)))
    assert detections[kind] == detections[f"{kind}_as_coco"]
    assert detections[kind + "_infer"] == detections[f"{kind}_as_coco_infer"]
    capsys.readouterr()
