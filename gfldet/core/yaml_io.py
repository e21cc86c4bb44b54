"""The project's one YAML reader for files users hand in (configs, YOLO `data.yaml`).

A YAML file is data: the loader is PyYAML's SafeLoader (no object construction), with three
changes that keep a file from meaning something else than it says or from taking the process
down:

- YAML 1.2 floats: `1e-4` is the float 0.0001 (PyYAML's YAML 1.1 rules need a dot and a signed
  exponent, so `lr: 1e-4` would silently be a string).
- A key given twice in one mapping is an error naming both lines (PyYAML keeps the last one: a
  second `train:` section would silently replace the first).
- Aliases may not expand past `MAX_ALIAS_NODES` nodes, and may not refer to themselves. A
  "billion laughs" document of ten lines (`&a [*b, *b, ...]` nested) loads as a small graph of
  shared lists, but anything that walks it as a tree (printing it in an error message, copying
  it, writing it back) would need gigabytes.

Every problem is a `YamlError` (a ValueError) with a one-line message that names the source and,
where there is one, the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# Nodes that aliases may add to a document when expanded (each alias counts its anchor's whole
# subtree). Documents without aliases are never limited; real configs add a few hundred at most.
MAX_ALIAS_NODES = 100_000


class YamlError(ValueError):
    """A YAML source that cannot be read: bad syntax, a duplicate key, an alias bomb."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats that refuses duplicate keys (see the module docstring)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges keys in; the mapping's own keys override them
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if seen is not None:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, seen)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> int | None:
    """Nodes of the document with every alias replaced by a copy of its anchor's subtree, or
    None when an alias refers to a node that contains it (an endless document). Linear in the
    number of distinct nodes: each node's size is computed once."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if key in size:
            continue
        if key in on_path:
            return None
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return None
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


def _distinct_nodes(root: yaml.Node) -> int:
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            todo += _children(node)
    return len(seen)


def _syntax_error(e: yaml.YAMLError, source: str) -> YamlError:
    """PyYAML's multi-line message as one line: source:line:column: what is wrong."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    reason = "; ".join(p for p in parts if p) or type(e).__name__
    return YamlError(f"{where}: not valid YAML: {reason}")


def _record_lines(node: yaml.Node, lines: dict[str, int], prefix: str = "") -> None:
    """Fills `lines` with the line of each key of nested mappings, as dotted paths."""
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = f"{prefix}{key_node.value}"
            lines.setdefault(key, key_node.start_mark.line + 1)
            _record_lines(value_node, lines, key + ".")


def load_yaml_text(
    text: str, source: str = "<string>", key_lines: dict[str, int] | None = None
) -> Any:
    """The value of a YAML document (None for an empty one); `source` names it in errors.

    When `key_lines` is given, it receives the line (1-based) of every key of the document's
    nested mappings, by dotted path (`train.lr`), so that errors about a value can name it.
    Raises YamlError (one line) for invalid YAML, a duplicate key, more than one document,
    nesting too deep to read, or aliases that expand past MAX_ALIAS_NODES nodes.
    """
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlError(f"{source}: not valid YAML: nested too deeply") from None
        if node is None:
            return None
        expanded = _expanded_size(node)
        if expanded is None:
            raise YamlError(f"{source}: an alias (*name) refers to a node that contains it")
        added = expanded - _distinct_nodes(node)
        if added > MAX_ALIAS_NODES:
            raise YamlError(
                f"{source}: aliases (*name) would expand the document by {added:,} nodes, more "
                f"than the {MAX_ALIAS_NODES:,} allowed: write the values out, or use fewer "
                "nested aliases"
            )
        if key_lines is not None:
            _record_lines(node, key_lines)
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise YamlError(f"{source}: not valid YAML: nested too deeply") from None
    except _DuplicateKey as e:
        raise YamlError(
            f"{source}:{e.line}: duplicate key '{e.key}' (first set at line {e.first_line}); a "
            "repeated key or section would silently replace the first: merge them"
        ) from None
    except yaml.YAMLError as e:
        raise _syntax_error(e, source) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, key_lines: dict[str, int] | None = None) -> Any:
    """The value of the YAML file at `path` (UTF-8), read as load_yaml_text reads text
    (`key_lines` as there).

    Raises YamlError (one line, naming the file) when it is missing, unreadable, not UTF-8 or
    not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise YamlError(f"YAML file {what}: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise YamlError(f"cannot read {path}: {e.strerror or e}") from None
    return load_yaml_text(text, str(path), key_lines)
