"""`gfldet config schema`: the JSON Schema of a config, generated from the options, and the
Markdown reference of docs/configs.md generated from the same declarations."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gfldet.cli import main
from gfldet.config import DEFAULTS, ConfigError, load_config, shipped_configs
from gfldet.config_schema import (
    json_schema,
    json_schema_text,
    missing_help,
    reference_table,
    write_json_schema,
)
from gfldet.core.yaml_io import load_yaml_file, load_yaml_text


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, text: str) -> list[str]:
    return [e.message for e in validator.iter_errors(load_yaml_text(text) or {})]


def test_the_schema_is_draft_07():
    assert json_schema()["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert json.loads(json_schema_text()) == json_schema()


@pytest.mark.parametrize("name", list(shipped_configs()))
def test_every_shipped_config_validates(validator, name):
    errors = [e.message for e in validator.iter_errors(load_yaml_file(shipped_configs()[name]))]
    assert not errors, f"{name}: {errors}"


# Each case is refused both by the schema and by load_config: the editor flags what gfldet
# would refuse.
BAD = [
    "model:\n  hed: {}\n",  # unknown key
    "train:\n  epochs: '12'\n",  # wrong type
    "train:\n  epochs: true\n",  # a bool is not a number
    "train:\n  lr: 0\n",  # exclusive minimum
    "data:\n  train:\n    flip_prob: 1.5\n",  # maximum
    "train:\n  optimizer: adam\n",  # not a choice
    "model:\n  backbone:\n    depth: 42\n",  # an int choice
    "data:\n  train:\n    img_scale: [1333, 800, 1]\n",  # list length
    "data:\n  train:\n    img_scale: [1333, 0]\n",  # item bound
    "model:\n  head:\n    reg_max: null\n",  # null where not nullable
    "device: gpu\n",  # pattern
    "device: cuda:1x\n",  # pattern, anchored at both ends
    "_base_: 3\n",  # _base_ is a string or a list of strings
    "_base_: [a.yaml, 3]\n",
    "model: 3\n",  # a section must be a mapping
]


@pytest.mark.parametrize("text", BAD)
def test_a_bad_config_is_rejected_by_the_schema_and_by_load_config(validator, tmp_path, text):
    assert schema_errors(validator, text), text
    (tmp_path / "base.yaml").write_text("")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


GOOD = [
    "",
    "model:\n  num_classes: null\n  backbone:\n    pretrained: null\n",
    "model:\n  num_classes: 3\ndata:\n  train:\n    ms_short_range: [480, 800]\n",
    "train:\n  lr: 1\n  grad_clip: null\n",  # an int for a float
    "device: cuda:1\n",
    "_base_: [base.yaml]\n",
    "_base_: base.yaml\nmodel:\n  backbone:\n    type: pkg.mod:Net\n    kwargs: {depth: 3}\n",
]


@pytest.mark.parametrize("text", GOOD)
def test_a_good_config_passes_the_schema_and_load_config(validator, tmp_path, text):
    assert not schema_errors(validator, text), text
    (tmp_path / "base.yaml").write_text("")
    path = tmp_path / "good.yaml"
    path.write_text(text)
    load_config(path)


def test_schema_defaults_and_descriptions_come_from_the_options():
    def walk(node: dict, defaults: dict, prefix: str = "") -> None:
        for key, sub in node["properties"].items():
            if key == "_base_":
                continue
            if "properties" in sub:
                assert sub["additionalProperties"] is False
                walk(sub, defaults[key], f"{prefix}{key}.")
            else:
                assert sub["default"] == defaults[key], prefix + key
                assert sub["description"], prefix + key

    schema = json_schema()
    assert schema["additionalProperties"] is False
    walk(schema, DEFAULTS)
    lr = schema["properties"]["train"]["properties"]["lr"]
    assert lr["type"] == "number" and lr["exclusiveMinimum"] == 0
    classes = schema["properties"]["model"]["properties"]["num_classes"]
    assert classes["type"] == ["integer", "null"]
    scale = schema["properties"]["data"]["properties"]["train"]["properties"]["img_scale"]
    assert scale["minItems"] == scale["maxItems"] == 2 and scale["items"]["minimum"] == 1


def test_every_option_has_a_help_text():
    missing = missing_help()
    assert not missing, f"options without help= (docs and schema need one): {missing}"


def test_reference_table_has_a_row_per_option():
    table = reference_table()
    for key in _dotted_options(DEFAULTS):
        assert f"| `{key}` |" in table, key


def _dotted_options(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _dotted_options(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [prefix + k]
    return out


def test_config_schema_command_prints_or_writes(tmp_path, capsys):
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    out = tmp_path / "gfldet.schema.json"
    assert main(["config", "schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema()
    assert main(["config", "schema", "--out", str(out)]) == 0  # its own file: replaced


def test_config_schema_never_writes_over_a_user_file(tmp_path, capsys):
    user = tmp_path / "notes.json"
    user.write_text('{"mine": true}\n')
    assert main(["config", "schema", "--out", str(user)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gfldet: error: config schema --out") and "not a gfldet" in err
    assert err.count("\n") == 1
    assert user.read_text() == '{"mine": true}\n'
    with pytest.raises(IsADirectoryError):
        write_json_schema(tmp_path)


def test_schema_is_small_enough_to_ship(tmp_path):
    path = write_json_schema(tmp_path / "s.json")
    assert Path(path).stat().st_size < 100_000
