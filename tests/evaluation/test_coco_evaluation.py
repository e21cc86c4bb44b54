"""gfldet.evaluation.evaluator: COCO metrics on hand-made detections, per-class rows, the score /
IoU calibration of the quality estimate, PR-curve files, and prediction over a dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from gfldet.cli import main
from gfldet.data.coco import CocoDetection
from gfldet.evaluation.evaluator import (
    _ranks,
    coco_evaluate,
    format_metrics,
    predict_dataset,
    quality_calibration,
)
from tests.helpers import DEMO, identity, tiny_train_sets

pytestmark = pytest.mark.usefixtures("one_thread")


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


def _xywh_shift(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2], box[3]]


def test_val_annotations_without_iscrowd_and_area_are_evaluated(shapes, tmp_path):
    data = json.loads(Path(shapes["val_ann"]).read_text())
    for a in data["annotations"]:
        del a["iscrowd"], a["area"]
    val = tmp_path / "val.json"
    val.write_text(json.dumps(data))
    work = tmp_path / "w"
    sets = tiny_train_sets(
        shapes, work, f"data.val.ann_file={val}", "train.max_iters=1", "train.eval_interval=1"
    )
    assert main(["train", "--config", DEMO, "--set", *sets]) == 0
    assert math.isfinite(json.loads((work / "metrics.json").read_text())["AP"])


def test_pycocotools_scores_a_category_id_of_zero(tmp_path):
    """YOLO's class 0 is category id 0: evaluation must count it like any other id."""
    from gfldet.evaluation.evaluator import coco_evaluate

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2)]
    gts = [(1, 0, [10, 10, 30, 30]), (1, 1, [50, 50, 40, 30]), (2, 0, [5, 60, 20, 20])]
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(gts)
    ]
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}],
    }
    ds = CocoDetection(tmp_path / "gt.json", tmp_path, identity, train=False, data=data)
    perfect = [{"image_id": i, "category_id": c, "bbox": b, "score": 0.9} for i, c, b in gts]
    metrics = coco_evaluate(ds.coco, perfect, ds.class_names, ds.cat_ids, None, plots=False)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["cat"]["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["cat"]["num_gt"] == 2
    # A wrong class-0 detection is a false positive of class 0, not ignored.
    fp = [*perfect, {"image_id": 2, "category_id": 0, "bbox": [60, 5, 30, 30], "score": 0.95}]
    metrics = coco_evaluate(ds.coco, fp, ds.class_names, ds.cat_ids, None, plots=False)
    assert metrics["per_class"]["cat"]["num_det"] == 3
    assert metrics["per_class"]["cat"]["AP"] < 1.0
    assert metrics["per_class"]["dog"]["AP"] == pytest.approx(1.0)


def test_perfect_detections_score_1_and_the_files_are_written(coco_gt, tmp_path, capsys):
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


def test_predict_dataset_collects_each_image_once_and_restores_train_mode(coco_gt):
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


def test_pr_curves_one_file_per_group_of_ten_classes(tmp_path):
    from pycocotools.coco import COCO

    from gfldet.evaluation import evaluator

    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 13)]
    anns = [
        {
            "id": i,
            "image_id": 1,
            "category_id": i,
            "bbox": [5.0 * i, 5.0, 4.0, 4.0],
            "area": 16.0,
            "iscrowd": 0,
        }
        for i in range(1, 13)
    ]
    path = tmp_path / "gt.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "width": 80, "height": 20}],
                "categories": cats,
                "annotations": anns,
            }
        )
    )
    (tmp_path / "pr_curves_7.png").write_bytes(b"not written by an evaluation: kept")
    res = [
        {"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
        for a in anns
    ]
    evaluator.coco_evaluate(
        COCO(str(path)), res, [c["name"] for c in cats], list(range(1, 13)), tmp_path
    )
    assert sorted(p.name for p in tmp_path.glob("pr_curves_*.png")) == [
        "pr_curves_1.png",
        "pr_curves_2.png",
        "pr_curves_7.png",
    ]


def test_spearman_ranks_and_calibration():
    assert _ranks(np.array([3.0, 1.0, 2.0, 2.0])).tolist() == [3.0, 0.0, 1.5, 1.5]
    scores = np.array([0.1, 0.35, 0.5, 0.9])
    ious = np.array([0.55, 0.9, 0.7, 0.95])
    q = quality_calibration(scores, ious)
    s, i = scores - scores.mean(), ious - ious.mean()
    assert q["pearson"] == pytest.approx((s * i).sum() / math.sqrt((s * s).sum() * (i * i).sum()))
    # Ranks 0,1,2,3 vs 0,2,1,3: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert q["spearman"] == pytest.approx(0.8)
    assert q["num_matched"] == 4
    bins = {(b["score_lo"], b["score_hi"]): b for b in q["reliability"]}
    assert bins[(0.3, 0.4)]["count"] == 1 and bins[(0.3, 0.4)]["mean_iou"] == pytest.approx(0.9)
    assert bins[(0.9, 1.0)]["mean_score"] == pytest.approx(0.9)  # 0.9 falls in the last bin
    assert sum(b["count"] for b in q["reliability"]) == 4
    assert math.isnan(bins[(0.0, 0.1)]["mean_iou"])
    empty = quality_calibration(np.zeros(0), np.zeros(0))
    assert math.isnan(empty["pearson"]) and math.isnan(empty["spearman"])
    assert math.isnan(quality_calibration(np.ones(3), ious[:3])["pearson"])  # no spread
