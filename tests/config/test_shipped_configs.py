"""The shipped configs are package data, reachable by name (`--config NAME`, `_base_: NAME`)
from any folder; `gfldet config list` names them."""

from __future__ import annotations

import fnmatch
import os
import re

import pytest

from gfldet.cli import main
from gfldet.config import (
    SHIPPED_CONFIGS,
    ConfigError,
    load_config,
    shipped_config_list,
    shipped_configs,
)
from gfldet.core.options import to_dict
from tests.helpers import REPO


def test_the_repository_configs_folder_is_a_relative_link_to_the_package():
    link = REPO / "configs"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == SHIPPED_CONFIGS == REPO / "gfldet" / "configs"


def test_every_yaml_under_gfldet_configs_is_shipped_and_named():
    files = sorted(SHIPPED_CONFIGS.glob("**/*.yaml"))
    assert len(files) == len(shipped_configs()) > 40
    assert "gfl_r50_fpn_1x_coco" in shipped_configs()
    assert "ablations/t3_qfl" in shipped_configs()
    # tomllib is Python 3.11+: read the one line of [tool.setuptools.package-data]
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1]
    globs = re.findall(r'"([^"]+)"', re.search(r"^gfldet = \[(.*)\]$", section, re.M).group(1))
    for f in files:
        rel = f.relative_to(REPO / "gfldet").as_posix()
        assert any(fnmatch.fnmatchcase(rel, g) and g.count("/") == rel.count("/") for g in globs), (
            f"{rel} is not package data (pyproject [tool.setuptools.package-data])"
        )


@pytest.mark.parametrize("name", ["gfl_r50_fpn_1x_coco", "gfl_r50_fpn_1x_coco.yaml"])
def test_config_by_name_from_any_folder(tmp_path, monkeypatch, name):
    expected = to_dict(load_config(SHIPPED_CONFIGS / "gfl_r50_fpn_1x_coco.yaml"))
    monkeypatch.chdir(tmp_path)
    assert to_dict(load_config(name)) == expected
    assert load_config("ablations/t3_qfl", ["train.epochs=1"]).train.epochs == 1


def test_base_by_name(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("_base_: gfl_lite_320_coco\ntrain:\n  epochs: 3\n")
    cfg = load_config(child)
    lite = load_config("gfl_lite_320_coco")
    assert cfg.train.epochs == 3 and cfg.model == lite.model
    child.write_text("_base_: [gflv2_r50_fpn_1x_coco.yaml, ablations/t2b_reg_max_12]\n")
    assert load_config(child).model.head.reg_max == 12
    assert load_config(child).model.head.quality == "dgqp"


def test_a_file_of_that_name_wins_over_the_shipped_config(tmp_path, monkeypatch):
    (tmp_path / "shapes_demo").write_text("seed: 7\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("shapes_demo").seed == 7
    (tmp_path / "gfl_r50_fpn_1x_coco.yaml").write_text("seed: 9\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: gfl_r50_fpn_1x_coco.yaml\n")
    assert load_config(child).seed == 9  # the sibling file, as before


def test_a_missing_name_is_one_line_listing_the_shipped_configs(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config("gfl_r50_fpn_1x_cooc")
    msg = str(info.value)
    assert msg.startswith("config file not found: gfl_r50_fpn_1x_cooc; did you mean ")
    assert "'gfl_r50_fpn_1x_coco'" in msg and "shapes_demo" in msg and "ablations/" in msg
    assert "\n" not in msg
    child = tmp_path / "child.yaml"
    child.write_text("_base_: no_such_base\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: _base_ file not found: no_such_base "):
        load_config(child)


def test_config_list_names_each_config_with_its_first_comment(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == shipped_config_list().splitlines()
    assert len(lines) == len(shipped_configs())
    by_name = {ln.split()[0]: ln for ln in lines}
    assert "ablations/t3_qfl" in by_name and 'Table 3, row "+ QFL"' in by_name["ablations/t3_qfl"]
    assert lines[0].split()[0] == "gfl_lite_320_coco"  # the top-level configs first
