"""Your own data through the command line: VOC and YOLO sets train, evaluate and infer exactly
as their COCO conversion does; `data convert`, `data check`; videos; results.csv, TensorBoard."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from gfldet.cli import main
from gfldet.data.coco import read_coco_json
from gfldet.data.synth import CLASSES, shapes_overrides
from gfldet.data.voc import write_voc
from gfldet.data.yolo import write_yolo

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "shapes_demo.yaml")
TINY = ["data.train.img_scale=[64,64]", "data.val.img_scale=[64,64]", "data.train.batch_size=2",
        "data.train.num_workers=0", "data.val.num_workers=0", "model.backbone.base_width=8",
        "model.neck.out_channels=16", "model.head.feat_channels=16",
        "model.head.stacked_convs=1", "model.head.num_groups=4", "model.test.score_thr=0.001",
        "train.epochs=1", "train.max_iters=2", "train.warmup_iters=2"]  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_thread")


def split_sets(kind: str, ann: dict, paths: dict) -> list[str]:
    """--set items pointing data.train / data.val at a dataset of this format."""
    out = []
    for split in ("train", "val"):
        out += [f"data.{split}.format={kind}", f"data.{split}.ann_file={ann[split]}",
                f"data.{split}.img_dir={paths[split]}"]  # fmt: skip
    return out


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """The tiny shapes set written as VOC and as YOLO, and the COCO files of both, made by
    `gfldet data convert`."""
    from gfldet.data.synth import write_shapes_dataset

    root = tmp_path_factory.mktemp("formats")
    shapes = write_shapes_dataset(root / "shapes", num_train=8, num_val=3, img_size=64,
                                  max_size=40, max_objects=3)  # fmt: skip
    sets = {}
    voc_ann, yolo_ann, coco_of = {}, {}, {"voc": {}, "yolo": {}}
    for split in ("train", "val"):
        coco = read_coco_json(Path(shapes[f"{split}_ann"]))
        # The val images are named as train's (000000.jpg ...): a prefix keeps them apart.
        prefix = "val_" if split == "val" else ""
        voc_ann[split] = write_voc(coco, shapes[f"{split}_img_dir"], root / "voc", split,
                                   prefix=prefix)  # fmt: skip
        yolo_ann[split] = write_yolo(coco, shapes[f"{split}_img_dir"], root / "yolo", split)
    voc_imgs = {"train": root / "voc", "val": root / "voc"}
    yolo_imgs = {s: root / "yolo" / "images" / s for s in ("train", "val")}
    # The 8 train images need not show every class: VOC gets all six by name (sorted, as VOC's
    # default order is), for both splits, as training and conversion alike.
    classes = sorted(CLASSES)
    for kind, ann, imgs in (("voc", voc_ann, voc_imgs), ("yolo", yolo_ann, yolo_imgs)):
        sets[kind] = split_sets(kind, ann, imgs)
        if kind == "voc":
            sets[kind].append(f"data.classes=[{','.join(classes)}]")
        for split in ("train", "val"):
            out = root / f"{kind}_{split}.json"
            extra = ["--classes", *classes] if kind == "voc" else []
            assert main(["data", "convert", "--from", kind, "--to", "coco", str(ann[split]),
                         str(out), "--img-dir", str(imgs[split]), *extra]) == 0  # fmt: skip
            coco_of[kind][split] = out
        sets[f"{kind}_as_coco"] = split_sets("coco", coco_of[kind], imgs)
    return root, sets


@pytest.mark.parametrize("kind", ["voc", "yolo"])
def test_voc_and_yolo_sets_give_the_detections_of_their_coco_conversion(formats, kind, capsys):
    root, sets = formats
    detections = {}
    for name in (kind, f"{kind}_as_coco"):
        work = root / f"work_{name}"
        assert main(["train", "--config", DEMO, "--set", *TINY, *sets[name],
                     f"work_dir={work}"]) == 0  # fmt: skip
        ckpt = str(work / "latest.pth")
        out = root / f"eval_{name}"
        assert main(["eval", "--config", DEMO, "--checkpoint", ckpt, "--out-dir", str(out),
                     "--set", *TINY, *sets[name]]) == 0  # fmt: skip
        detections[name] = json.loads((out / "detections.json").read_text())
        infer_out = root / f"infer_{name}"
        images = str(root / "yolo" / "images" / "val")
        args = [images, "--out-dir", str(infer_out), "--score-thr", "0"]
        assert main(["infer", "--config", DEMO, "--checkpoint", ckpt, *args, "--set", *TINY,
                     *sets[name]]) == 0  # fmt: skip
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


def test_convert_writes_what_the_reader_reads(formats):
    root, _ = formats
    converted = read_coco_json(root / "voc_val.json")
    from gfldet.data.voc import read_voc

    classes = [c["name"] for c in read_coco_json(root / "voc_train.json")["categories"]]
    val_list = root / "voc" / "ImageSets" / "Main" / "val.txt"
    assert converted == read_voc(val_list, root / "voc", classes)
    assert main(["data", "convert", "--from", "voc", "--to", "voc", "x", "y"]) == 2


def test_convert_never_writes_over_its_input(formats, capsys):
    root, _ = formats
    data_yaml = root / "yolo" / "data.yaml"
    before = data_yaml.read_bytes()
    args = ["--img-dir", str(root / "yolo" / "images" / "val")]
    assert main(["data", "convert", "--from", "yolo", "--to", "coco", str(data_yaml),
                 str(data_yaml), *args]) == 2  # fmt: skip
    assert "refusing to overwrite it" in capsys.readouterr().err
    assert data_yaml.read_bytes() == before


def write_image(path: Path, w: int = 40, h: int = 30) -> None:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def check(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["data", "check", "--config", DEMO, "--set", *args])
    return rc, capsys.readouterr().out


def test_data_check_finds_every_problem_and_passes_clean_data(shapes, tmp_path, capsys):
    clean = [*shapes_overrides(shapes)]  # fmt: skip
    rc, out = check(clean, capsys)
    assert rc == 0 and out.strip().endswith("OK: training and evaluation can read this data")
    assert "train (coco," in out and "8 images" in out

    # COCO: a duplicate annotation id, a missing image, a truncated JPEG, a wrong size.
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(imgs / name)
    data = (imgs / "b.jpg").read_bytes()
    (imgs / "b.jpg").write_bytes(data[: len(data) // 2])
    images = [{"id": i + 1, "file_name": n, "width": 40, "height": 30}
              for i, n in enumerate(["a.jpg", "b.jpg", "c.jpg", "gone.jpg"])]  # fmt: skip
    images[2]["width"] = 50
    anns = [{"id": 1, "image_id": i, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400,
             "iscrowd": 0} for i in (1, 2, 3, 4)]  # fmt: skip
    anns[3]["id"] = 1  # a duplicate
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "x"}]}))  # fmt: skip
    sets = [f"data.train.ann_file={bad}", f"data.train.img_dir={imgs}",
            f"data.val.ann_file={bad}", f"data.val.img_dir={imgs}"]  # fmt: skip
    rc, out = check(sets, capsys)
    assert rc == 1 and "PROBLEMS" in out
    for needle in ("annotation id 1 appears more than once", "gone.jpg", "truncated JPEG",
                   "c.jpg is 40x30"):  # fmt: skip
        assert needle in out, needle

    # YOLO: a line of 4 numbers and a class index out of range, named file:line.
    yolo = tmp_path / "yolo"
    (yolo / "images" / "train").mkdir(parents=True)
    (yolo / "labels" / "train").mkdir(parents=True)
    write_image(yolo / "images" / "train" / "p.jpg")
    (yolo / "labels" / "train" / "p.txt").write_text("0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n")
    (yolo / "data.yaml").write_text("names: [x, y]\n")
    ysets = ["data.train.format=yolo", f"data.train.ann_file={yolo / 'data.yaml'}",
             f"data.train.img_dir={yolo / 'images' / 'train'}", "data.val.format=yolo",
             f"data.val.ann_file={yolo / 'data.yaml'}",
             f"data.val.img_dir={yolo / 'images' / 'train'}"]  # fmt: skip
    rc, out = check(ysets, capsys)
    assert rc == 1 and "p.txt:1" in out and "p.txt:2" in out and "out of range" in out

    # VOC: an annotation file that is not XML.
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "JPEGImages").mkdir()
    write_image(voc / "JPEGImages" / "q.jpg")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("q\n")
    (voc / "Annotations" / "q.xml").write_text("<annotation><size>")
    vsets = ["data.train.format=voc", f"data.train.ann_file={voc / 'ImageSets/Main/train.txt'}",
             f"data.train.img_dir={voc}", "data.val.format=voc",
             f"data.val.ann_file={voc / 'ImageSets/Main/train.txt'}",
             f"data.val.img_dir={voc}"]  # fmt: skip
    rc, out = check(vsets, capsys)
    assert rc == 1 and "q.xml" in out and "not valid XML" in out


@pytest.mark.parametrize("skip", ["false", "true"])
def test_data_check_reports_a_missing_image_once(tmp_path, capsys, skip):
    # Found missing by the build, then again when every image is decoded: one line, not two.
    write_image(tmp_path / "a.jpg")
    images = [{"id": i, "file_name": n, "width": 40, "height": 30}
              for i, n in ((1, "a.jpg"), (2, "gone.jpg"))]  # fmt: skip
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400,
             "iscrowd": 0} for i in (1, 2)]  # fmt: skip
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "x"}]}))  # fmt: skip
    sets = [f"data.{split}.{key}={value}" for split in ("train", "val")
            for key, value in (("ann_file", ann), ("img_dir", tmp_path))]  # fmt: skip
    rc, out = check([*sets, f"data.skip_bad_images={skip}"], capsys)
    assert rc == (1 if skip == "false" else 0)
    lines = [line for line in out.splitlines() if "gone.jpg" in line]
    kind = "error" if skip == "false" else "skipped"
    assert lines == [f"  {kind}: image file not found: {tmp_path / 'gone.jpg'}"] * 2  # per split


BAD_COCO = {
    "unknown category": ({"category_id": 7}, {}, "annotation 1 references unknown category_id 7"),
    "width 0": ({}, {"width": 0}, "image 1 has an invalid size: width 0, height 30"),
}


@pytest.mark.parametrize("to", ["voc", "yolo"])
@pytest.mark.parametrize("case", list(BAD_COCO))
def test_convert_from_coco_refuses_what_the_loader_refuses(tmp_path, capsys, case, to):
    ann_patch, img_patch, message = BAD_COCO[case]
    write_image(tmp_path / "a.jpg")
    image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30, **img_patch}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400,
           "iscrowd": 0, **ann_patch}  # fmt: skip
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"images": [image], "annotations": [ann],
                               "categories": [{"id": 1, "name": "x"}]}))  # fmt: skip
    out = tmp_path / "out"
    assert main(["data", "convert", "--from", "coco", "--to", to, str(src), str(out),
                 "--img-dir", str(tmp_path)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and str(src) in err  # names the file
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()  # refused before anything is written


def test_infer_on_a_video(shapes, tmp_path, capsys):
    work = tmp_path / "w"
    sets = [*TINY, *shapes_overrides(shapes),
            "train.eval_interval=0"]  # fmt: skip
    assert main(["train", "--config", DEMO, "--set", *sets, f"work_dir={work}"]) == 0
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    frames = sorted(Path(shapes["val_img_dir"]).glob("*.jpg"))
    for i in range(12):
        writer.write(cv2.resize(cv2.imread(str(frames[i % len(frames)])), (64, 48)))
    writer.release()
    out = tmp_path / "out"
    assert main(["infer", "--config", DEMO, "--checkpoint", str(work / "latest.pth"),
                 str(video), "--out-dir", str(out), "--every", "3", "--score-thr", "0",
                 "--set", *sets]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "12 frames (4 predicted)" in printed and "frames/s" in printed
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    cap.release()
    lines = (out / "clip.predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 3, 6, 9]


def test_results_csv_and_tensorboard(shapes, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    sets = [*TINY, *shapes_overrides(shapes),
            "train.max_iters=null", "train.epochs=2", "train.eval_interval=1",
            "train.tensorboard=true"]  # fmt: skip
    assert main(["train", "--config", DEMO, "--set", *sets, f"work_dir={work}"]) == 0
    rows = list(csv.DictReader((work / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["iter"] for r in rows] == ["4", "8"]
    steps = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    first = [s["loss_qfl"] for s in steps if "loss" in s and s["epoch"] == 1]
    assert float(rows[0]["loss_qfl"]) == pytest.approx(sum(first) / len(first), abs=1e-3)
    assert all(0 <= float(r["AP"]) <= 1 for r in rows)
    events = list((work / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    # Without the package: one line saying what to install, before anything is written.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    other = tmp_path / "w2"
    assert main(["train", "--config", DEMO, "--set", *sets, f"work_dir={other}"]) == 2
    err = capsys.readouterr().err
    assert "pip install tensorboard" in err and not other.exists()
    shutil.rmtree(work)


def test_init_from_starts_a_new_run_from_a_checkpoint(shapes, tmp_path, capsys):
    data = [*shapes_overrides(shapes),
            "train.eval_interval=0"]  # fmt: skip
    first = tmp_path / "first"
    assert main(["train", "--config", DEMO, "--set", *TINY, *data, f"work_dir={first}"]) == 0
    second = tmp_path / "second"
    ckpt = first / "latest.pth"
    assert main(["train", "--config", DEMO, "--set", *TINY, *data, f"work_dir={second}",
                 f"model.init_from={ckpt}"]) == 0  # fmt: skip
    log = (second / "train.log").read_text()
    assert f"init_from {ckpt}" in log and "head.gfl_cls loaded (the same 6 classes)" in log
    from gfldet.core.checkpoint import load_checkpoint

    state = load_checkpoint(second / "latest.pth")
    assert state["iter"] == 2 and state["epoch"] == 1  # a new run: counters from zero
    capsys.readouterr()


def test_data_stats_from_the_command_line(shapes, tmp_path, capsys):
    data = [*shapes_overrides(shapes),
            "data.train.img_scale=[64,64]"]  # fmt: skip
    out = tmp_path / "stats"
    assert main(["data", "stats", "--config", DEMO, "--out", str(out), "--set", *data]) == 0
    printed = capsys.readouterr().out
    assert "ATSS assignment on" in printed and "suggestion:" in printed
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats and all((out / n).is_file() for n in ("class_histogram.png", "box_sizes.png",
                                                       "edge_distances.png"))  # fmt: skip
    assert main(["data", "stats", "--config", DEMO, "--max-images", "0", "--set", *data]) == 2
