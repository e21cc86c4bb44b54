"""From a dataset to a config: what `gfldet train --data PATH --model NAME` runs.

A preset is a shipped config made for users' own data (gfldet/configs/presets/): a model
(gfldet-lite, the CPU demo model, R-50 GFL or GFLv2) with the recipe for small datasets:
photometric distortion, random affine, mosaic switched off for the last epochs, background
images kept as negatives, cosine lr after a warm-up, and an EMA of the weights whose decay
ramps up. `config_for_data` points the preset's data.train / data.val at the dataset found at
PATH (gfldet.data.sources), applies --epochs, --img-size and --batch-size, then the --set items,
and returns the checked Config. Like config.py, this module sits above the jobs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from .config import Config, ConfigError, load_config, resolve_config_path, shipped_configs
from .data.sources import DataSource, data_source

# --model NAME: the shipped preset configs.
# gfldet.cli names them too (MODELS), so that `--help` imports nothing; a test keeps them equal.
PRESETS = {
    "lite": "presets/lite",
    "demo": "presets/demo",
    "r50": "presets/r50",
    "gflv2-r50": "presets/gflv2_r50",
}
DEFAULT_PRESET = "lite"


def preset_config(model: str | Path) -> Path:
    """The config file `--model` names: a preset (`lite`, `demo`, `r50`, `gflv2-r50`), a config
    file, or a shipped config's name. Raises ConfigError naming the presets otherwise."""
    name = str(model)
    if name in PRESETS:
        return shipped_configs()[PRESETS[name]]
    try:
        return resolve_config_path(model)
    except ConfigError:
        raise ConfigError(
            f"--model {name!r}: neither a preset ({', '.join(PRESETS)}) nor a config file or "
            "shipped config name (`gfldet config list`)"
        ) from None


def _item(key: str, value: object) -> str:
    """A `--set` item; JSON is YAML, so strings with any character survive the round trip."""
    return f"{key}={json.dumps(value)}"


def _size_items(base: Config, img_size: int) -> list[str]:
    """--img-size S: train and val at S x S; a multi-scale range keeps its proportions."""
    items = [_item("data.train.img_scale", [img_size, img_size])]
    items.append(_item("data.val.img_scale", [img_size, img_size]))
    ms = base.data.train.ms_short_range
    if ms is not None:
        top = max(base.data.train.img_scale)
        low = max(1, round(ms[0] * img_size / top))
        items.append(_item("data.train.ms_short_range", [low, max(low, img_size)]))
    return items


def _epoch_items(base: Config, epochs: int) -> list[str]:
    """--epochs N: the schedule's epoch counts scale with it (mosaic's closing epochs, the lr
    steps of a step schedule)."""
    items = [_item("train.epochs", epochs)]
    ratio = epochs / base.train.epochs
    close = base.data.train.mosaic_close_epochs
    if close:
        items.append(_item("data.train.mosaic_close_epochs", max(1, round(close * ratio))))
    steps = sorted({min(epochs, max(1, round(s * ratio))) for s in base.train.lr_steps})
    items.append(_item("train.lr_steps", steps))
    return items


def dataset_name(source: DataSource) -> str:
    """A short name for work dirs: the dataset's folder (a data.yaml's folder, a VOC or COCO
    root)."""
    path = Path(source.path)
    name = path.parent.name if path.suffix.lower() in (".yaml", ".yml", ".json") else path.name
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "data"


def free_work_dir(base: str | Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... : the first that holds no file (a new run's own
    folder, as `gfldet train --data` picks when no --work-dir is given)."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def config_for_data(
    data: str | Path | Sequence[str | Path],
    model: str | Path = DEFAULT_PRESET,
    *,
    epochs: int | None = None,
    img_size: int | None = None,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The config that trains `model` (a preset name or a config) on the dataset at `data`
    (see gfldet.data.sources: a YOLO data.yaml, a VOC root, a COCO folder or two COCO json
    files). Precedence, lowest first: the preset, the dataset's paths, epochs / img_size /
    batch_size, the `overrides` (`--set` items). When no override sets work_dir, the run goes
    to a new folder work_dirs/<dataset>-<model>[-N]."""
    for name, value in (
        ("--epochs", epochs),
        ("--img-size", img_size),
        ("--batch-size", batch_size),
    ):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {value}")
    source = data_source(data)
    config = preset_config(model)
    base = load_config(config)
    items = [_item(k, v) for k, v in source.config_overrides().items()]
    if epochs is not None:
        items += _epoch_items(base, epochs)
    if img_size is not None:
        divisor = base.data.size_divisor
        if img_size % divisor:
            up = math.ceil(img_size / divisor) * divisor
            raise ValueError(
                f"--img-size {img_size}: must be a multiple of {divisor} (data.size_divisor), "
                f"e.g. {up}"
            )
        items += _size_items(base, img_size)
    if batch_size is not None:
        items.append(_item("data.train.batch_size", batch_size))
    if not any(o.split("=", 1)[0].strip() == "work_dir" for o in overrides):
        tag = str(model) if str(model) in PRESETS else Path(str(model)).stem
        folder = free_work_dir(Path("work_dirs") / f"{dataset_name(source)}-{tag}")
        items.append(_item("work_dir", str(folder)))
    return load_config(config, items + list(overrides))


def config_from_data(data: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The default preset's config for the dataset at `data` (what `gfldet data show --data`
    draws from)."""
    return config_for_data(data, DEFAULT_PRESET, overrides=overrides)
