"""Typed option sections: how each pipeline stage declares its settings.

Every stage (model, data, training) declares its options as dataclasses whose fields are made
with `option()`: the default, and the constraints of the value (choices, bounds, list length).
These declarations are the one place for each default, type and choice: `gfldet.config`
validates YAML files against them, and builders turn plain dicts into instances with
`from_dict`. This module is pure Python (no torch), so configs load fast.

    @dataclass
    class TestOptions:
        score_thr: float = option(0.05, ge=0, le=1)
        nms_pre: int = option(1000)

Types are the fields' annotations: bool, int, float, str, list[int], list[float], X | None,
or another option dataclass (a nested section).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import re
import reprlib
import types
import typing
from functools import cache
from typing import Any


class OptionError(ValueError):
    """A value (or a combination of values) that the options do not allow.

    `keys` are the dotted keys involved, relative to the section that raised it; `template` is
    the message with each key written as `{key}`, so that the config layer can prefix the keys
    and name the files that set them (`render`). str() gives the plain message.
    """

    def __init__(self, keys: list[str], template: str) -> None:
        self.keys, self.template = list(keys), template
        super().__init__(self.render())

    def render(self, describe: Any = None, prefix: str = "") -> str:
        """The message with every `{key}` replaced by describe(prefix + key) ('key' quoted by
        default)."""
        describe = describe or (lambda k: f"'{k}'")
        out = self.template
        for k in self.keys:
            out = out.replace("{" + k + "}", describe(prefix + k))
        return out


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) cut to at most `limit` characters, for error messages: a config value may be
    a long string or a huge (alias-expanded) structure, which must not flood the terminal or
    take the memory that printing it in full would. Nested containers show their first items.
    """
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxset, r.maxdict = 3, 8, 8, 8, 6
    r.maxstring = r.maxother = r.maxlong = max(limit, 8)
    text = r.repr(value)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def option(
    default: Any,
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    length: int | None = None,
    pattern: str | None = None,
    pattern_says: str | None = None,
    help: str | None = None,
) -> Any:
    """A dataclass field with its constraints. Bounds apply to a number, or to every item of a
    list; `length` fixes a list's length; `choices` lists the allowed values; `pattern` is a
    regular expression that a string must match in full, and `pattern_says` the words an error
    uses for it ("auto, cpu or cuda:N"); `help` is the one-line description
    (what the option does and why) that docs/configs.md and the JSON Schema show."""
    meta = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "length": length}
    meta.update(pattern=pattern, pattern_says=pattern_says, help=help)
    meta = {k: v for k, v in meta.items() if v is not None}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A field holding a nested option section with its defaults."""
    return dataclasses.field(default_factory=cls)


@cache
def fields_of(cls: type) -> dict[str, tuple[Any, dict]]:
    """{name: (resolved type, constraints)} of an option dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)}


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """X | None -> (X, True); X -> (X, False)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported option type {tp}")
        return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    if tp is float:
        return "int or float"  # an integer is a fine value for a float option
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return tp.__name__


def _scalar_ok(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False  # bool is an int subclass in Python; never accept it for a number
    if tp is int:
        return isinstance(value, int)
    if tp is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, tp)


_BOUNDS = {
    "ge": (">=", operator.ge),
    "gt": (">", operator.gt),
    "le": ("<=", operator.le),
    "lt": ("<", operator.lt),
}


def _bound_problem(value: float, meta: dict) -> str | None:
    for key, (sign, holds) in _BOUNDS.items():
        if key in meta and not holds(value, meta[key]):
            return f"{sign} {meta[key]:g}"
    return None


def value_problem(value: Any, tp: Any, meta: dict) -> str | None:
    """Why `value` is not a valid value of an option of type `tp` with constraints `meta`, as
    the end of a sentence ("must be >= 1, got 0"), or None when it is valid. Sections
    (dataclasses) are checked key by key by the caller."""
    tp, nullable = _split_optional(tp)
    if value is None:
        return None if nullable else "must not be null"
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        n = meta.get("length")
        if not isinstance(value, list) or (n is not None and len(value) != n):
            size = f" of {n}" if n is not None else ""
            return f"must be a list{size} of {_type_name(item)}, got {short_repr(value)}"
        for v in value:
            if not _scalar_ok(v, item):
                return f"must be a list of {_type_name(item)}, got {short_repr(value)}"
            bound = _bound_problem(v, meta)
            if bound:
                return f"must hold values {bound}, got {short_repr(value)}"
        return None
    if not _scalar_ok(value, tp):
        return f"must be {_type_name(tp)}, got {short_repr(value)}"
    if tp in (int, float):
        bound = _bound_problem(value, meta)
        if bound:
            return f"must be {bound}, got {short_repr(value)}"
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        says = meta.get("pattern_says") or f"a match of {pattern}"
        return f"must be {says}; got {short_repr(value)}"
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}; got {short_repr(value)}"
    return None


def to_dict(options: Any) -> dict[str, Any]:
    """An option section (or a whole config) as a plain nested dict: what YAML files and
    checkpoints hold."""
    return dataclasses.asdict(options)


def checked(options: Any, prefix: str = "") -> Any:
    """A copy of an option section whose every value is checked, as when it is read from a
    file: for sections made or changed in code. Raises OptionError naming the dotted key."""
    return from_dict(type(options), to_dict(options), prefix)


def defaults_of(cls: type) -> dict[str, Any]:
    """The section's defaults as a plain nested dict."""
    return dataclasses.asdict(cls())


def from_dict(cls: type, values: dict[str, Any] | None, prefix: str = "") -> Any:
    """An instance of option dataclass `cls` from a (partial) nested dict, every value checked.

    Missing keys keep their defaults. Raises OptionError naming the dotted key (with `prefix`);
    cross-checks between options are the section's own (e.g. model.options.check_model_options).
    """
    values = dict(values or {})
    kwargs = {}
    for name, (tp, meta) in fields_of(cls).items():
        key = f"{prefix}{name}"
        if name not in values:
            continue
        value = values.pop(name)
        if is_section(tp):
            if isinstance(value, tp):
                kwargs[name] = value
                continue
            if not isinstance(value, dict):
                raise OptionError([key], f"{{{key}}} must be a mapping, got {short_repr(value)}")
            kwargs[name] = from_dict(tp, value, f"{key}.")
            continue
        problem = value_problem(value, tp, meta)
        if problem:
            raise OptionError([key], f"{{{key}}} {problem}")
        kwargs[name] = copy.deepcopy(value)
    if values:
        key = f"{prefix}{next(iter(values))}"
        raise OptionError([key], f"unknown option {{{key}}}")
    return cls(**kwargs)
