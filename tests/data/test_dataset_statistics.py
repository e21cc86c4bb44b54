"""`gfldet data stats` (gfldet.data.stats): counts from the annotation file, the ATSS
assignment and edge distances checked against an independent per-image computation, the
reg_max fit and its suggestion, the files, the image sample, other box representations.

Tiny model on the 8 + 3 generated 64x64 images of the `shapes` fixture, CPU only."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gfldet.cli import main
from gfldet.config import Config, load_config
from gfldet.data.stats import dataset_statistics, format_statistics
from gfldet.data.synth import shapes_overrides, write_shapes_dataset
from gfldet.data.transforms import rescale_size
from gfldet.model.atss import atss_assign
from gfldet.model.box_ops import bbox2distance, grid_points, square_anchors
from tests.helpers import DEMO, TINY_MODEL

# 64x64 images resized to 180x180 (the factor of the shorter limit), padded to 192: the sizes,
# grids and boxes all differ from the original pixels.
SCALE = (200, 180)

pytestmark = pytest.mark.usefixtures("one_thread")


def stats_cfg(paths: dict, *extra: str, train_ann: Path | None = None) -> Config:
    """A tiny model on the tiny shapes dataset (as tests.helpers.tiny_train_sets)."""
    data = shapes_overrides({**paths, "train_ann": train_ann or paths["train_ann"]})
    scales = [f"data.train.img_scale=[{SCALE[0]},{SCALE[1]}]", "data.val.img_scale=[64,64]"]
    return load_config(DEMO, [*data, *scales, *TINY_MODEL, *extra])


@pytest.fixture(scope="module")
def with_crowd(shapes, tmp_path_factory) -> Path:
    """The train split plus one crowd box and one image without any annotation: neither is a
    training target."""
    data = json.loads(Path(shapes["train_ann"]).read_text())
    first = data["images"][0]
    crowd = {"bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 1}
    data["annotations"].append(
        {
            **crowd,
            "id": max(a["id"] for a in data["annotations"]) + 1,
            "image_id": first["id"],
            "category_id": data["categories"][0]["id"],
        }
    )
    next_id = max(i["id"] for i in data["images"]) + 1
    data["images"].append({**first, "id": next_id, "file_name": "no_such_file.jpg"})
    path = tmp_path_factory.mktemp("crowd") / "train.json"
    path.write_text(json.dumps(data))
    return path


def independent_assignment(ann_file: Path, strides: list[int], topk: int, anchor_scale: float):
    """Per image, on its own: resize, pad to 32, grids, anchors and `atss_assign` without the
    grid window (every anchor measured). Returns positives per level [L], the positives' edge
    distances [P, 4] in strides, and the number of gts."""
    data = json.loads(Path(ann_file).read_text())
    anns = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
    pos = np.zeros(len(strides), np.int64)
    dists, num_gts = [], 0
    for im in data["images"]:
        boxes = [a["bbox"] for a in anns if a["image_id"] == im["id"]]
        if not boxes:
            continue
        new_w, new_h, ws, hs = rescale_size(im["width"], im["height"], SCALE)
        gt = torch.tensor([[x * ws, y * hs, (x + w) * ws, (y + h) * hs] for x, y, w, h in boxes])
        gt[:, 0::2] = gt[:, 0::2].clamp(0, new_w)
        gt[:, 1::2] = gt[:, 1::2].clamp(0, new_h)
        ph, pw = math.ceil(new_h / 32) * 32, math.ceil(new_w / 32) * 32
        sizes = [(math.ceil(ph / s), math.ceil(pw / s)) for s in strides]
        points, point_strides = grid_points(sizes, strides)
        anchors = square_anchors(points, point_strides, anchor_scale)
        assigned, _ = atss_assign(anchors, [h * w for h, w in sizes], gt, topk=topk)
        start = 0
        for k, (h, w) in enumerate(sizes):
            a = assigned[start : start + h * w]
            p = (a >= 0).nonzero()[:, 0] + start
            pos[k] += len(p)
            s = float(strides[k])
            dists.append(bbox2distance(points[p] / s, gt[assigned[p]] / s))
            start += h * w
        num_gts += len(gt)
    return pos, torch.cat(dists).numpy(), num_gts


def test_counts_equal_the_annotation_file(shapes, with_crowd):
    stats = dataset_statistics(stats_cfg(shapes, train_ann=with_crowd), None)
    data = json.loads(with_crowd.read_text())
    usable = [a for a in data["annotations"] if not a["iscrowd"]]
    c = stats["counts"]
    assert c["images"] == len(data["images"]) == 9
    assert c["objects"] == len(usable) and c["crowd"] == 1
    with_boxes = {a["image_id"] for a in usable}
    assert c["images_without_boxes"] == len(data["images"]) - len(with_boxes) == 1
    per_image = Counter(a["image_id"] for a in usable)
    assert c["objects_per_image"]["max"] == max(per_image.values())
    assert c["objects_per_image"]["histogram"][0] == 1
    names = {cat["id"]: cat["name"] for cat in data["categories"]}
    expected = Counter(names[a["category_id"]] for a in usable)
    assert {r["name"]: r["objects"] for r in c["classes"] if r["objects"]} == dict(expected)
    assert len(c["classes"]) == len(data["categories"])
    sizes = [a["area"] for a in usable]
    area = Counter("small" if x < 32**2 else "medium" if x < 96**2 else "large" for x in sizes)
    assert c["coco_area"] == {k: area.get(k, 0) for k in ("small", "medium", "large")}
    # The crowd box and the empty image are not training targets: not in the sizes either.
    assert stats["sizes"]["count"] == len(usable)
    val = json.loads(Path(shapes["val_ann"]).read_text())
    o = stats["other_split"]
    assert (o["split"], o["images"], o["objects"]) == (
        "val",
        len(val["images"]),
        len(val["annotations"]),
    )


def test_assignment_and_edges_match_an_independent_computation(shapes):
    # reg_max 1: small enough that edges lie beyond it on these images.
    stats = dataset_statistics(stats_cfg(shapes, "model.head.reg_max=1"), None)
    geo = stats["model"]
    assert geo["strides"] == [8, 16, 32, 64, 128] and geo["reg_max"] == 1
    pos, dist, num_gts = independent_assignment(
        shapes["train_ann"], geo["strides"], geo["topk"], geo["anchor_scale"]
    )
    assert pos.sum() > 0
    assert [lv["positives"] for lv in stats["levels"]] == pos.tolist()
    assert stats["sample"]["positives"] == pos.sum()
    assert stats["sample"]["gts"] == num_gts
    assert sum(lv["gts"] for lv in stats["levels"]) + stats["unassigned"]["gts"] == num_gts
    e = stats["edges"]
    assert e["count"] == dist.size == 4 * pos.sum()
    assert e["beyond"] == int((dist > 1.0).sum()) > 0
    assert e["beyond_share"] == pytest.approx((dist > 1.0).mean())
    assert e["percentiles"]["max"] == pytest.approx(float(dist.max()), abs=1e-3)
    # Percentiles are bin upper edges: never below the exact value, at most 1/16 stride above.
    exact_p99 = float(np.percentile(dist, 99, method="inverted_cdf"))
    assert 0 <= e["percentiles"]["p99"] - exact_p99 <= 1 / 16 + 1e-6

    assert e["fit"]["status"] == "too_small"
    need = e["fit"]["reg_max_for_p99"]
    assert (need - 0.1) * 1.0 >= e["percentiles"]["p99"] and need >= 2
    assert f"model.head.reg_max: {need}" in stats["suggestion"]
    assert f"model.neck.extra_levels: {geo['extra_levels'] + 1}" in stats["suggestion"]
    assert "extra_level" in e["fit"]


def test_default_reg_max_fits_small_images(shapes):
    stats = dataset_statistics(stats_cfg(shapes), None)
    e = stats["edges"]
    assert e["count"] > 0 and e["beyond"] == 0 and e["beyond_share"] == 0
    assert e["limit"] == 16.0 and e["dfl_clamp"] == pytest.approx(15.9)
    assert e["fit"]["status"] == "fits"
    assert stats["suggestion"].startswith("the configuration fits")
    assert "reg_max:" not in stats["suggestion"]


def test_files_and_text_summary(shapes, tmp_path):
    out = tmp_path / "stats"
    stats = dataset_statistics(stats_cfg(shapes), out)
    for name in ("class_histogram.png", "box_sizes.png", "edge_distances.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    saved = json.loads((out / "data_stats.json").read_text())
    assert saved["counts"] == stats["counts"] and saved["suggestion"] == stats["suggestion"]
    assert not list(out.glob(".*.tmp"))  # atomic writes left nothing behind
    text = format_statistics(stats)
    assert all(r["name"] in text for r in stats["counts"]["classes"])
    assert "P3" in text and "P7" in text
    # The suggestion comes last (wrapped: its continuation lines are indented).
    last = text.split("\nsuggestion: ")[1]
    assert last.startswith("the configuration fits")
    assert all(line.startswith("  ") for line in last.splitlines()[1:])


def test_max_images_limits_the_analysed_images(shapes):
    full = dataset_statistics(stats_cfg(shapes), None)
    stats = dataset_statistics(stats_cfg(shapes), None, max_images=3)
    again = dataset_statistics(stats_cfg(shapes), None, max_images=3)
    assert (stats["sample"]["images"], stats["sample"]["of"]) == (3, 8)
    assert stats["sample"]["seed"] is not None and full["sample"]["seed"] is None
    assert stats["sample"]["gts"] < full["sample"]["gts"]
    assert stats["levels"] == again["levels"]  # a fixed sample
    # Counts and sizes still cover the whole split.
    assert stats["counts"] == full["counts"] and stats["sizes"]["count"] == full["sizes"]["count"]
    assert "seeded sample of 8" in format_statistics(stats)
    with pytest.raises(ValueError, match="max_images"):
        dataset_statistics(stats_cfg(shapes), None, max_images=0)


def test_dirac_box_skips_the_fit_with_a_reason(shapes):
    cfg = stats_cfg(shapes, "model.head.box=dirac", "model.head.reg_max=1")
    stats = dataset_statistics(cfg, None)
    fit = stats["edges"]["fit"]
    assert fit["status"] == "skipped" and "dirac" in fit["reason"]
    assert "limit" not in stats["edges"] and stats["edges"]["count"] > 0
    assert (
        stats["suggestion"].startswith("edge fit skipped") and "reg_max:" not in stats["suggestion"]
    )
    assert all(lv["beyond_share"] is None for lv in stats["levels"])


def test_multi_scale_uses_the_upper_end(shapes):
    stats = dataset_statistics(stats_cfg(shapes, "data.train.ms_short_range=[40,80]"), None)
    assert stats["scale"]["img_scale"] == [200, 80]
    assert "upper end" in stats["scale"]["note"]


@pytest.mark.parametrize("inside", ["train/images/stats", "val/images"])
def test_out_inside_an_image_split_is_refused(tmp_path, capsys, inside):
    """`data stats --out DIR` with DIR in (or below) data.train/val.img_dir would put its PNG
    plots among the split's images, where a YOLO split or an infer glob takes them for images:
    a one-line error, before anything is computed or written."""
    from gfldet.cli import main

    tiny = {"num_train": 2, "num_val": 1, "img_size": 64, "max_size": 40, "max_objects": 2}
    paths = write_shapes_dataset(tmp_path / "shapes", **tiny)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "shapes" / inside
    args = ["data", "stats", "--config", DEMO, "--out", str(out)]
    assert main([*args, "--set", *shapes_overrides(paths)]) == 2
    err = capsys.readouterr().err
    split = inside.split("/")[0]
    assert err.startswith("gfldet: error: ") and len(err.strip().splitlines()) == 1, err
    assert f"inside data.{split}.img_dir" in err and str(out) in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_the_data_stats_command_prints_and_writes_its_files(shapes, tmp_path, capsys):
    data = [*shapes_overrides(shapes), "data.train.img_scale=[64,64]"]
    out = tmp_path / "stats"
    assert main(["data", "stats", "--config", DEMO, "--out", str(out), "--set", *data]) == 0
    printed = capsys.readouterr().out
    assert "ATSS assignment on" in printed and "suggestion:" in printed
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats and all(
        (out / n).is_file() for n in ("class_histogram.png", "box_sizes.png", "edge_distances.png")
    )
    assert main(["data", "stats", "--config", DEMO, "--max-images", "0", "--set", *data]) == 2
