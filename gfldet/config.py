"""YAML configs: defaults, `_base_` inheritance, `--set` overrides and validation.

A config file is a nested YAML mapping, loaded into the typed `Config`. Its schema is declared
where each part lives, as typed option dataclasses (gfldet.core.options): `model.*` in
gfldet/model/options.py, `data.*` in gfldet/data/options.py, `train.*` in
gfldet/training/options.py, and the top-level keys below.
Files only override defaults; a key not in the schema, a value of the wrong type or out of its
range, a duplicate key, or a combination of switches that does not fit is an error naming the
dotted key and the file and line it came from. Files are read by the project's one safe YAML
loader (gfldet.core.yaml_io); the shipped configs (gfldet/configs/) are found by name.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.files import write_yaml_atomic
from .core.options import (
    OptionError,
    defaults_of,
    fields_of,
    from_dict,
    is_section,
    option,
    section,
    short_repr,
    to_dict,
    value_problem,
)
from .core.yaml_io import YamlError, load_yaml_file, load_yaml_text
from .data.options import DataOptions
from .model.options import ModelOptions
from .model.options import check_model_options as _check_model
from .training.options import DistillOptions, TrainOptions


@dataclass
class Config:
    """A whole config: the top-level keys and one typed section per job."""

    work_dir: str = option(
        "work_dirs/default",
        help="output folder of training: resolved config, logs, checkpoints, evaluation "
        "results (--work-dir overrides it)",
    )
    seed: int = option(
        0,
        ge=0,
        help="random seed; each process seeds python, numpy and torch with seed + rank, and the "
        "data order and augmentation follow from it (also after a resume)",
    )
    device: str = option(
        "auto",
        pattern=r"auto|cpu|mps|cuda(:\d+)?",
        pattern_says="auto, cpu, cuda, cuda:N (a GPU index) or mps",
        help="auto (this process's GPU when CUDA is available, else the CPU), cpu, cuda (GPU "
        "LOCAL_RANK), cuda:N or mps",
    )
    model: ModelOptions = section(ModelOptions)
    data: DataOptions = section(DataOptions)
    train: TrainOptions = section(TrainOptions)
    distill: DistillOptions = section(DistillOptions)


DEFAULTS: dict[str, Any] = defaults_of(Config)


def _choices(cls: type, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for name, (tp, meta) in fields_of(cls).items():
        if is_section(tp):
            out.update(_choices(tp, f"{prefix}{name}."))
        elif "choices" in meta and all(isinstance(c, str) for c in meta["choices"]):
            out[prefix + name] = meta["choices"]
    return out


# Keys that take one of a fixed set of strings (the first listed is the default, GFL's).
CHOICES: dict[str, tuple[str, ...]] = _choices(Config)


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


# The configs shipped with gfldet (package data), reachable by name from any folder.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """{name: file} of the shipped configs; a name is the file's path under gfldet/configs
    without `.yaml` (`gfl_r50_fpn_1x_coco`, `ablations/t3_qfl`)."""
    files = SHIPPED_CONFIGS.glob("**/*.yaml")
    names = {p.relative_to(SHIPPED_CONFIGS).with_suffix("").as_posix(): p for p in files}
    return {n: names[n] for n in sorted(names, key=lambda n: ("/" in n, n))}


def shipped_config_list() -> str:
    """One line per shipped config: its name and the first comment line of its file (what
    `gfldet config list` prints)."""
    configs = shipped_configs()
    width = max(map(len, configs))
    lines = []
    for name, path in configs.items():
        text = path.read_text(encoding="utf-8").splitlines()
        first = next((ln.lstrip("#").strip() for ln in text if ln.startswith("#")), "")
        lines.append(f"{name:<{width}}  {first}".rstrip())
    return "\n".join(lines)


def _shipped(name: str) -> Path | None:
    """The shipped config called `name` (with or without `.yaml`), or None."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    return shipped_configs().get(stem)


def _shown(text: str, limit: int = 200) -> str:
    """`text` (a path or key from the user) cut to `limit` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_found(what: str, name: str) -> str:
    """'<what>: <name>' and the shipped names that a name could have meant, on one line."""
    names = list(shipped_configs())
    top = [n for n in names if "/" not in n]
    more = len(names) - len(top)
    close = difflib.get_close_matches(Path(name).with_suffix("").as_posix(), names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return (
        f"{what}: {_shown(name)}{hint} (neither a file nor a shipped config; shipped: "
        f"{', '.join(top)} and {more} under ablations/: `gfldet config list` shows all)"
    )


def resolve_config_path(name: str | Path) -> Path:
    """The config file that `--config NAME` means: the file `name` when there is one, else the
    shipped config of that name. Raises ConfigError listing the shipped names otherwise."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = _shipped(str(name))
    if shipped is None:
        raise ConfigError(_not_found("config file not found", str(name)))
    return shipped


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """The file's top-level mapping, and the line of each (dotted) key in it."""
    lines: dict[str, int] = {}
    try:
        data = load_yaml_file(path, lines)
    except YamlError as e:
        raise ConfigError(str(e)) from None
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data, lines


def _merge(base: dict, override: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Returns the file's merged content and, for each dotted key, where it was set
    ('file:line')."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"_base_ inheritance cycle: {cycle}")
    data, lines = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(
            f"{path}: _base_ must be a file path or a list of paths, got {short_repr(bases)}"
        )
    merged: dict = {}
    origin: dict[str, str] = {}
    for b in bases:
        base_path = (path.parent / b).resolve()
        if not base_path.is_file():
            base_path = _shipped(b)  # a shipped config by name
            if base_path is None:
                raise ConfigError(_not_found(f"{path}: _base_ file not found", b))
        content, base_origin = _load_with_bases(base_path, (*chain, path))
        merged = _merge(merged, content)
        origin.update(base_origin)
    merged = _merge(merged, data)
    origin.update(
        {k: f"{path}:{lines[k]}" if k in lines else str(path) for k in _dotted_keys(data)}
    )
    return merged, origin


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys += _dotted_keys(v, f"{prefix}{k}.")
    return keys


# Keys of earlier versions: an old config gets a message saying what to write instead.
RENAMED: dict[str, str] = {
    "model.fpn": "it is model.neck now (model.fpn.out_channels -> model.neck.out_channels)",
    "model.fpn.out_channels": "it is model.neck.out_channels now",
    "data.mean": "it is model.mean now (the normalisation is part of the model)",
    "data.std": "it is model.std now (the normalisation is part of the model)",
    "model.head.anchor_scale": "it is model.assigner.anchor_scale now",
    "model.head.strides": "the strides follow from the backbone (8, 16, 32) and "
    "model.neck.extra_levels (2 adds 64 and 128): remove the key",
}


def _check(value: Any, tp: Any, meta: dict, key: str, origin: dict[str, str]) -> None:
    """Checks `value` against the option type `tp` (a section dataclass or a value type)."""
    where = origin.get(key, "--set")
    if is_section(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {short_repr(value)}")
        fields = fields_of(tp)
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if k not in fields:
                hint = f"; {RENAMED[sub]}" if sub in RENAMED else ""
                where = origin.get(sub, "--set")
                raise ConfigError(f"{where}: unknown config key '{_shown(sub, 100)}'{hint}")
            _check(v, *fields[k], sub, origin)
        return
    problem = value_problem(value, tp, meta)
    if problem:
        raise ConfigError(f"{where}: '{key}' {problem}")


def check_combinations(cfg: dict, origin: dict[str, str] | None = None) -> None:
    """Checks values against each other (each one alone is checked by its option): the
    model's switches (gfldet.model.options.check_model_options) and
    `data.train.ms_short_range`. Raises ConfigError naming the keys, their values and, when
    `origin` (dotted key -> file or '--set') is given, where they were set."""

    def at(key: str) -> str:
        if origin is None:
            return f"'{key}'"
        return f"'{key}' (from {origin.get(key, 'the defaults')})"

    try:
        _check_model(from_dict(ModelOptions, cfg["model"], "model."))
    except OptionError as e:
        prefix = "" if all(k.startswith("model.") for k in e.keys) else "model."
        raise ConfigError(e.render(at, prefix)) from None
    ms = cfg["data"]["train"]["ms_short_range"]
    if ms is not None and ms[0] > ms[1]:
        raise ConfigError(f"{at('data.train.ms_short_range')} must be [min, max], got {ms}")
    d = cfg["data"]
    if d["classes"] is not None and "voc" not in (d["train"]["format"], d["val"]["format"]):
        raise ConfigError(
            f"{at('data.classes')} names the classes of a VOC dataset (data.*.format: voc); "
            "COCO files and YOLO's data.yaml name their own"
        )


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    try:
        value = load_yaml_text(raw, "--set") if raw.strip() else None
    except YamlError:
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


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config over the defaults, resolving `_base_` files, then `--set` overrides.

    `path` is a file, or the name of a shipped config (`gfl_r50_fpn_1x_coco`, see
    resolve_config_path). Returns the typed Config (every key of the schema, checked).
    """
    data, origin = _load_with_bases(resolve_config_path(path))
    _check(data, Config, {}, "", origin)
    overrides = overrides or []
    cfg = apply_overrides(_merge(copy.deepcopy(DEFAULTS), data), overrides)
    for item in overrides:  # errors in overridden keys should blame --set, not the file
        origin.pop(".".join(parse_override(item)[0]), None)
    _check(cfg, Config, {}, "", origin)
    check_combinations(cfg, {**origin, **{k: "--set" for k in _override_keys(overrides)}})
    return from_dict(Config, cfg)


def _override_keys(overrides: list[str]) -> list[str]:
    """Dotted keys set by --set items, including those inside a mapping value."""
    keys = []
    for item in overrides:
        path, value = parse_override(item)
        key = ".".join(path)
        keys += [key] + (_dotted_keys(value, key + ".") if isinstance(value, dict) else [])
    return keys


def config_from_dict(values: dict[str, Any]) -> Config:
    """A Config from a (partial) nested dict, e.g. the one a checkpoint stores; every value and
    combination checked as load_config checks a file's."""
    _check(values, Config, {}, "", {})
    cfg = _merge(copy.deepcopy(DEFAULTS), values)
    check_combinations(cfg)
    return from_dict(Config, cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (loadable again with load_config)."""
    write_yaml_atomic(to_dict(cfg), path)
