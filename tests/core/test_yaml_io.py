"""gfldet.core.yaml_io: the one YAML reader for user files, and bounded error messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gfldet.config import ConfigError, load_config
from gfldet.core.options import short_repr
from gfldet.core.yaml_io import MAX_ALIAS_NODES, YamlError, load_yaml_file, load_yaml_text


def bomb(indent: str) -> str:
    """Ten YAML list items that load as a small graph of shared lists but expand to 9**9
    strings: the value of a key at `indent`."""
    lines = [f"{indent}- &a [{', '.join(['lol'] * 9)}]"]
    lines += [
        f"{indent}- &{c} [{', '.join(['*' + p] * 9)}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    return "\n".join(lines) + "\n"


BOMB = "bomb:\n" + bomb("  ")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def one_line_error(path: Path, text: str) -> str:
    """load_config's error for a config file holding `text`: fast, and one line."""
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(write(path, text))
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize(
    "text",
    [
        # printed in full by the type error of a list of str
        "data:\n  classes:\n" + bomb("    "),
        # passed on to a custom backbone, expanded by every copy of the config
        "model:\n  backbone:\n    type: my.module:Net\n    kwargs:\n      layers:\n"
        + bomb("        "),
    ],
)
def test_alias_bomb_in_a_config_is_a_one_line_error_naming_the_file(tmp_path, text):
    message = one_line_error(tmp_path / "bomb.yaml", text)
    assert str(tmp_path / "bomb.yaml") in message
    assert "aliases (*name) would expand the document by" in message


def test_alias_bomb_file_is_refused_without_expanding_it(tmp_path):
    with pytest.raises(YamlError, match=r"bomb\.yaml: aliases .* than the 100,000 allowed"):
        load_yaml_file(write(tmp_path / "bomb.yaml", BOMB))


def test_a_few_aliases_are_fine():
    doc = load_yaml_text("s: &s [1333, 800]\ntrain: {img_scale: *s}\nval: {img_scale: *s}\n")
    assert doc["val"]["img_scale"] == [1333, 800]


@pytest.mark.slow
def test_a_document_expanding_to_half_the_alias_limit_loads():
    n = MAX_ALIAS_NODES // 2
    assert len(load_yaml_text(f"a: &a [{', '.join(['1'] * n)}]\nb: *a\n")["b"]) == n


def test_merge_keys_merge_and_the_mapping_keys_win():
    doc = load_yaml_text("base: &b {lr: 0.1, epochs: 2}\nrun:\n  <<: *b\n  lr: 0.2\n")
    assert doc["run"] == {"lr": 0.2, "epochs": 2}


@pytest.mark.parametrize("text", ["a: &x [*x]\n", "a: &x {b: {c: *x}}\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text):
    with pytest.raises(YamlError, match=r"^src: an alias \(\*name\) refers to a node"):
        load_yaml_text(text, "src")


def test_syntax_errors_are_one_line_with_line_and_column():
    with pytest.raises(YamlError) as info:
        load_yaml_text("train:\n  lr: [0.1\n", "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml:3:1: not valid YAML: ")
    assert "\n" not in str(info.value)


def test_deep_nesting_is_an_error_not_a_recursion_traceback():
    with pytest.raises(YamlError, match=r"^deep: not valid YAML: nested too deeply$"):
        load_yaml_text("[" * 20000, "deep")


def test_duplicate_keys_name_both_lines():
    with pytest.raises(YamlError, match=r"^f:3: duplicate key 'lr' \(first set at line 2\)"):
        load_yaml_text("train:\n  lr: 1\n  lr: 2\n", "f")


def test_yaml_12_floats_and_empty_documents():
    assert load_yaml_text("lr: 1e-4\nw: 5E+2\nx: .5\n") == {"lr": 1e-4, "w": 500.0, "x": 0.5}
    assert load_yaml_text("") is None
    assert load_yaml_text("# only a comment\n") is None


def test_more_than_one_document_is_an_error():
    with pytest.raises(YamlError, match="expected a single document"):
        load_yaml_text("a: 1\n---\nb: 2\n", "two")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(YamlError, match=r"YAML file not found: .*missing\.yaml"):
        load_yaml_file(tmp_path / "missing.yaml")
    with pytest.raises(YamlError, match=r"YAML file is not a file: "):
        load_yaml_file(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(YamlError, match=r"latin1\.yaml: not UTF-8 text \(byte 9\)"):
        load_yaml_file(tmp_path / "latin1.yaml")


def test_short_repr_bounds_long_and_shared_values():
    shared = ["x" * 50] * 9
    for _ in range(8):
        shared = [shared] * 9  # 9**9 leaves if printed in full
    for value in (shared, "y" * 10_000, {str(i): i for i in range(1000)}, 10**500):
        text = short_repr(value, 80)
        assert len(text) <= 80, text
    assert short_repr([1333, 800]) == "[1333, 800]"
    assert short_repr("coco") == "'coco'"


def test_long_values_in_config_errors_are_cut(tmp_path):
    message = one_line_error(tmp_path / "long.yaml", f"device: {'x' * 5000}\n")
    assert "device" in message and "..." in message
    message = one_line_error(tmp_path / "list.yaml", f"data:\n  classes: {list(range(5000))}\n")
    assert "data.classes" in message


def test_key_lines_give_the_line_of_every_nested_key():
    lines: dict[str, int] = {}
    load_yaml_text(
        "seed: 1\ntrain:\n  lr: 0.1\n\n  epochs: 2\nmodel: {head: {reg_max: 8}}\n", "s", lines
    )
    assert lines == {
        "seed": 1,
        "train": 2,
        "train.lr": 3,
        "train.epochs": 5,
        "model": 6,
        "model.head": 6,
        "model.head.reg_max": 6,
    }


def test_config_errors_name_the_file_and_line_of_the_key(tmp_path):
    base = write(tmp_path / "base.yaml", "seed: 0\ntrain:\n  epochs: 2\n  lr: -1\n")
    write(tmp_path / "ok.yaml", "seed: 0\n")
    child = write(tmp_path / "child.yaml", "_base_: ok.yaml\n\nmodel:\n  hed: {}\n")
    message = one_line_error(tmp_path / "c2.yaml", "_base_: base.yaml\n")
    assert message.startswith(f"{base}:4: 'train.lr' must be > 0, got -1")
    with pytest.raises(ConfigError, match=rf"^{child}:4: unknown config key 'model.hed'$"):
        load_config(child)
