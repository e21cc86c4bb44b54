"""gfldet.core.records: detections as COCO results and as prediction records."""

from __future__ import annotations

import json

import pytest
import torch

from gfldet.core.records import detections_to_coco, prediction_record, write_predictions_json

pytestmark = pytest.mark.usefixtures("one_thread")

# Non-contiguous ids; "bird" (5) has no annotations at all.
CAT_IDS = [2, 5, 9]


NAMES = ["cat", "bird", "dog"]


def test_detections_to_coco_maps_ids_and_xywh():
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.234, 2.0]]),
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.tensor([2, 0]),
    }
    out = detections_to_coco(7, det, CAT_IDS)
    assert [r["category_id"] for r in out] == [9, 2]
    assert out[0] == {
        "image_id": 7,
        "category_id": 9,
        "bbox": [10.0, 20.0, 40.0, 60.0],
        "score": pytest.approx(0.9),
    }
    assert out[1]["bbox"] == [0.0, 0.0, 1.23, 2.0]
    assert (
        detections_to_coco(
            7,
            {
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.long),
            },
            CAT_IDS,
        )
        == []
    )


def test_a_prediction_record_keeps_the_detections_over_the_threshold(tmp_path):
    det = {
        "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([2, 0]),
    }
    rec = prediction_record("x.jpg", (48, 64, 3), det, CAT_IDS, NAMES, score_thr=0.5)
    assert rec["width"] == 64 and rec["height"] == 48
    assert rec["detections"] == [
        {
            "bbox_xyxy": [1.0, 2.0, 3.0, 4.0],
            "score": pytest.approx(0.9),
            "category_id": 9,
            "category_name": "dog",
        }
    ]
    write_predictions_json([rec], tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())[0]["file"] == "x.jpg"
