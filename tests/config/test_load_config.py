"""gfldet.config: defaults, `_base_` inheritance, `--set` overrides, validation errors, dumps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gfldet.config import CHOICES, DEFAULTS, Config, ConfigError, dump_config, load_config
from gfldet.core.options import to_dict
from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = sorted((REPO / "configs").glob("**/*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dotted(d: dict | Config, prefix: str = "") -> set[str]:
    d = d if isinstance(d, dict) else to_dict(d)
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= dotted(v, f"{prefix}{k}.")
    return out


def config_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ---------------------------------------------------------------- defaults and inheritance


def test_minimal_file_gives_every_default(tmp_path):
    cfg = load_config(write(tmp_path / "min.yaml", "seed: 3\n"))
    assert dotted(cfg) == dotted(DEFAULTS)
    expect = Config()
    expect.seed = 3
    assert cfg == expect


def test_empty_file_equals_defaults(tmp_path):
    assert to_dict(load_config(write(tmp_path / "empty.yaml", ""))) == DEFAULTS


def test_loaded_config_does_not_alias_defaults(tmp_path):
    path = write(tmp_path / "min.yaml", "seed: 1\n")
    before = copy.deepcopy(DEFAULTS)
    cfg = load_config(path)
    cfg.data.train.img_scale.append(256)
    cfg.model.backbone.depth = 18
    cfg.model.mean[0] = 0.0
    assert before == DEFAULTS == to_dict(Config())
    assert load_config(path).data.train.img_scale == [1333, 800]
    assert load_config(path).model.mean[0] == 123.675


def test_a_base_given_as_a_string_is_deep_merged(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  backbone:\n    depth: 18\n    base_width: 32\n")
    child = write(
        tmp_path / "child.yaml",
        "_base_: base.yaml\nmodel:\n  backbone:\n    base_width: 16\n  num_classes: 4\n",
    )
    cfg = load_config(child)
    bb = cfg.model.backbone
    assert bb.depth == 18  # sibling from the base kept
    assert bb.base_width == 16  # overridden by the child
    assert bb.frozen_stages == 1 and bb.norm_eval is True  # defaults kept
    assert cfg.model.num_classes == 4
    assert to_dict(cfg.model.head) == DEFAULTS["model"]["head"]
    assert not hasattr(cfg, "_base_")


def test_bases_given_as_a_list_are_relative_and_the_later_wins(tmp_path):
    write(tmp_path / "_base_" / "model.yaml", "model:\n  neck:\n    out_channels: 32\n")
    write(tmp_path / "_base_" / "sched.yaml", "train:\n  epochs: 24\n  lr: 0.02\n")
    write(tmp_path / "_base_" / "sched2.yaml", "train:\n  epochs: 36\n")
    child = write(
        tmp_path / "sub" / "child.yaml",
        "_base_: [../_base_/model.yaml, ../_base_/sched.yaml, ../_base_/sched2.yaml]\n"
        "train:\n  momentum: 0.8\n",
    )
    cfg = load_config(child)
    assert cfg.model.neck.out_channels == 32
    assert cfg.train.epochs == 36  # the later base wins
    assert cfg.train.lr == 0.02
    assert cfg.train.momentum == 0.8
    assert cfg.train.weight_decay == DEFAULTS["train"]["weight_decay"]


def test_a_chain_of_three_files_merges_with_the_nearest_winning(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\nmodel:\n  head:\n    reg_max: 8\n    stacked_convs: 2\n")
    write(
        tmp_path / "b" / "b.yaml", "_base_: ../a.yaml\nseed: 2\nmodel:\n  head:\n    reg_max: 10\n"
    )
    c = write(tmp_path / "c.yaml", "_base_: b/b.yaml\nmodel:\n  head:\n    num_groups: 8\n")
    head = load_config(c).model.head
    assert (head.reg_max, head.stacked_convs, head.num_groups) == (10, 2, 8)
    assert load_config(c).seed == 2


def test_diamond_inheritance_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "seed: 5\n")
    write(tmp_path / "l.yaml", "_base_: root.yaml\ntrain:\n  epochs: 2\n")
    write(tmp_path / "r.yaml", "_base_: root.yaml\ntrain:\n  lr: 0.5\n")
    cfg = load_config(write(tmp_path / "top.yaml", "_base_: [l.yaml, r.yaml]\n"))
    assert (cfg.seed, cfg.train.epochs, cfg.train.lr) == (5, 2, 0.5)


def test_nullable_keys_accept_null_and_their_type(tmp_path):
    cfg = load_config(
        write(
            tmp_path / "n.yaml",
            "model:\n  num_classes: 3\n  backbone:\n    pretrained: /some/file.pth\n"
            "data:\n  train:\n    ms_short_range: [480, 800]\n"
            "train:\n  max_iters: null\n  grad_clip: 35\n",
        )
    )
    assert cfg.model.num_classes == 3
    assert cfg.model.backbone.pretrained == "/some/file.pth"
    assert cfg.data.train.ms_short_range == [480, 800]
    assert cfg.train.max_iters is None and cfg.train.grad_clip == 35


def test_int_is_accepted_for_a_float_key(tmp_path):
    cfg = load_config(write(tmp_path / "f.yaml", "train:\n  lr: 1\n  momentum: 0\n"))
    assert cfg.train.lr == 1 and cfg.train.momentum == 0


# ---------------------------------------------------------------- --set overrides


def test_set_overrides_are_yaml_typed(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  backbone:\n    pretrained: x.pth\n")
    cfg = load_config(
        path,
        [
            "train.epochs=3",
            "train.lr=0.02",
            "data.train.img_scale=[512,512]",
            "model.backbone.pretrained=null",
            "model.num_classes=5",
            "work_dir = runs/a=b",
        ],
    )
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.lr == 0.02 and type(cfg.train.lr) is float
    assert cfg.data.train.img_scale == [512, 512]
    assert cfg.model.backbone.pretrained is None
    assert cfg.model.num_classes == 5
    assert cfg.work_dir == "runs/a=b"  # split at the first '=' only
    # untouched siblings keep file/default values
    assert cfg.data.val.img_scale == [1333, 800]
    assert cfg.train.momentum == 0.9


def test_set_wins_over_file_and_base(tmp_path):
    write(tmp_path / "b.yaml", "train:\n  epochs: 7\n")
    path = write(tmp_path / "c.yaml", "_base_: b.yaml\ntrain:\n  lr: 0.3\n")
    cfg = load_config(path, ["train.epochs=2", "train.lr=0.1"])
    assert (cfg.train.epochs, cfg.train.lr) == (2, 0.1)


def test_exponent_floats_without_a_dot(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  weight_decay: 1e-4\n")
    cfg = load_config(path, ["train.lr=1e-3"])
    assert cfg.train.weight_decay == pytest.approx(1e-4)
    assert cfg.train.lr == pytest.approx(1e-3)


# ---------------------------------------------------------------- errors


def test_unknown_key_in_child_names_child(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  backbone:\n    depth: 18\n")
    child = write(
        tmp_path / "child.yaml", "_base_: base.yaml\nmodel:\n  backbone:\n    dpeth: 34\n"
    )
    msg = config_error(child)
    assert "model.backbone.dpeth" in msg
    assert str(child.resolve()) in msg
    assert str(base.resolve()) not in msg


def test_unknown_key_in_base_names_base(tmp_path):
    base = write(tmp_path / "base.yaml", "train:\n  epochs: 3\n  lr_step: [2]\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain:\n  epochs: 4\n")
    msg = config_error(child)
    assert "train.lr_step" in msg
    assert str(base.resolve()) in msg
    assert str(child.resolve()) not in msg


def test_an_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "c.yaml", "optimizer:\n  lr: 0.1\n")
    msg = config_error(path)
    assert "'optimizer'" in msg and str(path.resolve()) in msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('train:\n  epochs: "ten"\n', "train.epochs"),
        ("train:\n  epochs: true\n", "train.epochs"),  # bool is not an int here
        ("train:\n  epochs: 3.0\n", "train.epochs"),
        ("train:\n  lr: '0.1'\n", "train.lr"),
        ("train:\n  lr: false\n", "train.lr"),
        ("model:\n  num_classes: true\n", "model.num_classes"),
        ("model:\n  backbone:\n    norm_eval: 1\n", "model.backbone.norm_eval"),
        ("model:\n  backbone:\n    pretrained: 5\n", "model.backbone.pretrained"),
        ("train:\n  grad_clip: yes\n", "train.grad_clip"),
        ("data:\n  train:\n    img_scale: 800\n", "data.train.img_scale"),
        ("train:\n  epochs:\n    value: 3\n", "train.epochs"),  # mapping for a scalar
        ("model:\n  backbone: resnet50\n", "model.backbone"),  # scalar for a mapping
        ("train:\n  epochs: null\n", "train.epochs"),  # not nullable
    ],
)
def test_mistyped_values_name_key_and_file(tmp_path, text, key):
    path = write(tmp_path / "bad.yaml", text)
    msg = config_error(path)
    assert f"'{key}'" in msg
    assert str(path.resolve()) in msg


def test_mistyped_value_in_base_names_base(tmp_path):
    base = write(tmp_path / "base.yaml", "train:\n  epochs: ten\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain:\n  lr: 0.1\n")
    msg = config_error(child)
    assert "'train.epochs'" in msg and str(base.resolve()) in msg


def test_scalar_in_child_over_mapping_in_base_names_child(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  neck:\n    out_channels: 32\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel:\n  neck: 64\n")
    msg = config_error(child)
    assert "'model.neck'" in msg and str(child.resolve()) in msg


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("model.backbone.dpeth=34", "model.backbone.dpeth"),
        ("optimizer.lr=0.1", "optimizer.lr"),
        ("train.epochs.x=1", "train.epochs.x"),
        ("train.epochs=ten", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("train.lr=fast", "train.lr"),
        ("model.backbone=18", "model.backbone"),
        ("train.epochs", "train.epochs"),  # no '='
    ],
)
def test_bad_set_items_blame_set(tmp_path, item, needle):
    # The file sets train.epochs validly: an error in the override must blame --set, not it.
    path = write(tmp_path / "ok.yaml", "train:\n  epochs: 3\n")
    msg = config_error(path, [item])
    assert "--set" in msg
    assert needle in msg
    assert str(path.resolve()) not in msg


def test_missing_base_file_is_named(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: [nope/missing_base.yaml]\n")
    msg = config_error(child)
    assert "missing_base.yaml" in msg and str(child.resolve()) in msg


@pytest.mark.parametrize("value", ["5", "", "[3]"])
def test_a_base_that_is_not_a_path_or_a_list_is_an_error(tmp_path, value):
    path = write(tmp_path / "c.yaml", f"_base_: {value}\n")
    msg = config_error(path)
    assert "_base_" in msg and str(path.resolve()) in msg


def test_an_inheritance_cycle_is_an_error(tmp_path):
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    b = write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    msg = config_error(a)
    assert "cycle" in msg
    assert str(a.resolve()) in msg and str(b.resolve()) in msg


def test_self_inheritance_is_a_cycle(tmp_path):
    a = write(tmp_path / "a.yaml", "_base_: ./a.yaml\n")
    assert "cycle" in config_error(a)


def test_a_missing_config_file_is_an_error_naming_it(tmp_path):
    msg = config_error(tmp_path / "does_not_exist.yaml")
    assert "not found" in msg and "does_not_exist.yaml" in msg


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_a_file_that_is_not_a_mapping_is_an_error_naming_it(tmp_path, text):
    path = write(tmp_path / "list.yaml", text)
    msg = config_error(path)
    assert "mapping" in msg and str(path.resolve()) in msg


def test_invalid_yaml_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "train:\n  epochs: [1, 2\n")
    msg = config_error(path)
    assert "YAML" in msg and str(path.resolve()) in msg


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------- dump / shipped configs


def test_a_dumped_config_loads_back_equal(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  num_classes: 7\n  backbone:\n    depth: 34\n")
    path = write(tmp_path / "c.yaml", "_base_: base.yaml\ndata:\n  train:\n    flip_prob: 0.0\n")
    cfg = load_config(path, ["train.grad_clip=10.5", "data.train.ms_short_range=[480,800]"])
    out = tmp_path / "out" / "dumped.yaml"
    out.parent.mkdir()
    dump_config(cfg, out)
    assert "_base_" not in out.read_text()
    again = load_config(out)
    assert again == cfg
    assert again.model.backbone.pretrained is None
    assert again.train.grad_clip == 10.5
    # and dumping DEFAULTS (with its nulls) loads back to DEFAULTS
    dump_config(Config(), tmp_path / "defaults.yaml")
    assert load_config(tmp_path / "defaults.yaml") == Config()


def test_the_glob_of_shipped_configs_finds_the_demo():
    assert REPO / "configs" / "shapes_demo.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_shipped_config_loads_with_every_key(path):
    # Files under configs/_base_ are partials; they still hold only schema keys, so they load.
    cfg = load_config(path)
    assert dotted(cfg) == dotted(DEFAULTS)
    if "_base_" not in path.relative_to(REPO / "configs").parts:
        assert cfg.model.backbone.depth in (18, 34, 50, 101)


def test_the_demo_config_keeps_the_readmes_settings():
    cfg = load_config(REPO / "configs" / "shapes_demo.yaml")
    assert cfg.model.backbone.depth == 18
    assert cfg.model.backbone.base_width == 32
    assert cfg.model.backbone.pretrained is None
    assert cfg.device == "cpu"
    assert cfg.data.train.img_scale == [256, 256]
    # the budget behind `make demo` <= 15 min on 2 cores (README); change both together
    assert cfg.train.epochs == 4 and cfg.train.optimizer == "adamw"
    assert cfg.train.lr_steps == [3]


# ---------------------------------------------------------------- choices and model switches


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("model.head.box", "foo"),
        ("model.head.quality", "centreness"),
        ("model.loss.cls", "QFL"),
        ("train.optimizer", "adam"),
    ],
)
def test_unknown_choice_names_key_value_and_choices(tmp_path, key, bad):
    allowed = CHOICES[key]
    # in a file: the file is blamed
    section, *rest = key.split(".")
    text = f"{section}:\n" + "".join(
        "  " * (i + 1) + f"{k}:" + (f" {bad}\n" if i == len(rest) - 1 else "\n")
        for i, k in enumerate(rest)
    )
    path = write(tmp_path / "bad.yaml", text)
    msg = config_error(path)
    assert f"'{key}'" in msg and repr(bad) in msg and str(path.resolve()) in msg
    assert all(choice in msg for choice in allowed)
    # on the command line: --set is blamed
    ok = write(tmp_path / "ok.yaml", "seed: 1\n")
    msg = config_error(ok, [f"{key}={bad}"])
    assert "--set" in msg and f"'{key}'" in msg and repr(bad) in msg
    assert all(choice in msg for choice in allowed)


def test_every_choice_is_accepted_and_defaults_are_choices(tmp_path):
    path = write(tmp_path / "ok.yaml", "seed: 1\n")
    for key, allowed in CHOICES.items():
        node = DEFAULTS
        for k in key.split("."):
            node = node[k]
        assert node == allowed[0], key  # the first choice is the default (GFL's)
    for quality in CHOICES["model.head.quality"]:
        cls = "qfl" if quality in ("joint", "dgqp") else "focal"
        for box in CHOICES["model.head.box"] if quality != "dgqp" else ["general"]:
            items = [
                f"model.head.quality={quality}",
                f"model.loss.cls={cls}",
                f"model.head.box={box}",
            ]
            cfg = load_config(path, items)
            assert (cfg.model.head.quality, cfg.model.head.box) == (quality, box)
    assert load_config(path, ["model.loss.cls=vfl"]).model.loss.cls == "vfl"
    assert load_config(path, ["train.optimizer=adamw"]).train.optimizer == "adamw"


def test_classification_loss_must_fit_the_quality_representation(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  head:\n    quality: centerness\n")
    msg = config_error(path)  # cls stays qfl, the default
    assert "'model.loss.cls'" in msg and "'qfl'" in msg and "the defaults" in msg
    assert "'model.head.quality'" in msg and "'centerness'" in msg and str(path.resolve()) in msg
    assert "focal" in msg
    msg = config_error(path, ["model.loss.cls=vfl"])
    assert "'vfl'" in msg and "--set" in msg
    assert load_config(path, ["model.loss.cls=focal"]).model.loss.cls == "focal"
    joint = write(tmp_path / "j.yaml", "model:\n  loss:\n    cls: focal\n")
    msg = config_error(joint)
    assert "'focal'" in msg and "'joint'" in msg and "qfl or vfl" in msg
    assert str(joint.resolve()) in msg


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("model.head.reg_max=0", "model.head.reg_max"),
        ("model.head.bin_width=0", "model.head.bin_width"),
        ("model.head.bin_width=-0.5", "model.head.bin_width"),
        ("model.head.bin_width=.nan", "model.head.bin_width"),
    ],
)
def test_reg_max_and_bin_width_must_be_positive(tmp_path, item, key):
    msg = config_error(write(tmp_path / "ok.yaml", "seed: 1\n"), [item])
    assert f"'{key}'" in msg and "--set" in msg


def test_model_options_are_checked_for_configs_made_in_code():
    from gfldet.model.build import build_model

    cfg = Config()
    cfg.model.num_classes = 3
    cfg.model.head.box = "foo"
    # The model knows nothing of config files: its own error, naming the key.
    with pytest.raises(ValueError, match="model.head.box.*general, dirac, gaussian"):
        build_model(cfg.model)
    cfg.model.head.box = "dirac"
    cfg.model.loss.cls = "focal"
    with pytest.raises(ValueError, match="model.loss.cls"):
        build_model(cfg.model)


@pytest.mark.parametrize(
    ("item", "minimum"),
    [("train.log_interval=0", 1), ("data.train.batch_size=0", 1), ("train.keep_last=-1", 0)],
)
def test_out_of_range_integers_name_the_key_and_the_minimum(item, minimum):
    with pytest.raises(ConfigError, match=rf"--set: '{item.split('=')[0]}' must be >= {minimum}"):
        load_config(REPO / "configs" / "shapes_demo.yaml", [item])


def test_keys_of_earlier_versions_say_what_to_write_instead(tmp_path):
    old = write(tmp_path / "old.yaml", "model:\n  fpn:\n    out_channels: 64\n")
    msg = config_error(old)
    assert "'model.fpn'" in msg and "model.neck.out_channels" in msg and msg.count("\n") == 0
    demo = REPO / "configs" / "shapes_demo.yaml"
    with pytest.raises(ConfigError, match=r"model.head.strides.*model.neck.extra_levels"):
        load_config(demo, ["model.head.strides=[8,16,32,64]"])
    assert load_config(demo, ["model.neck.extra_levels=1"]).model.neck.extra_levels == 1


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  num_classes: 2\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key 'train'.*line 1"):
        load_config(path)
    path.write_text("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: duplicate key 'epochs'"):
        load_config(path)
