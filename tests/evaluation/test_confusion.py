"""The detection confusion matrix of an evaluation, on hand-built detections with a known answer,
and what an evaluation writes into its --out-dir (never removing files it did not write)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from gfldet.core.draw import DRAW_SCORE_THR
from gfldet.evaluation.confusion import confusion_matrix
from gfldet.evaluation.evaluator import coco_evaluate

CAT_IDS = [2, 5, 9]
NAMES = ["cat", "bird", "dog"]
A, B, C, D = [10, 10, 100, 100], [120, 120, 60, 60], [20, 20, 100, 80], [50, 50, 40, 40]
CROWD = [100, 100, 80, 80]
GT = [  # image, category, xywh, iscrowd
    (1, 2, A, 0),
    (1, 9, B, 0),
    (2, 9, C, 0),
    (3, 2, D, 0),
    (3, 9, CROWD, 1),
]


def _coco(tmp_path, gt=GT, cat_ids=CAT_IDS, names=NAMES) -> COCO:
    images = sorted({g[0] for g in gt})
    data = {
        "images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in images],
        "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, names, strict=True)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": crowd,
            }
            for k, (i, c, b, crowd) in enumerate(gt)
        ],
    }
    path = tmp_path / f"gt{len(cat_ids)}.json"
    path.write_text(json.dumps(data))
    return COCO(str(path))


def _det(image_id, cat, box, score, dx=0.0) -> dict:
    return {
        "image_id": image_id,
        "category_id": cat,
        "score": score,
        "bbox": [box[0] + dx, box[1], box[2], box[3]],
    }


DETS = [
    _det(1, 2, A, 0.9),  # cat on the cat: right
    _det(1, 9, A, 0.8, dx=5),  # dog on the cat, already taken: a false positive
    _det(1, 5, B, 0.7),  # bird on the dog: a confusion
    _det(2, 9, C, DRAW_SCORE_THR - 0.1),  # below the threshold: the dog counts as missed
    _det(2, 2, [150, 0, 30, 30], 0.5),  # cat on nothing: a false positive
    _det(3, 9, [110, 110, 60, 60], 0.9),  # inside the crowd region: ignored
    # image 3's cat has no detection: missed
]
#                 cat bird dog background  (prediction)
EXPECTED = [
    [1, 0, 0, 1],  # cat
    [0, 0, 0, 0],  # bird
    [0, 1, 0, 1],  # dog
    [1, 0, 1, 0],  # background (the last cell is not defined)
]


def test_confusion_matrix_of_hand_built_detections(tmp_path):
    m = confusion_matrix(_coco(tmp_path), DETS, CAT_IDS)
    assert m.tolist() == EXPECTED
    lower = confusion_matrix(_coco(tmp_path), DETS, CAT_IDS, score_thr=0.1)
    assert lower[2].tolist() == [0, 1, 1, 0]  # the dog of image 2 is found at score >= 0.1


def test_right_class_wins_the_box_over_a_higher_scoring_wrong_class(tmp_path):
    dets = [_det(2, 2, C, 0.95), _det(2, 9, C, 0.6, dx=4)]
    m = confusion_matrix(_coco(tmp_path), dets, CAT_IDS, img_ids=[2])
    assert m[2, 2] == 1 and m[3, 0] == 1 and m.sum() == 2


def test_rows_and_columns_add_up(tmp_path):
    rng = np.random.default_rng(0)
    dets = [
        _det(
            int(rng.integers(1, 4)),
            int(rng.choice(CAT_IDS)),
            list(rng.uniform(0, 150, 2)) + list(rng.uniform(10, 90, 2)),
            float(rng.random()),
        )
        for _ in range(60)
    ]
    m = confusion_matrix(_coco(tmp_path), dets, CAT_IDS)
    gts = [sum(1 for g in GT if g[1] == c and not g[3]) for c in CAT_IDS]
    assert m[:3].sum(axis=1).tolist() == gts  # every non-crowd gt is counted once
    assert m[:, :3].sum() <= sum(1 for d in dets if d["score"] >= DRAW_SCORE_THR)


def test_evaluation_writes_the_confusion_matrix(tmp_path, capsys):
    out = tmp_path / "out"
    metrics = coco_evaluate(_coco(tmp_path), DETS, NAMES, CAT_IDS, out)
    conf = metrics["confusion"]
    assert conf["matrix"] == EXPECTED
    assert conf["iou_thr"] == 0.5 and conf["score_thr"] == DRAW_SCORE_THR
    assert conf["classes"] == [*NAMES, "background"]
    assert json.loads((out / "metrics.json").read_text())["confusion"]["matrix"] == EXPECTED
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ground truth \\ prediction", *NAMES, "background"]
    assert rows[1] == ["cat", "1", "0", "0", "1"] and rows[4] == ["background", "1", "0", "1", ""]
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "1 right, 1 of another class, 2 missed, 2 false positives" in capsys.readouterr().out


def test_no_detections_gives_every_gt_missed(tmp_path):
    with pytest.warns(UserWarning, match="no detections"):
        metrics = coco_evaluate(_coco(tmp_path), [], NAMES, CAT_IDS, None)
    assert metrics["confusion"]["matrix"] == [[0, 0, 0, 2], [0] * 4, [0, 0, 0, 2], [0] * 4]


def _many_classes(tmp_path, n: int) -> tuple[COCO, list[str], list[int], list[dict]]:
    ids = list(range(1, n + 1))
    gt = [(1, c, [10 * c, 10, 8, 8], 0) for c in ids]
    dets = [_det(1, c, [10 * c, 10, 8, 8], 0.9) for c in ids]
    return _coco(tmp_path, gt, ids, [f"c{c}" for c in ids]), [f"c{c}" for c in ids], ids, dets


def test_eval_out_dir_keeps_users_pr_curves_files(tmp_path):
    """Issue 19: `eval --out-dir DIR` deleted every pr_curves_*.png already in DIR."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "pr_curves_7.png").write_bytes(b"the user's own figure")
    (out / "pr_curves_2.png").write_bytes(b"another one")
    coco_evaluate(_coco(tmp_path), DETS, NAMES, CAT_IDS, out)
    assert (out / "pr_curves_7.png").read_bytes() == b"the user's own figure"
    assert (out / "pr_curves_2.png").read_bytes() == b"another one"
    assert (out / "pr_curves_1.png").is_file()


def test_eval_removes_only_its_own_earlier_pr_curves(tmp_path):
    """A 25-class evaluation writes pr_curves_1..3; a 3-class one in the same folder removes
    the groups the earlier one wrote and no longer apply, but not a file edited since."""
    out = tmp_path / "out"
    coco, names, ids, dets = _many_classes(tmp_path, 25)
    coco_evaluate(coco, dets, names, ids, out)
    assert sorted(p.name for p in out.glob("pr_curves_*.png")) == [
        "pr_curves_1.png",
        "pr_curves_2.png",
        "pr_curves_3.png",
    ]
    assert "matrix" in json.loads((out / "metrics.json").read_text())["confusion"]
    (out / "pr_curves_3.png").write_bytes(b"edited by the user")
    coco_evaluate(_coco(tmp_path), DETS, NAMES, CAT_IDS, out)
    assert sorted(p.name for p in out.glob("pr_curves_*.png")) == [
        "pr_curves_1.png",
        "pr_curves_3.png",
    ]
    assert (out / "pr_curves_3.png").read_bytes() == b"edited by the user"
    manifest = json.loads((out / "eval_manifest.json").read_text())["files"]
    assert set(manifest) == {
        "detections.json",
        "metrics.json",
        "per_class.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "calibration.png",
        "pr_curves_1.png",
    }


def test_a_manifest_never_reaches_outside_its_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "pr_curves_1.png"
    victim.write_bytes(b"x")
    import hashlib

    digest = hashlib.sha256(b"x").hexdigest()
    files = {"../pr_curves_1.png": digest, str(victim): digest}
    (out / "eval_manifest.json").write_text(json.dumps({"files": files}))
    coco_evaluate(_coco(tmp_path), DETS, NAMES, CAT_IDS, out)
    assert victim.read_bytes() == b"x"


def test_large_matrices_stay_out_of_metrics_json(tmp_path):
    coco, names, ids, dets = _many_classes(tmp_path, 31)
    metrics = coco_evaluate(coco, dets, names, ids, None)
    assert "matrix" not in metrics["confusion"] and len(metrics["confusion"]["classes"]) == 32
