"""Registries: the names a config may give to a head, a neck, a box or a quality representation.

A registry maps each name to the class it builds. gfldet's own entries are "module:attr"
strings, imported only when a model is built, so that loading a config (which checks a name
with `name in QUALITIES`) never imports torch. Your own classes join from Python, with no edit
to gfldet's files:

    from gfldet.model.registry import QUALITIES

    QUALITIES.register("my_quality", MyQuality)   # or @QUALITIES.register("my_quality")

after which `model.head.quality: my_quality` is a valid value in every config that process
loads (docs/extending.md). A registry is a read-only sequence of its names, in registration
order (gfldet's default first), so an option takes it as its `choices`; `get(name)` gives the
class.

Some checks of a config need a fact about an entry before anything is imported: whether a
quality representation trains soft (IoU) class targets, and which values of other keys it
needs. Such facts are declared with the entry (read from the class's attributes when a class
is registered) and, where the class states them too, compared with it when it is imported.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, overload

NAME = re.compile(r"^[A-Za-z_][\w.-]*$")  # YAML-friendly; never "module:Class"


class Registry(Sequence[str]):
    """The names of one kind of part (`key`: the config key that names it) and their classes.

    `facts`: the fact names an entry of this registry carries, with their defaults.
    """

    def __init__(self, key: str, facts: dict[str, Any] | None = None) -> None:
        self.key = key
        self._defaults = dict(facts or {})
        self._targets: dict[str, Any] = {}  # name -> "module:attr" or the object itself
        self._facts: dict[str, dict[str, Any]] = {}
        self._builtin: set[str] = set()

    # A sequence of names: what option(choices=...) and error messages use.
    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return list(self._targets)[index]

    def __len__(self) -> int:
        return len(self._targets)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._targets))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._targets

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self)})"

    def builtin(self, name: str, target: str, **facts: Any) -> None:
        """Adds one of gfldet's own entries: `target` is "module:attr", imported on first use."""
        self.register(name, target, **facts)
        self._builtin.add(name)

    def register(self, name: str, target: Any = None, **facts: Any) -> Any:
        """Adds `target` (a class, or a "module:attr" string imported on first use) under
        `name`; without `target`, a decorator. `facts` override what the class says (needed
        for a string target whose facts differ from the defaults). Registering a name again
        with the same target (the same "module:attr", e.g. a module imported again) replaces it;
        another target is an error."""
        if target is None:

            def decorator(obj: Any) -> Any:
                self.register(name, obj, **facts)
                return obj

            return decorator
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(
                f"{self.key}: a registered name must be a word (letters, digits, _ . -), "
                f"got {name!r}"
            )
        unknown = sorted(set(facts) - set(self._defaults))
        if unknown:
            raise TypeError(f"{self.key}: unknown fact(s) {unknown}; known: {list(self._defaults)}")
        if name in self._targets and self._origin(name) != _origin_of(target):
            raise ValueError(
                f"{self.key}: {name!r} is registered already ({self._origin(name)}); pick "
                "another name, or unregister it first"
            )
        if isinstance(target, str):
            declared = {k: facts.get(k, v) for k, v in self._defaults.items()}
        else:
            declared = {k: facts.get(k, getattr(target, k, v)) for k, v in self._defaults.items()}
        self._targets[name] = target
        self._facts[name] = declared
        return target

    def unregister(self, name: str) -> None:
        """Removes an entry you registered (gfldet's own cannot be removed)."""
        if name in self._builtin:
            raise ValueError(f"{self.key}: {name!r} is one of gfldet's own and stays")
        self._targets.pop(name, None)
        self._facts.pop(name, None)

    def facts(self, name: str) -> dict[str, Any]:
        """The entry's declared facts (no import)."""
        self._check_name(name)
        return dict(self._facts[name])

    def get(self, name: str) -> Any:
        """The class registered under `name`, imported on first use; its facts must agree
        with the declared ones."""
        self._check_name(name)
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                origin = self._origin(name)
                raise ImportError(f"{self.key} {name!r}: cannot import {origin} ({e})") from None
            for fact, value in self._facts[name].items():
                actual = getattr(target, fact, value)  # a fact the class does not state
                if actual != value:
                    raise TypeError(
                        f"{self.key} {name!r}: registered with {fact}={value!r}, but "
                        f"{self._origin(name)} has {fact}={actual!r}"
                    )
            self._targets[name] = target
        return target

    def _check_name(self, name: str) -> None:
        if name not in self:
            raise ValueError(f"{self.key} must be one of {', '.join(self)}; got {name!r}")

    def _origin(self, name: str) -> str:
        return _origin_of(self._targets[name])


def _origin_of(target: Any) -> str:
    """ "module:attr" of a target (a string target is that already)."""
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"


# gfldet's own entries; the first of each is the default (GFL's).
HEADS = Registry("model.head.type")
HEADS.builtin("gfl", "gfldet.model.head:GFLHead")

NECKS = Registry("model.neck.type")
NECKS.builtin("fpn", "gfldet.model.necks:FPN")
NECKS.builtin("pafpn", "gfldet.model.necks:PAFPN")

# Box representations (paper Table 2(a)), gfldet.model.representations.
BOXES = Registry("model.head.box")
BOXES.builtin("general", "gfldet.model.representations:GeneralDistribution")
BOXES.builtin("dirac", "gfldet.model.representations:DiracDelta")
BOXES.builtin("gaussian", "gfldet.model.representations:Gaussian")

# Quality representations (paper Table 1(a), and GFLv2), gfldet.model.representations.
# soft_targets: the class target is the IoU score (trained with QFL or VFL), else one-hot
# (focal). requires: {other key (under model.): (allowed values, why)}.
QUALITIES = Registry("model.head.quality", {"soft_targets": False, "requires": {}})
_REPR = "gfldet.model.representations"
QUALITIES.builtin("joint", f"{_REPR}:JointQuality", soft_targets=True)
QUALITIES.builtin("none", f"{_REPR}:NoQuality")
QUALITIES.builtin("centerness", f"{_REPR}:CenternessBranch")
QUALITIES.builtin("iou", f"{_REPR}:IoUBranch")
QUALITIES.builtin("centerness_guided", f"{_REPR}:CenternessGuided")
QUALITIES.builtin("iou_guided", f"{_REPR}:IoUGuided")
QUALITIES.builtin(
    "dgqp",
    f"{_REPR}:DistributionGuidedQuality",
    soft_targets=True,
    requires={
        "head.box": (("general",), "predicts the quality from the edge distributions"),
        "loss.cls": (
            ("qfl",),
            "trains the joint score sigmoid(cls) x quality with QFL on probabilities",
        ),
    },
)

__all__ = ["BOXES", "HEADS", "NECKS", "QUALITIES", "Registry"]
