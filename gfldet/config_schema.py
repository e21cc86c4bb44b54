"""The config's schema for people and editors, generated from the option declarations.

`json_schema()` is a JSON Schema (draft-07) of a config file: editors with yaml-language-server
(VS Code's YAML extension, Neovim, JetBrains, Helix) complete keys, show each option's help and
default, and flag unknown keys, wrong types and values out of range while the file is typed.
`reference_table()` is the Markdown reference of every key in docs/configs.md. Both read the
option dataclasses (gfldet.core.options), so neither restates a default, a range or a help text.

What a schema cannot say, `load_config` still checks: switches that must fit each other (e.g.
`model.head.quality` and `model.loss.cls`), the files that `_base_` names, and ints written
as `12.0` (a JSON Schema integer accepts them; gfldet does not).
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

from .config import Config
from .core.files import atomic_open
from .core.options import fields_of, is_section

SCHEMA_URI = "http://json-schema.org/draft-07/schema#"

BASE_HELP = (
    "configs to inherit from, merged in order before this file's keys: paths relative to this "
    "file, or names of shipped configs (gfldet config list)"
)

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
_BOUND_KEYWORDS = {
    "ge": "minimum",
    "gt": "exclusiveMinimum",
    "le": "maximum",
    "lt": "exclusiveMaximum",
}
_BOUND_SIGNS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def section_help(cls: type) -> str:
    """The first line of a section class's own docstring ('' when it has none)."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature that @dataclass writes
        return ""
    return doc.strip().split("\n")[0]


def _bounds(meta: dict) -> dict[str, Any]:
    return {_BOUND_KEYWORDS[k]: meta[k] for k in _BOUND_KEYWORDS if k in meta}


def _option_schema(tp: Any, meta: dict, default: Any) -> dict[str, Any]:
    tp, nullable = _split_optional(tp)
    out: dict[str, Any] = {}
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        out["type"] = ["array", "null"] if nullable else "array"
        out["items"] = {"type": _JSON_TYPES[item], **_bounds(meta)}
        if "length" in meta:
            out["minItems"] = out["maxItems"] = meta["length"]
    else:
        name = _JSON_TYPES[tp]
        out["type"] = [name, "null"] if nullable else name
        out.update(_bounds(meta))
        if "pattern" in meta:
            out["pattern"] = f"^(?:{meta['pattern']})$"
        if "choices" in meta:
            out["enum"] = [*meta["choices"], *([None] if nullable else [])]
    out["default"] = default
    if meta.get("help"):
        out["description"] = meta["help"]
    return out


def _section_schema(cls: type, defaults: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if section_help(cls):
        out["description"] = section_help(cls)
    props = {}
    for name, (tp, meta) in fields_of(cls).items():
        default = getattr(defaults, name)
        if is_section(tp):
            props[name] = _section_schema(tp, default)
        else:
            props[name] = _option_schema(tp, meta, _plain(default))
    out["properties"] = props
    out["additionalProperties"] = False
    return out


def _plain(value: Any) -> Any:
    """A default as JSON holds it (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a gfldet YAML config: every key with its type, default,
    allowed values and help; unknown keys refused; `_base_` allowed at the top level."""
    root = _section_schema(Config, Config())
    root["properties"] = {
        "_base_": {
            "description": BASE_HELP,
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        **root["properties"],
    }
    root["description"] = (
        "A gfldet YAML config (docs/configs.md): every key is optional and overrides its "
        "default; load_config also checks the switches against each other."
    )
    return {"$schema": SCHEMA_URI, "title": "gfldet config", **root}


def json_schema_text() -> str:
    """json_schema() as the text of a .json file."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def missing_help(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted keys of the options that have no help text."""
    out = []
    for name, (tp, meta) in fields_of(cls).items():
        if is_section(tp):
            out += missing_help(tp, f"{prefix}{name}.")
        elif not meta.get("help"):
            out.append(prefix + name)
    return out


# --------------------------------------------------------------------------- reference table


def _yaml_flow(value: Any) -> str:
    """A value as it would be written in a config file (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_text(tp: Any) -> str:
    tp, nullable = _split_optional(tp)
    if typing.get_origin(tp) is list:
        text = f"list[{typing.get_args(tp)[0].__name__}]"
    else:
        text = tp.__name__
    return f"{text} or null" if nullable else text


def _allowed_text(meta: dict) -> str:
    parts = []
    if "choices" in meta:
        parts.append(", ".join(f"`{c}`" for c in meta["choices"]))
    if "pattern" in meta:
        parts.append(f"matches `{meta['pattern']}`")
    if "length" in meta:
        parts.append(f"{meta['length']} items")
    bounds = [f"{_BOUND_SIGNS[k]} {meta[k]:g}" for k in _BOUND_SIGNS if k in meta]
    if bounds:
        parts.append(("each " if "length" in meta else "") + ", ".join(bounds))
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _tables(cls: type, defaults: Any, prefix: str, level: int) -> list[str]:
    title = f"`{prefix[:-1]}`" if prefix else "Top level"
    lines = ["#" * level + " " + title, ""]
    if prefix and section_help(cls):  # the root's docstring is for readers of the code
        lines += [section_help(cls), ""]
    lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    subsections = []
    for name, (tp, meta) in fields_of(cls).items():
        key = prefix + name
        if is_section(tp):
            subsections.append((tp, getattr(defaults, name), f"{key}."))
            continue
        default = f"`{_yaml_flow(getattr(defaults, name))}`"
        row = [f"`{key}`", _type_text(tp), default, _allowed_text(meta), meta.get("help", "")]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if len(lines) and lines[-1].startswith("|---"):  # a section of sections only
        lines = lines[:-2]
    out = lines + [""]
    for sub, sub_defaults, sub_prefix in subsections:
        out += _tables(sub, sub_defaults, sub_prefix, min(level + 1 if prefix else level, 4))
    return out


def reference_table() -> str:
    """The Markdown reference of every config key: a table per section with each option's
    type, default, allowed values (choices, pattern, list length, bounds) and help."""
    return "\n".join(_tables(Config, Config(), "", 3)).rstrip("\n") + "\n"


def write_json_schema(out: str | Path) -> Path:
    """Writes json_schema() to the file `out` (atomically). An existing file is replaced only
    when it is an earlier gfldet config schema: a user file of that name is never written
    over. Raises FileExistsError / IsADirectoryError (one line) otherwise."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"config schema --out {out} is a folder: name a .json file")
    if out.exists() and not _is_our_schema(out):
        raise FileExistsError(
            f"config schema --out {out} exists and is not a gfldet config schema: name another "
            "file or remove it"
        )
    with atomic_open(out, "w", encoding="utf-8") as f:
        f.write(json_schema_text())
    return out


def _is_our_schema(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("title") == "gfldet config"


BEGIN_MARK = "<!-- begin: generated by gfldet.config_schema.reference_table() -->"
END_MARK = "<!-- end: generated -->"


def replace_reference(markdown: str) -> str:
    """`markdown` (docs/configs.md) with the text between BEGIN_MARK and END_MARK replaced by
    reference_table(). Raises ValueError when the markers are missing."""
    start, end = markdown.find(BEGIN_MARK), markdown.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN_MARK} ... {END_MARK} block")
    head = markdown[: start + len(BEGIN_MARK)]
    return f"{head}\n\n{reference_table()}\n{markdown[end:]}"
