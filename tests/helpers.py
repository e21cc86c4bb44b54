"""Plain helpers shared by the tests of every folder (fixtures live in tests/conftest.py).

Imported as `from tests.helpers import ...`: the repository root is on the path (pyproject's
pytest `pythonpath`), so this works from any folder, with `python -m pytest` and `pytest` alike.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from gfldet.config import Config, load_config
from gfldet.data.coco import CocoDetection
from gfldet.data.synth import shapes_overrides
from gfldet.model.build import build_model
from gfldet.model.detector import GFL
from gfldet.model.fuse import fold_batchnorms, prepare_for_inference

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "shapes_demo.yaml")

# The GFL paper's ablation configs (the rows of its tables), and its switches over the recipe.
ABLATIONS = sorted((REPO / "configs" / "ablations").glob("t*.yaml"))

SWITCHES = (
    ("head", "quality"),
    ("head", "box"),
    ("head", "reg_max"),
    ("head", "bin_width"),
    ("loss", "cls"),
    ("loss", "qfl_beta"),
    ("loss", "dfl_weight"),
)

GFL_SWITCHES = {
    "quality": "joint",
    "box": "general",
    "reg_max": 16,
    "bin_width": 1.0,
    "cls": "qfl",
    "qfl_beta": 2.0,
    "dfl_weight": 0.25,
}

ATSS = {"quality": "centerness", "box": "dirac", "cls": "focal"}

# Each row of the paper's tables: its config, the paper's AP and its switches over GFL.
ABLATION_ROWS = {
    "t1a_quality_none": (38.0, {"quality": "none", "box": "dirac", "cls": "focal"}),
    "t1a_quality_centerness": (39.2, ATSS),
    "t1a_quality_iou": (39.6, {**ATSS, "quality": "iou"}),
    "t1a_quality_centerness_guided": (38.2, {**ATSS, "quality": "centerness_guided"}),
    "t1a_quality_iou_guided": (38.9, {**ATSS, "quality": "iou_guided"}),
    "t1a_quality_joint_qfl": (39.9, {"box": "dirac"}),
    "t1c_qfl_beta_0": (37.6, {"box": "dirac", "qfl_beta": 0.0}),
    "t1c_qfl_beta_1": (39.0, {"box": "dirac", "qfl_beta": 1.0}),
    "t1c_qfl_beta_2": (39.9, {"box": "dirac", "qfl_beta": 2.0}),
    "t1c_qfl_beta_2.5": (39.7, {"box": "dirac", "qfl_beta": 2.5}),
    "t1c_qfl_beta_4": (38.2, {"box": "dirac", "qfl_beta": 4.0}),
    "t2a_box_dirac": (39.2, ATSS),
    "t2a_box_gaussian": (39.3, {**ATSS, "box": "gaussian"}),
    "t2a_box_general": (39.3, {**ATSS, "box": "general", "dfl_weight": 0.0}),
    "t2a_box_general_dfl": (39.5, {**ATSS, "box": "general"}),
    "t2b_reg_max_12": (40.1, {"reg_max": 12}),
    "t2b_reg_max_14": (40.2, {"reg_max": 14}),
    "t2b_reg_max_16": (40.2, {}),
    "t2b_reg_max_18": (40.1, {"reg_max": 18}),
    "t2c_bin_width_0.5": (40.2, {"bin_width": 0.5}),
    "t2c_bin_width_1": (40.2, {}),
    "t2c_bin_width_2": (39.9, {"bin_width": 2.0}),
    "t2c_bin_width_4": (39.8, {"bin_width": 4.0}),
    "t3_atss_baseline": (39.2, ATSS),
    "t3_qfl": (39.9, {"box": "dirac"}),
    "t3_dfl": (39.5, {**ATSS, "box": "general"}),
    "t3_qfl_dfl": (40.2, {}),
}


def switches_of(cfg: Config) -> dict:
    """The values of SWITCHES in a config: {key: value}."""
    return {k: getattr(getattr(cfg.model, s), k) for s, k in SWITCHES}


# GFL R-50's parameter count (80 classes), as the official GFL_NOTES give it.
GFL_PARAMS = 32_440_537

# GFLv2's R-50 recipe.
V2 = REPO / "configs" / "gflv2_r50_fpn_1x_coco.yaml"


# --set items of a tiny model: ResNet at base width 8, FPN and head of 16 channels, one conv
# per tower. Trains, predicts and exports in well under a second on one CPU thread.
TINY_MODEL = [
    "model.backbone.base_width=8",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "model.head.num_groups=4",
]
# --set items of a two-iteration run of the tiny model at 64x64 (the dataset's keys not
# included): what the command-line tests train before they evaluate, infer or fine-tune.
TINY_RUN = [
    "data.train.img_scale=[64,64]",
    "data.val.img_scale=[64,64]",
    "data.train.batch_size=2",
    "data.train.num_workers=0",
    "data.val.num_workers=0",
    *TINY_MODEL,
    "model.test.score_thr=0.001",
    "train.epochs=1",
    "train.max_iters=2",
    "train.warmup_iters=2",
]


def tiny_train_sets(paths: dict, work: Path, *extra: str) -> list[str]:
    """--set items: the tiny model on the dataset at `paths` (write_shapes_dataset's dict), 64x64
    images, 2 per batch, 4 iterations per epoch of the 8-image `shapes` set, one epoch, no
    evaluation, logging every iteration; `extra` items come last and win."""
    return [
        f"work_dir={work}",
        *shapes_overrides(paths),
        "data.train.img_scale=[64,64]",
        "data.val.img_scale=[64,64]",
        "data.train.ms_short_range=[48,64]",
        "data.train.batch_size=2",
        "data.train.num_workers=0",
        "data.val.num_workers=0",
        *TINY_MODEL,
        "model.test.score_thr=0.001",  # an untrained model scores ~0.01: keep its detections
        "train.epochs=1",
        "train.log_interval=1",
        "train.warmup_iters=2",
        "train.eval_interval=0",
        *extra,
    ]


def tiny_train_cfg(paths: dict, work: Path, *extra: str) -> Config:
    """The config of tiny_train_sets, on configs/shapes_demo.yaml."""
    return load_config(DEMO, tiny_train_sets(paths, work, *extra))


def read_log_records(work: Path) -> list[dict]:
    """The records of WORK/log.jsonl, in order."""
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


def tiny_config(num_classes: int = 3, **test_cfg) -> Config:
    """A default Config with the tiny model's sizes (ResNet-18 at base width 8 with every stage
    trained and BatchNorm in train mode); `test_cfg` sets model.test keys."""
    cfg = Config()
    m = cfg.model
    m.num_classes = num_classes
    vars(m.backbone).update(depth=18, base_width=8, frozen_stages=-1, norm_eval=False)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    vars(m.test).update(test_cfg)
    return cfg


def tiny_model(seed: int = 0, num_classes: int = 3, **test_cfg) -> GFL:
    """The model of tiny_config, its weights drawn with `seed`."""
    torch.manual_seed(seed)
    return build_model(tiny_config(num_classes, **test_cfg).model)


def identity(image, boxes, rng=None):
    """A transform that keeps the image and boxes as they are (scale 1, no flip)."""
    h, w = image.shape[:2]
    return image, boxes, {"img_size": (h, w), "scale_factor": (1.0, 1.0), "flipped": False}


def one_line_error(capsys) -> str:
    """The command's stderr, checked to be one `gfldet: error: ...` line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfldet: error: ") and err.count("\n") == 0, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def mmdet_gfl_state(
    depth: int = 50,
    width: int = 64,
    fpn: int = 256,
    feat: int = 256,
    convs: int = 4,
    classes: int = 80,
    reg_max: int = 16,
    levels: int = 5,
    fill=torch.randn,
) -> dict[str, torch.Tensor]:
    """A state dict with MMDetection v2's GFL key names and shapes, written from MMDetection's
    module structure (mmdet ResNet, FPN with ConvModule, GFLHead), independently of gfldet."""
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        sd[f"{name}.weight"] = fill(cout, cin, k, k)
        if bias:
            sd[f"{name}.bias"] = fill(cout)

    def bn(name: str, c: int) -> None:
        sd.update(
            {
                f"{name}.weight": fill(c),
                f"{name}.bias": fill(c),
                f"{name}.running_mean": fill(c),
                f"{name}.running_var": fill(c).abs() + 0.5,
                f"{name}.num_batches_tracked": torch.tensor(0),
            }
        )

    conv("backbone.conv1", width, 3, 7)
    bn("backbone.bn1", width)
    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    expansion = 4 if bottleneck else 1
    inplanes = width
    for i, n in enumerate(blocks):
        planes = width * 2**i
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            cin = inplanes if j == 0 else planes * expansion
            if bottleneck:  # 1x1 -> 3x3 -> 1x1 (x4)
                conv(f"{p}.conv1", planes, cin, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:  # 3x3 -> 3x3
                conv(f"{p}.conv1", planes, cin, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            if j == 0 and (i > 0 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
        inplanes = planes * expansion
    for n in range(3):  # C3..C5
        conv(f"neck.lateral_convs.{n}.conv", fpn, width * 2 ** (n + 1) * expansion, 1, bias=True)
    for n in range(levels):  # 3 outputs + the extra P6, P7 convs ("on_output")
        conv(f"neck.fpn_convs.{n}.conv", fpn, fpn, 3, bias=True)
    for tower in ("cls_convs", "reg_convs"):
        for n in range(convs):  # ConvModule(conv without bias, GN named "gn")
            conv(f"bbox_head.{tower}.{n}.conv", feat, fpn if n == 0 else feat, 3)
            sd[f"bbox_head.{tower}.{n}.gn.weight"] = fill(feat)
            sd[f"bbox_head.{tower}.{n}.gn.bias"] = fill(feat)
    conv("bbox_head.gfl_cls", classes, feat, 3, bias=True)
    conv("bbox_head.gfl_reg", 4 * (reg_max + 1), feat, 3, bias=True)
    for n in range(levels):
        sd[f"bbox_head.scales.{n}.scale"] = fill(())
    sd["bbox_head.integral.project"] = torch.linspace(0, reg_max, reg_max + 1)
    return sd


def by_file(coco: dict, key=lambda fn: Path(fn).name) -> dict:
    """{file key: ((width, height), sorted [(class name, bbox, iscrowd)])} of a COCO dict."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = {key(im["file_name"]): ((im["width"], im["height"]), []) for im in coco["images"]}
    file_of = {im["id"]: key(im["file_name"]) for im in coco["images"]}
    for a in coco["annotations"]:
        out[file_of[a["image_id"]]][1].append(
            (names[a["category_id"]], list(a["bbox"]), a.get("iscrowd", 0))
        )
    return {k: (size, sorted(objs)) for k, (size, objs) in out.items()}


def check_ids(coco: dict, first_category: int = 1) -> None:
    """Ids 1..N, 1..M and (categories) first_category.. (VOC 1..K, YOLO its indices 0..K-1)."""
    assert [im["id"] for im in coco["images"]] == list(range(1, len(coco["images"]) + 1))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    k = len(coco["categories"])
    assert [c["id"] for c in coco["categories"]] == list(range(first_category, first_category + k))
    for a in coco["annotations"]:
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def consumable(coco: dict, img_dir: Path, tmp_path: Path) -> CocoDetection:
    """The dict as CocoDetection reads it; every image decodes to the size the dict gives."""
    ann = tmp_path / "as_coco.json"
    ann.write_text(json.dumps(coco))
    ds = CocoDetection(ann, img_dir, identity, train=False)
    for img_id in ds.img_ids:
        ds.read_image(img_id)  # raises if the decoded size differs from width / height
    return ds


def finishes(fn, fifos: list[Path], timeout: float = 20.0):
    """fn()'s result or exception; fails (and unblocks the reader) if it hangs on a FIFO."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in fifos:  # a writer that closes at once gives the blocked reader an EOF
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"hung on a FIFO: {fifos}")
    return result


def bn_modules(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm module of `module`."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def two_images():
    """Two random 96x128 images, the second with a smaller valid size, and their boxes."""
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8)
    targets = [
        {
            "img_size": (96, 128),
            "boxes": torch.tensor([[10.0, 20, 60, 90], [70, 10, 125, 60]]),
            "labels": torch.tensor([0, 2]),
        },
        {
            "img_size": (80, 100),
            "boxes": torch.tensor([[5.0, 5, 40, 30]]),
            "labels": torch.tensor([1]),
        },
    ]
    return images, targets


def tiny_backbone_config(backbone: str = "resnet", **head) -> Config:
    """tiny_config's sizes with another backbone type (model.backbone.type) and head options."""
    cfg = Config()
    m = cfg.model
    m.num_classes = 3
    vars(m.backbone).update(type=backbone, frozen_stages=-1, norm_eval=False)
    if backbone == "resnet":
        vars(m.backbone).update(depth=18, base_width=8)
    m.neck.out_channels = 16
    vars(m.head).update({"feat_channels": 16, "stacked_convs": 1, "num_groups": 4, **head})
    m.test.score_thr = 0.001  # keep an untrained model's detections
    return cfg


def two_image_batch() -> tuple[torch.Tensor, list[dict]]:
    """Two random 64x96 images with two boxes each."""
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    boxes = ([[10.0, 8, 50, 40], [60, 20, 90, 60]], [[5.0, 5, 30, 60], [40, 10, 80, 30]])
    targets = [
        {
            "img_size": (64, 96),
            "pad_size": (64, 96),
            "boxes": torch.tensor(b),
            "labels": torch.tensor([1, 2]),
        }
        for b in boxes
    ]
    return images, targets


def train_predict_fold_export(model: GFL, tmp_path: Path) -> int:
    """One training step, predictions, BatchNorm folding and ONNX; returns BatchNorms folded."""
    from gfldet.inference.export import check_onnx, export_onnx  # imported when used: it is slow

    images, targets = two_image_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_qfl", "loss_giou", "loss_dfl"}
    sum(losses.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    model.eval()
    meta = [{"img_size": (64, 96)}]
    det = model.predict(images[:1], meta)[0]
    assert len(det["scores"]) > 0
    fast = prepare_for_inference(model)
    folded = fold_batchnorms(copy.deepcopy(model).eval())
    fast_det = fast.predict(images[:1].contiguous(memory_format=torch.channels_last), meta)[0]
    torch.testing.assert_close(fast_det["scores"], det["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_det["boxes"], det["boxes"], atol=1e-2, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / "m.onnx", (64, 96))
    assert max(check_onnx(path, model, (64, 96)).values()) < 1e-4
    return folded


# COCO files written by the tests: categories 1 "a" and 2 "b", and entries of images and boxes.
CATS_AB = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def write_coco_file(
    path: Path, images: list[dict], anns: list[dict], cats=CATS_AB, **extra
) -> Path:
    """A COCO annotation file at `path` with these images, annotations and categories."""
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats, **extra})
    )
    return path


def coco_image(img_id: int, name: str, w: int = 40, h: int = 30) -> dict:
    """An entry of a COCO file's "images"."""
    return {"id": img_id, "file_name": name, "width": w, "height": h}


def coco_ann(ann_id: int, img_id: int, bbox, cat: int = 1) -> dict:
    """An entry of a COCO file's "annotations" (area 10, not a crowd); `bbox` as given."""
    return {
        "id": ann_id,
        "image_id": img_id,
        "category_id": cat,
        "bbox": bbox,
        "area": 10.0,
        "iscrowd": 0,
    }


# Non-contiguous category ids, listed out of order: labels follow the sorted ids.
ODD_CATS = [{"id": 12, "name": "cup"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]


def _mixed_ann(ann_id: int, img_id: int, cat: int, bbox: list[float], crowd: int = 0) -> dict:
    area = bbox[2] * bbox[3]
    return {
        "id": ann_id,
        "image_id": img_id,
        "category_id": cat,
        "bbox": bbox,
        "area": area,
        "iscrowd": crowd,
    }


def write_mixed_coco(root: Path, **overrides) -> Path:
    """ROOT/ann.json and ROOT/images: six images of every kind (colour JPEG, grey PNG in a
    sub-folder, RGBA, 16-bit, one without boxes, one with only a crowd box) and boxes to drop,
    clip or keep, with ODD_CATS; returns the annotation file."""
    img_dir = root / "images"
    (img_dir / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(img_dir / "color.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(img_dir / "sub" / "gray.png"), np.full((64, 40), 90, np.uint8))
    rgba = np.zeros((30, 50, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 255, 128  # red in BGRA
    cv2.imwrite(str(img_dir / "rgba.png"), rgba)
    cv2.imwrite(str(img_dir / "deep.png"), np.full((20, 20), 65535, np.uint16))
    cv2.imwrite(str(img_dir / "empty.jpg"), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(img_dir / "crowd.jpg"), np.zeros((32, 48, 3), np.uint8))
    images = [
        {"id": 100, "file_name": "color.jpg", "width": 64, "height": 48},
        {"id": 205, "file_name": "sub/gray.png", "width": 40, "height": 64},
        {"id": 7, "file_name": "rgba.png", "width": 50, "height": 30},
        {"id": 8, "file_name": "deep.png", "width": 20, "height": 20},
        {"id": 9, "file_name": "empty.jpg", "width": 32, "height": 32},
        {"id": 10, "file_name": "crowd.jpg", "width": 48, "height": 32},
    ]
    anns = [
        _mixed_ann(1, 100, 3, [4, 6, 20, 10]),
        _mixed_ann(2, 100, 7, [0, 0, 30, 30], crowd=1),  # crowd: dropped
        _mixed_ann(3, 100, 12, [10, 10, 0.5, 8]),  # w < 1: dropped
        _mixed_ann(4, 100, 12, [50, 40, 30, 20]),  # partly outside: clipped to (50, 40, 64, 48)
        _mixed_ann(5, 205, 12, [2, 3, 10, 20]),
        _mixed_ann(6, 7, 7, [5, 5, 10, 10]),
        _mixed_ann(7, 8, 3, [1, 1, 5, 5]),
        _mixed_ann(8, 10, 3, [1, 1, 5, 5], crowd=1),  # only a crowd box: no usable target
    ]
    data = {"images": images, "annotations": anns, "categories": ODD_CATS, **overrides}
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file
