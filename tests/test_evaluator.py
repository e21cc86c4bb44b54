"""Tests for gfldet.evaluation.evaluator and gfldet.core.draw (tiny fakes, no real model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from gfldet.core.draw import color_for_label, draw_detections
from gfldet.core.records import detections_to_coco, prediction_record, write_predictions_json
from gfldet.evaluation.evaluator import coco_evaluate, format_metrics, predict_dataset
from gfldet.inference.infer import expand_inputs

# Non-contiguous ids; "bird" (5) has no annotations at all.
CAT_IDS = [2, 5, 9]
NAMES = ["cat", "bird", "dog"]
GT = [  # (image_id, category_id, [x, y, w, h])
    (1, 2, [10.0, 10.0, 100.0, 100.0]),
    (1, 9, [120.0, 120.0, 60.0, 60.0]),
    (2, 9, [20.0, 20.0, 100.0, 80.0]),
    (3, 2, [50.0, 50.0, 40.0, 40.0]),
]


@pytest.fixture
def coco_gt(tmp_path) -> COCO:
    data = {
        "images": [
            {"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in (1, 2, 3)
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES, strict=True)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            for k, (img, cat, box) in enumerate(GT)
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return COCO(str(path))


def _results(shift_frac: float = 0.0) -> list[dict]:
    # Shifting a box right by w/4 gives IoU = 0.75 / 1.25 = 0.6 with its gt.
    return [
        {
            "image_id": img,
            "category_id": cat,
            "score": 1.0,
            "bbox": [box[0] + shift_frac * box[2], box[1], box[2], box[3]],
        }
        for img, cat, box in GT
    ]


def test_perfect_detections(coco_gt, tmp_path, capsys):
    m = coco_evaluate(coco_gt, _results(), NAMES, CAT_IDS, tmp_path / "out")
    assert m["AP"] == pytest.approx(1.0, abs=1e-6)
    assert m["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert m["per_class"]["cat"] == {
        "AP": pytest.approx(1.0),
        "AP50": pytest.approx(1.0),
        "recall": pytest.approx(1.0),
        "num_gt": 2,
        "num_det": 2,
    }
    assert m["per_class"]["dog"]["num_gt"] == 2
    assert math.isnan(m["per_class"]["bird"]["AP"]) and m["per_class"]["bird"]["num_gt"] == 0
    assert all(isinstance(m[k], float) for k in ("AP", "AP75", "AR100"))

    out = capsys.readouterr().out
    assert "Average Precision" in out
    table = out[out.index("num_gt") :]
    assert all(n in table for n in NAMES)
    bird_line = next(line for line in table.splitlines() if line.startswith("bird"))
    assert "-" in bird_line

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["AP"] == pytest.approx(1.0) and saved["per_class"]["bird"]["AP"] is None
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert dets == _results()  # loadRes must not have mutated what we wrote
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert format_metrics(m).startswith("AP 1.000 | AP50 1.000 | AP75 1.000")


def test_iou_06_passes_ap50_not_ap75(coco_gt):
    m = coco_evaluate(coco_gt, _results(shift_frac=0.25), NAMES, CAT_IDS, None)
    assert m["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert m["AP75"] == pytest.approx(0.0, abs=1e-6)
    assert m["per_class"]["dog"]["AP50"] == pytest.approx(1.0)


def test_empty_results_give_zeros(coco_gt, tmp_path):
    with pytest.warns(UserWarning, match="no detections"):
        m = coco_evaluate(coco_gt, [], NAMES, CAT_IDS, tmp_path)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0
    assert m["per_class"]["cat"]["AP"] == 0.0 and m["per_class"]["cat"]["recall"] == 0.0
    assert m["quality"]["num_matched"] == 0 and math.isnan(m["quality"]["pearson"])
    assert json.loads((tmp_path / "detections.json").read_text()) == []
    assert (tmp_path / "calibration.png").is_file() and not list(tmp_path.glob("pr_curves_*"))


def test_img_ids_restrict_evaluation(coco_gt):
    # Only image 1 is evaluated: its detections are perfect; misses on image 2 don't count.
    res = [r for r in _results() if r["image_id"] == 1]
    m = coco_evaluate(coco_gt, res, NAMES, CAT_IDS, None, img_ids=[1])
    assert m["AP"] == pytest.approx(1.0, abs=1e-6)
    assert m["per_class"]["dog"]["num_gt"] == 1
    assert coco_evaluate(coco_gt, res, NAMES, CAT_IDS, None)["AP"] < 1.0


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


class FakeModel(torch.nn.Module):
    """Returns each image's gt boxes (xyxy) as detections, keyed by image_id."""

    def predict(self, images: torch.Tensor, targets: list[dict]) -> list[dict]:
        assert images.dtype == torch.uint8 and not self.training
        outs = []
        for t in targets:
            rows = [(CAT_IDS.index(c), b) for i, c, b in GT if i == t["image_id"]]
            boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in rows])
            outs.append(
                {
                    "boxes": boxes.reshape(-1, 4),
                    "scores": torch.ones(len(rows)),
                    "labels": torch.tensor([lbl for lbl, _ in rows], dtype=torch.long),
                }
            )
        return outs


def test_predict_dataset_fake_model(coco_gt):
    imgs = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    loader = [  # image 2 appears twice, as with a padded distributed sampler
        (imgs, [{"image_id": 1}, {"image_id": 2}]),
        (imgs, [{"image_id": 3}, {"image_id": torch.tensor(2)}]),
    ]
    model = FakeModel().train()
    results = predict_dataset(model, loader, "cpu", progress=False, cat_ids=CAT_IDS)
    assert model.training  # train mode restored
    assert sorted(r["image_id"] for r in results) == [1, 1, 2, 3]
    assert sorted((r["image_id"], r["category_id"], r["bbox"]) for r in results) == sorted(
        (img, cat, box) for img, cat, box in GT
    )
    m = coco_evaluate(coco_gt, results, NAMES, CAT_IDS, None)
    assert m["AP"] == pytest.approx(1.0, abs=1e-6)


def _write_image(path):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))


def test_expand_inputs(tmp_path):
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


def test_draw_detections():
    img = np.full((120, 160, 3), 127, np.uint8)
    before = img.copy()
    out = draw_detections(
        img,
        torch.tensor([[10.0, 5.0, 80.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        np.array([0.87, 0.1]),
        [2, 0],
        NAMES,
        score_thr=0.3,
    )
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(img, before)
    assert not np.array_equal(out, img)
    assert np.array_equal(out[100:, 100:], img[100:, 100:])  # far from the box: untouched
    assert np.array_equal(draw_detections(img, np.zeros((0, 4)), [], [], NAMES), img)
    assert color_for_label(0) != color_for_label(1) and len(color_for_label(123)) == 3


def test_prediction_record_json(tmp_path):
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


def _xywh_shift(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2], box[3]]


def test_quality_calibration_uses_coco_matching(coco_gt, tmp_path, capsys):
    # IoU of a box shifted right by f * w with the original: (1 - f) / (1 + f).
    cat_box, dog_box = GT[0][2], GT[2][2]
    results = [
        {"image_id": 1, "category_id": 2, "score": 0.9, "bbox": list(cat_box)},  # IoU 1
        # A lower-scored duplicate of the same gt: unmatched (the gt is taken), not counted.
        {"image_id": 1, "category_id": 2, "score": 0.8, "bbox": _xywh_shift(cat_box, 5.0)},
        {"image_id": 2, "category_id": 9, "score": 0.6, "bbox": _xywh_shift(dog_box, 25.0)},
        {"image_id": 3, "category_id": 2, "score": 0.3, "bbox": _xywh_shift(GT[3][2], 10.0)},
        # A wrong class and a box far from any gt: no match.
        {"image_id": 2, "category_id": 2, "score": 0.7, "bbox": list(dog_box)},
        {"image_id": 1, "category_id": 9, "score": 0.5, "bbox": [0.0, 150.0, 20.0, 20.0]},
    ]
    m = coco_evaluate(coco_gt, results, NAMES, CAT_IDS, tmp_path)
    q = m["quality"]
    assert q["num_matched"] == 3
    scores, ious = np.array([0.9, 0.6, 0.3]), np.array([1.0, 0.75 / 1.25, 30.0 / 50.0])
    assert q["pearson"] == pytest.approx(np.corrcoef(scores, ious)[0, 1])
    assert q["spearman"] == pytest.approx(np.corrcoef([2, 1, 0], [2, 0.5, 0.5])[0, 1])
    assert "Pearson" in capsys.readouterr().out

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["quality"]["pearson"] == pytest.approx(q["pearson"])
    assert m["per_class"]["cat"]["num_det"] == 4 and m["per_class"]["dog"]["num_det"] == 2
    assert m["per_class"]["dog"]["recall"] == pytest.approx(0.5)  # 1 of 2 dogs at IoU 0.5
    rows = (tmp_path / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,AP,AP50,recall,num_gt,num_det"
    assert rows[2] == "bird,,,,0,0" and rows[3].startswith("dog,") and rows[3].endswith(",2,2")
    for name in ("calibration.png", "pr_curves_1.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pr_curves_one_file_per_group_of_ten(tmp_path):
    from pycocotools.coco import COCO

    from gfldet.evaluation import evaluator

    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 13)]
    anns = [{"id": i, "image_id": 1, "category_id": i, "bbox": [5.0 * i, 5.0, 4.0, 4.0],
             "area": 16.0, "iscrowd": 0} for i in range(1, 13)]  # fmt: skip
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": [{"id": 1, "width": 80, "height": 20}],
                                "categories": cats, "annotations": anns}))  # fmt: skip
    (tmp_path / "pr_curves_7.png").write_bytes(b"not written by an evaluation: kept")
    res = [
        {"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
        for a in anns
    ]
    evaluator.coco_evaluate(COCO(str(path)), res, [c["name"] for c in cats], list(range(1, 13)),
                            tmp_path)  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("pr_curves_*.png")) == [
        "pr_curves_1.png",
        "pr_curves_2.png",
        "pr_curves_7.png",
    ]
