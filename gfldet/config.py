"""YAML configs: defaults, `_base_` inheritance, `--set` overrides and validation.

A config is a plain nested dict. `DEFAULTS` below is the schema: every key a config may set
appears there with its default, and the default's type is the key's type (a key whose default
is null names its type in `NULLABLE`). Files only override defaults; a key not in the schema,
or a value of the wrong type, is an error naming its dotted path and the file it came from.
Keys in `CHOICES` take one of a fixed set of strings; `check_model_options` checks the model's
switches against each other (also called by `build_model` for configs made in code).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "work_dir": "work_dirs/default",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "model": {
        "num_classes": None,  # taken from the training set when null
        "backbone": {
            "depth": 50,  # 18 | 34 | 50 | 101
            "base_width": 64,  # stem channels; stage i has base_width * 2**i (x4 for bottlenecks)
            "pretrained": None,  # weight file path or torchvision weights name
            "frozen_stages": 1,  # -1: none, 0: stem, k: stem + stages 1..k
            "norm_eval": True,  # BatchNorm statistics frozen (eval mode) while training
        },
        "fpn": {"out_channels": 256},
        "head": {
            "feat_channels": 256,
            "stacked_convs": 4,
            "num_groups": 32,  # GroupNorm groups in the towers
            "reg_max": 16,  # n: edge distances take bins 0..n (x bin_width strides)
            "anchor_scale": 8.0,  # ATSS anchor side = anchor_scale * stride
            "strides": [8, 16, 32, 64, 128],
            "prior_prob": 0.01,
            # Ablations (paper Tables 1(a), 2(a), 2(c), docs/ablations.md); defaults are GFL.
            "quality": "joint",  # joint | none | centerness | iou | centerness_guided | iou_guided
            "box": "general",  # general (distribution) | dirac | gaussian
            "bin_width": 1.0,  # Δ: bins y_i = i * Δ (in strides), i = 0..reg_max
        },
        "loss": {
            "qfl_beta": 2.0,
            "qfl_weight": 1.0,  # weight of the classification loss (QFL, focal or VFL)
            "giou_weight": 2.0,
            "dfl_weight": 0.25,  # 0: general distribution without DFL
            "nll_weight": 0.25,  # Gaussian negative log-likelihood (box: gaussian)
            "cls": "qfl",  # qfl | focal (one-hot targets) | vfl
            "focal_alpha": 0.25,
            "focal_gamma": 2.0,
            "vfl_alpha": 0.75,
            "vfl_gamma": 2.0,
            "quality_weight": 1.0,  # BCE of a separate centerness / IoU branch
        },
        "assigner": {"topk": 9},
        "test": {"nms_pre": 1000, "score_thr": 0.05, "nms_iou": 0.6, "max_per_img": 100},
    },
    "data": {
        "train": {
            "ann_file": "data/coco/annotations/instances_train2017.json",
            "img_dir": "data/coco/train2017",
            "batch_size": 2,  # per process
            "num_workers": 2,
            "img_scale": [1333, 800],
            "flip_prob": 0.5,
            "ms_short_range": None,  # [min, max] short side for multi-scale training
        },
        "skip_bad_images": False,  # unreadable images: skip with a warning instead of failing
        "val": {
            "ann_file": "data/coco/annotations/instances_val2017.json",
            "img_dir": "data/coco/val2017",
            "batch_size": 1,
            "num_workers": 2,
            "img_scale": [1333, 800],
        },
        "mean": [123.675, 116.28, 103.53],  # RGB, 0..255
        "std": [58.395, 57.12, 57.375],
        "size_divisor": 32,
    },
    "train": {
        "epochs": 12,
        "optimizer": "sgd",  # sgd (the paper's) | adamw (converges faster from scratch)
        "lr": 0.01,  # for base_batch_size; scaled linearly to the actual total batch
        "base_batch_size": 16,
        "momentum": 0.9,  # sgd only
        "weight_decay": 0.0001,
        "warmup_iters": 500,
        "warmup_ratio": 0.001,
        "lr_steps": [8, 11],  # epochs after which lr is multiplied by lr_gamma
        "lr_gamma": 0.1,
        "max_iters": None,  # stop early after this many iterations (smoke tests)
        "eval_interval": 1,  # epochs; 0 disables evaluation during training
        "checkpoint_interval": 1,  # epochs
        "log_interval": 20,  # iterations
        "grad_clip": None,  # max grad norm, or null
        "amp": False,  # CUDA: fp16 autocast + GradScaler; CPU: bf16 autocast
        "ema": False,  # keep an exponential moving average of the weights
        "ema_decay": 0.9998,
        "sync_bn": False,  # SyncBatchNorm across ranks (only with trainable BN)
        "checkpoint_interval_iters": 0,  # also save latest.pth every N iterations; 0: off
        "keep_last": 0,  # keep only the last N epoch_*.pth; 0: keep all
        "deterministic": False,  # deterministic algorithms (bitwise resume on CPU)
    },
}

# Keys whose default is null, and the types they take when set.
NULLABLE: dict[str, tuple[type, ...]] = {
    "model.num_classes": (int,),
    "model.backbone.pretrained": (str,),
    "data.train.ms_short_range": (list,),
    "train.max_iters": (int,),
    "train.grad_clip": (int, float),
}

# Keys that take one of a fixed set of strings (the first listed is the paper's GFL).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.head.quality": (
        "joint", "none", "centerness", "iou", "centerness_guided", "iou_guided"
    ),
    "model.head.box": ("general", "dirac", "gaussian"),
    "model.loss.cls": ("qfl", "focal", "vfl"),
    "train.optimizer": ("sgd", "adamw"),
}  # fmt: skip

# Smallest value of integer keys where 0 or a negative number means nothing sensible (and would
# otherwise fail later, e.g. a modulo by zero at the first logged iteration).
MINIMUM: dict[str, int] = {
    "model.num_classes": 1,
    "model.assigner.topk": 1,
    "data.train.batch_size": 1,
    "data.val.batch_size": 1,
    "data.train.num_workers": 0,
    "data.val.num_workers": 0,
    "data.size_divisor": 1,
    "train.epochs": 1,
    "train.warmup_iters": 0,
    "train.eval_interval": 0,
    "train.checkpoint_interval": 1,
    "train.log_interval": 1,
    "train.checkpoint_interval_iters": 0,
    "train.keep_last": 0,
}


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `1e-4` (PyYAML's 1.1 rules need a dot
    and a signed exponent, so `lr: 1e-4` would silently be a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml_value(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, override: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, Path]]:
    """Returns the file's merged content and, for each dotted key, the file that set it."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"_base_ inheritance cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file path or a list of paths, got {bases!r}")
    merged: dict = {}
    origin: dict[str, Path] = {}
    for b in bases:
        base_path = (path.parent / b).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file not found: {b}")
        content, base_origin = _load_with_bases(base_path, (*chain, path))
        merged = _merge(merged, content)
        origin.update(base_origin)
    merged = _merge(merged, data)
    origin.update({k: path for k in _dotted_keys(data)})
    return merged, origin


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys += _dotted_keys(v, f"{prefix}{k}.")
    return keys


def _check(value: Any, default: Any, key: str, origin: dict[str, Path]) -> None:
    where = origin.get(key, "--set")
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if k not in default:
                raise ConfigError(f"{origin.get(sub, '--set')}: unknown config key '{sub}'")
            _check(v, default[k], sub, origin)
        return
    if value is None:
        if default is None or key in NULLABLE:
            return
        raise ConfigError(f"{where}: '{key}' must not be null")
    if default is None:
        types = NULLABLE[key]
    elif isinstance(default, bool):
        types = (bool,)
    elif isinstance(default, float):
        types = (int, float)
    else:
        types = (type(default),)
    # bool is an int subclass in Python; never accept it where a number is meant.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{where}: '{key}' must be {names}, got {value!r}")
    if key in MINIMUM and value < MINIMUM[key]:
        raise ConfigError(f"{where}: '{key}' must be >= {MINIMUM[key]}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        allowed = ", ".join(CHOICES[key])
        raise ConfigError(f"{where}: '{key}' must be one of {allowed}; got {value!r}")


def check_model_options(cfg: dict, origin: dict[str, Path | str] | None = None) -> None:
    """Checks the model's switches against each other (their single values are checked by
    the schema): the classification loss must fit the quality representation, reg_max >= 1,
    bin_width > 0. Raises ConfigError naming the keys, their values and, when `origin` (dotted
    key -> file or '--set') is given, where they were set."""
    h, loss = cfg["model"]["head"], cfg["model"]["loss"]

    def at(key: str) -> str:
        if origin is None:
            return f"'{key}'"
        return f"'{key}' (from {origin.get(key, 'the defaults')})"

    for key, value in (("model.head.quality", h["quality"]), ("model.head.box", h["box"]),
                       ("model.loss.cls", loss["cls"])):  # fmt: skip
        if value not in CHOICES[key]:
            allowed = ", ".join(CHOICES[key])
            raise ConfigError(f"{at(key)} must be one of {allowed}; got {value!r}")
    quality, cls = h["quality"], loss["cls"]
    if quality == "joint" and cls == "focal":
        raise ConfigError(
            f"{at('model.loss.cls')} is 'focal', which trains one-hot targets, but "
            f"{at('model.head.quality')} is 'joint', whose target is the IoU score: "
            "use model.loss.cls qfl or vfl, or another model.head.quality"
        )
    if quality != "joint" and cls != "focal":
        raise ConfigError(
            f"{at('model.loss.cls')} is {cls!r}, which trains the joint class-IoU score, but "
            f"{at('model.head.quality')} is {quality!r}: the separate and guided quality "
            "representations use model.loss.cls focal"
        )
    n = len(h["strides"])
    if n < 3 or list(h["strides"]) != [8 * 2**i for i in range(n)]:
        raise ConfigError(
            f"{at('model.head.strides')} must be the strides of the FPN's outputs P3, P4, P5 "
            f"and any extra levels, 8 doubling per level (e.g. [8, 16, 32, 64, 128]); "
            f"got {h['strides']}"
        )
    if h["reg_max"] < 1:
        raise ConfigError(f"{at('model.head.reg_max')} must be >= 1, got {h['reg_max']}")
    if not h["bin_width"] > 0:
        raise ConfigError(f"{at('model.head.bin_width')} must be > 0, got {h['bin_width']}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    try:
        value = _yaml_value(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Applies `--set` items to a copy of cfg; unknown keys fail in validate()."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        keys, value = parse_override(item)
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"--set: unknown config key '{item.split('=', 1)[0]}'")
            node = node[k]
        old = node.get(keys[-1])
        # A mapping value sets some keys of a section; the others keep their values.
        merge = isinstance(old, dict) and isinstance(value, dict)
        node[keys[-1]] = _merge(old, value) if merge else value
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Loads a YAML config over DEFAULTS, resolving `_base_` files, then `--set` overrides.

    Returns a plain nested dict holding every key of the schema.
    """
    data, origin = _load_with_bases(Path(path))
    _check(data, DEFAULTS, "", origin)
    overrides = overrides or []
    cfg = apply_overrides(_merge(copy.deepcopy(DEFAULTS), data), overrides)
    for item in overrides:  # errors in overridden keys should blame --set, not the file
        origin.pop(".".join(parse_override(item)[0]), None)
    _check(cfg, DEFAULTS, "", origin)
    check_model_options(cfg, {**origin, **{k: "--set" for k in _override_keys(overrides)}})
    return cfg


def _override_keys(overrides: list[str]) -> list[str]:
    """Dotted keys set by --set items, including those inside a mapping value."""
    keys = []
    for item in overrides:
        path, value = parse_override(item)
        key = ".".join(path)
        keys += [key] + (_dotted_keys(value, key + ".") if isinstance(value, dict) else [])
    return keys


def dump_config(cfg: dict, path: str | Path) -> None:
    """Writes the resolved config as YAML (loadable again with load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
