"""The registries of heads, necks, box and quality representations: names without torch,
gfldet's entries and their declared facts, your own entries in configs, the config checks."""

from __future__ import annotations

import pytest

from gfldet.config import CHOICES, ConfigError, load_config
from gfldet.model.options import HeadOptions, NeckOptions
from gfldet.model.registry import BOXES, HEADS, NECKS, QUALITIES, Registry

REGISTRIES = {
    "model.head.type": HEADS,
    "model.neck.type": NECKS,
    "model.head.box": BOXES,
    "model.head.quality": QUALITIES,
}


def test_config_choices_are_the_registries():
    for key, registry in REGISTRIES.items():
        assert CHOICES[key] is registry and registry.key == key
    assert list(HEADS) == ["gfl"] and HeadOptions().type == HEADS[0]
    assert list(NECKS) == ["fpn", "pafpn"] and NeckOptions().type == NECKS[0]
    assert list(BOXES) == ["general", "dirac", "gaussian"]
    assert list(QUALITIES) == [
        "joint",
        "none",
        "centerness",
        "iou",
        "centerness_guided",
        "iou_guided",
        "dgqp",
    ]


def test_every_builtin_entry_imports_and_its_facts_match_its_class():
    for registry in REGISTRIES.values():
        for name in registry:
            cls = registry.get(name)
            assert isinstance(cls, type), (registry.key, name)
    for name in QUALITIES:
        cls = QUALITIES.get(name)
        assert cls.soft_targets == QUALITIES.facts(name)["soft_targets"], name
    assert QUALITIES.facts("dgqp")["requires"]["head.box"][0] == ("general",)


def test_a_fact_that_contradicts_the_class_is_an_error():
    reg = Registry("model.head.quality", {"soft_targets": False})
    reg.register("wrong", "gfldet.model.representations:JointQuality", soft_targets=False)
    with pytest.raises(TypeError, match="soft_targets=False.*JointQuality has soft_targets=True"):
        reg.get("wrong")
    reg.register("missing", "gfldet.model.no_such_module:X")
    with pytest.raises(ImportError, match="cannot import gfldet.model.no_such_module:X"):
        reg.get("missing")


class Dummy:
    soft_targets = True


def test_register_rules():
    reg = Registry("model.head.quality", {"soft_targets": False})
    reg.builtin("builtin_one", "gfldet.model.representations:NoQuality")
    assert reg.register("mine", Dummy) is Dummy
    assert reg.facts("mine") == {"soft_targets": True}  # read from the class
    reg.register("mine", Dummy)  # the same class again: fine (a module imported twice)
    with pytest.raises(ValueError, match="'mine' is registered already"):
        reg.register("mine", Registry)
    with pytest.raises(ValueError, match="must be a word"):
        reg.register("my_module:Class", Dummy)
    with pytest.raises(TypeError, match="unknown fact"):
        reg.register("other", Dummy, colour="red")
    with pytest.raises(ValueError, match="gfldet's own"):
        reg.unregister("builtin_one")
    assert reg.register("decorated")(Dummy) is Dummy
    reg.unregister("mine")
    assert list(reg) == ["builtin_one", "decorated"] and reg[0] == "builtin_one"
    with pytest.raises(ValueError, match="must be one of builtin_one, decorated; got 'x'"):
        reg.get("x")
    assert "x" not in reg and ["builtin_one"] not in reg


@pytest.fixture
def my_quality():
    """A quality representation registered from user code, removed afterwards."""
    from gfldet.model.representations import NoQuality

    class OneHotMine(NoQuality):
        pass

    QUALITIES.register("one_hot_mine", OneHotMine)
    yield "one_hot_mine"
    QUALITIES.unregister("one_hot_mine")


def test_a_registered_name_is_valid_in_configs_and_checked_with_its_facts(tmp_path, my_quality):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  head:\n    quality: one_hot_mine\n  loss:\n    cls: focal\n")
    assert load_config(path).model.head.quality == my_quality
    # One-hot targets with QFL: the combination check names both keys and the file.
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.loss.cls=qfl"])
    msg = str(info.value)
    assert "'model.loss.cls' (from --set)" in msg and "'model.head.quality'" in msg
    assert str(path) in msg and "one_hot_mine" in msg


def test_an_unknown_name_names_the_key_the_file_and_the_registered_names(tmp_path, my_quality):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  head:\n    quality: one_hot_mien\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "'model.head.quality'" in msg and "'one_hot_mien'" in msg
    assert "joint, none" in msg and "one_hot_mine" in msg
    path.write_text("model:\n  head:\n    type: gfl2\n")
    with pytest.raises(ConfigError, match="'model.head.type' must be one of gfl; got 'gfl2'"):
        load_config(path)
