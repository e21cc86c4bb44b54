"""MMDetection v2 (and official GFL model zoo) checkpoints -> gfldet checkpoints.

MMDetection's GFL is ResNet (`backbone.*`) + FPN (`neck.*`) + GFLHead (`bbox_head.*`). gfldet
keeps the same module structure and most of the names, so the conversion is a renaming:

    backbone.X                          -> backbone.X (ResNet names as torchvision's)
    neck.lateral_convs.N.conv.{w,b}     -> neck.lateral_convs.N.{w,b}
    neck.fpn_convs.N.conv.{w,b}         -> neck.fpn_convs.N.{w,b} (N >= 3: the P6/P7 convs)
    bbox_head.{cls,reg}_convs.N.conv/gn -> head.{cls,reg}_convs.N.conv/gn
    bbox_head.gfl_cls / gfl_reg         -> head.gfl_cls / gfl_reg
    bbox_head.scales.N.scale            -> head.scales.N.scale
    bbox_head.reg_conf.{0,2}.{w,b}      -> head.reg_conf.{0,2}.{w,b} (GFLv2's DGQP, GFocalV2)
    bbox_head.integral.project          -> dropped (gfldet's is a non-persistent buffer); its
                                           values give the bin width Δ, which is checked

Conventions that could differ and do not: the location centres ((j·s, i·s) for location (i, j)
of stride s: MMDetection v2's AnchorGenerator with center_offset 0, as gfldet.model.box_ops.
grid_points), RGB input with the same mean/std, ResNet v1.5 ("pytorch" style: stride on the
3x3 conv). What does differ is the class order: MMDetection's label i is the i-th category of
the annotation file (in file order) whose name is in CLASSES; gfldet's label k is the k-th
category by sorted id. The converter finds both orders and permutes the gfl_cls channels; for
COCO they are the same (80 classes, ids 1..90).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..core.checkpoint import load_model_weights, save_checkpoint
from ..core.files import torch_load_safely
from ..core.runtime import set_num_classes
from ..model.build import build_model

if TYPE_CHECKING:
    from ..model.options import ModelOptions

ARCH_KEYS = ("backbone", "neck", "head")  # the parts of a converted checkpoint's meta to print

# COCO 2017 detection categories in id order: MMDetection's CocoDataset.CLASSES and the
# "categories" of instances_{train,val}2017.json.
COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
COCO_CAT_IDS = tuple(
    [
        *range(1, 12),
        *range(13, 26),
        27,
        28,
        *range(31, 45),
        *range(46, 66),
        67,
        70,
        *range(72, 83),
        *range(84, 91),
    ]
)

# (MMDetection key pattern, gfldet replacement); every key of the checkpoint must match one.
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^backbone\.((?:conv1|bn1)\.\w+)$"), r"backbone.\1"),
    (
        re.compile(r"^backbone\.(layer[1-4]\.\d+\.(?:conv[1-3]|bn[1-3]|downsample\.[01])\.\w+)$"),
        r"backbone.\1",
    ),
    (
        re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$"),
        r"neck.\1.\2.\3",
    ),
    (
        re.compile(r"^bbox_head\.((?:cls|reg)_convs\.\d+\.(?:conv|gn)\.(?:weight|bias))$"),
        r"head.\1",
    ),
    (re.compile(r"^bbox_head\.(gfl_cls|gfl_reg)\.(weight|bias)$"), r"head.\1.\2"),
    (re.compile(r"^bbox_head\.scales\.(\d+)\.scale$"), r"head.scales.\1.scale"),
    (re.compile(r"^bbox_head\.reg_conf\.([02])\.(weight|bias)$"), r"head.reg_conf.\1.\2"),
]
_PROJECT_KEY = "bbox_head.integral.project"


def load_mmdet_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Reads an MMDetection checkpoint without executing code from it (weights_only=True).

    Returns (state_dict, meta); meta is {} when the file has none (a bare state dict).
    """
    path = Path(path)
    ckpt = torch_load_safely(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__})")
    state = ckpt.get("state_dict", ckpt)
    meta = ckpt.get("meta") or {}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors (expected a 'state_dict' entry)")
    # Saved from a DistributedDataParallel wrapper.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("bbox_head.gfl_cls.") for k in state):
        raise ValueError(
            f"{path}: not an MMDetection GFL checkpoint (no 'bbox_head.gfl_cls.weight' key)"
        )
    return state, dict(meta) if isinstance(meta, dict) else {}


def rename_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """MMDetection GFL key names -> gfldet key names (values untouched, project dropped).

    Raises ValueError listing the keys no rule covers (e.g. DCN offsets, other heads).
    """
    out, unknown = {}, []
    for key, value in state.items():
        if key == _PROJECT_KEY:
            continue
        for pattern, repl in _RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(
            f"{len(unknown)} keys have no gfldet counterpart, e.g. {', '.join(unknown[:5])}{more}; "
            "only ResNet + FPN + GFL (or GFLv2) head models (no DCN, no other necks or heads) "
            "convert"
        )
    # Checkpoints of older torch versions have no BatchNorm counters; gfldet's model has them.
    for key in list(out):
        if key.endswith(".running_mean"):
            counter = key.removesuffix("running_mean") + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


def bin_width_of(state: dict[str, Tensor]) -> float:
    """Δ from MMDetection's Integral.project buffer (bins i·Δ), or 1.0 when it is absent."""
    project = state.get(_PROJECT_KEY)
    if project is None:
        return 1.0
    n = project.numel() - 1
    delta = float(project[1] - project[0]) if n >= 1 else 0.0
    if n < 1 or not torch.allclose(project.float(), torch.arange(n + 1) * delta, atol=1e-5):
        raise ValueError(f"{_PROJECT_KEY} is not the bins 0, Δ, ..., nΔ: {project.tolist()}")
    return delta


def checked_bin_width(state: dict[str, Tensor], meta: dict[str, Any], source: str) -> float:
    """The checkpoint's bin width Δ (see bin_width_of), after refusing what would load into
    gfldet's model but compute something else: a 'caffe' style ResNet (stride on the 1x1
    conv; gfldet's is 'pytorch' style). Errors name `source`."""
    config_text = meta.get("config")
    if isinstance(config_text, str) and re.search(r"style\s*=\s*['\"]caffe['\"]", config_text):
        raise ValueError(
            f"{source}: its ResNet is 'caffe' style (stride on the 1x1 conv); gfldet's is "
            "'pytorch' style, so the weights would load but compute something else"
        )
    try:
        return bin_width_of(state)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def class_order(
    classes: list[str] | None, num_channels: int, ann_file: str | Path | None
) -> tuple[list[str], list[int], list[int]]:
    """Matches MMDetection's label order to gfldet's.

    classes: meta["CLASSES"] of the checkpoint (None if it has none); num_channels: gfl_cls
    outputs; ann_file: the COCO-format annotation file the model was trained with (needed
    unless the classes are COCO's 80).
    Returns (names, cat_ids, perm) in gfldet order: gfldet channel k = MMDetection channel
    perm[k], named names[k], category id cat_ids[k].
    """
    if ann_file is None:
        if classes is not None and list(classes) != list(COCO_CLASSES):
            raise ValueError(
                f"the checkpoint's CLASSES ({len(classes)}: {', '.join(list(classes)[:3])}, ...) "
                "are not COCO's 80: give --ann-file, the annotation file it was trained with, "
                "so that category ids can be matched by name"
            )
        if num_channels != len(COCO_CLASSES):
            raise ValueError(
                f"the checkpoint has no CLASSES and {num_channels} class channels (COCO has 80): "
                "give --ann-file"
            )
        return list(COCO_CLASSES), list(COCO_CAT_IDS), list(range(num_channels))

    from ..data.coco import read_coco_json

    cats = read_coco_json(Path(ann_file))["categories"]
    wanted = set(classes) if classes is not None else {c["name"] for c in cats}
    missing = sorted(wanted - {c["name"] for c in cats})
    if missing:
        raise ValueError(f"{ann_file}: no categories named {missing[:5]}")
    # MMDetection's label order: COCO.getCatIds(catNms=CLASSES), i.e. the file's order.
    mm = [(int(c["id"]), c["name"]) for c in cats if c["name"] in wanted]
    if len(mm) != num_channels:
        raise ValueError(
            f"{ann_file}: {len(mm)} categories match the checkpoint's classes, but gfl_cls has "
            f"{num_channels} channels"
        )
    ids = [i for i, _ in mm]
    order = sorted(range(len(mm)), key=lambda k: ids[k])  # gfldet: labels by sorted id
    return [mm[k][1] for k in order], [ids[k] for k in order], order


def describe(state: dict[str, Tensor]) -> dict[str, int | str]:
    """The architecture a gfldet-named state dict implies (the config keys it must match)."""
    blocks = {i: 0 for i in range(1, 5)}
    for k in state:
        if m := re.match(r"backbone\.layer(\d)\.(\d+)\.", k):
            blocks[int(m.group(1))] = max(blocks[int(m.group(1))], int(m.group(2)) + 1)
    counts = tuple(blocks.values())
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    depth = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34 if not bottleneck else 50, (3, 4, 23, 3): 101}
    stacked = len({k.split(".")[2] for k in state if k.startswith("head.cls_convs.")})
    return {
        "backbone.depth": depth.get(counts, -1),
        "backbone.base_width": int(state["backbone.conv1.weight"].shape[0]),
        "neck.out_channels": int(state["neck.lateral_convs.0.weight"].shape[0]),
        "head.stacked_convs": stacked,
        "head.feat_channels": int(state["head.gfl_reg.weight"].shape[1]),
        "head.reg_max": int(state["head.gfl_reg.weight"].shape[0]) // 4 - 1,
        "head.num_levels": len([k for k in state if k.startswith("head.scales.")]),
        "num_classes": int(state["head.gfl_cls.weight"].shape[0]),
        **_dgqp_layout(state),
    }


def _dgqp_layout(state: dict[str, Tensor]) -> dict[str, int | str]:
    """GFLv2's quality predictor, when the checkpoint has one: its hidden channels and inputs
    (4 x (top-k + mean): 20 for the official top-4 + mean, which a config must match)."""
    conv = state.get("head.reg_conf.0.weight")
    if conv is None:
        return {"head.quality": "joint"}
    return {
        "head.quality": "dgqp",
        "head.dgqp.channels": int(conv.shape[0]),
        "head.dgqp.inputs": int(conv.shape[1]),
    }


def convert_state(
    state: dict[str, Tensor],
    meta: dict[str, Any],
    ann_file: str | Path | None = None,
    source: str = "<memory>",
) -> dict[str, Any]:
    """An MMDetection GFL state dict and its meta -> a gfldet checkpoint dict:
    {"model": state dict, "classes": names, "cat_ids": ids, "meta": {...}}."""
    delta = checked_bin_width(state, meta, source)
    weights = rename_keys(state)
    classes = meta.get("CLASSES")
    names, cat_ids, perm = class_order(
        list(classes) if classes is not None else None,
        int(weights["head.gfl_cls.weight"].shape[0]),
        ann_file,
    )
    if perm != list(range(len(perm))):
        index = torch.tensor(perm)
        for key in ("head.gfl_cls.weight", "head.gfl_cls.bias"):
            weights[key] = weights[key][index].clone()
    info = {k: v for k, v in meta.items() if isinstance(v, (str, int, float)) and k != "config"}
    return {
        "model": weights,
        "classes": names,
        "cat_ids": cat_ids,
        "meta": {**info, "converted_from": source, "bin_width": delta, **describe(weights)},
    }


def convert_mmdet(src: str | Path, ann_file: str | Path | None = None) -> dict[str, Any]:
    """Reads an MMDetection v2 GFL checkpoint file and returns a gfldet checkpoint dict."""
    state, meta = load_mmdet_checkpoint(src)
    return convert_state(state, meta, ann_file, str(src))


def convert_mmdet_file(
    src: str | Path,
    dst: str | Path,
    ann_file: str | Path | None = None,
    model: ModelOptions | None = None,
    model_source: str | Path | None = None,
) -> str:
    """`gfldet convert-mmdet`: converts the MMDetection GFL checkpoint `src` (see
    convert_mmdet; `ann_file` gives its class order) and writes the gfldet checkpoint `dst`,
    atomically. With `model` (a config's model section, from the file `model_source`), the
    result must first load strictly into that model: the same names, shapes and bin width.

    Returns what to print: a summary of the checkpoint (tensors, classes, architecture) and
    what was checked and written. Raises ValueError (one line) when `dst` is one of the inputs,
    when the checkpoint does not fit `model`, or on the errors of convert_mmdet; OSError when
    `dst` cannot be written. Nothing is written before every check passed.
    """
    inputs = {"INPUT": src, "--ann-file": ann_file, "--config": model_source}
    for option, path in inputs.items():
        if path is not None and Path(dst).resolve() == Path(path).resolve():
            raise ValueError(f"OUTPUT {dst} is the {option} file {path}: refusing to overwrite it")
    state = convert_mmdet(src, ann_file)
    meta, classes = state["meta"], state["classes"]
    arch = ", ".join(f"{k} {v}" for k, v in meta.items() if k.split(".")[0] in ARCH_KEYS)
    lines = [
        f"{src}: {len(state['model'])} tensors, {len(classes)} classes "
        f"({', '.join(classes[:3])}, ...); {arch}, bin width {meta['bin_width']}"
    ]
    if model is not None:
        model = copy.deepcopy(model)
        model.backbone.pretrained = None  # every weight comes from the checkpoint
        set_num_classes(model, classes, str(src))
        if model.head.bin_width != meta["bin_width"]:
            raise ValueError(
                f"{src} has bins of width {meta['bin_width']} but {model_source} sets "
                f"model.head.bin_width {model.head.bin_width}"
            )
        load_model_weights(build_model(model), state, dst)  # strict: names and shapes
        lines.append(f"loads into {model_source} with no missing or unexpected keys")
    try:
        save_checkpoint(state, dst)
    except OSError as e:
        raise OSError(e.errno, f"OUTPUT {dst}: cannot write it: {e.strerror}") from None
    lines.append(f"wrote {dst}")
    return "\n".join(lines)
