"""Fine-tuning from a detector checkpoint (model.init_from): what is loaded, what is not."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from gfldet.cli import main
from gfldet.config import Config
from gfldet.core.checkpoint import save_checkpoint
from gfldet.core.options import to_dict
from gfldet.data.synth import shapes_overrides
from gfldet.interop.mmdet import COCO_CLASSES
from gfldet.model.build import build_model
from gfldet.training.finetune import format_report, init_from_checkpoint, match_classes
from tests.helpers import DEMO, TINY_RUN, mmdet_gfl_state

pytestmark = pytest.mark.usefixtures("one_thread")

PRIOR = -math.log((1 - 0.01) / 0.01)  # gfl_cls bias at model.head.prior_prob 0.01
CLS = ("head.gfl_cls.weight", "head.gfl_cls.bias")


def tiny_model(
    classes: list[str], seed: int, feat: int = 16, bin_width: float = 1.0
) -> torch.nn.Module:
    cfg = Config()
    m = cfg.model
    m.num_classes = len(classes)
    vars(m.backbone).update(depth=18, base_width=8, frozen_stages=-1, norm_eval=False)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=feat, stacked_convs=1, num_groups=4, bin_width=bin_width)
    torch.manual_seed(seed)
    return build_model(cfg.model)


def trained_state(classes: list[str], seed: int = 0, feat: int = 16) -> dict[str, torch.Tensor]:
    """A state dict in which every tensor differs from a fresh model's: random weights, BN
    statistics and counters, as a trained checkpoint's."""
    sd = tiny_model(classes, seed, feat).state_dict()
    g = torch.Generator().manual_seed(seed + 100)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            r = torch.randn(v.shape, generator=g)
            out[k] = r.abs() + 0.5 if k.endswith("running_var") else r
        else:
            out[k] = v + 7  # num_batches_tracked
    return out


def save(tmp_path, sd: dict, classes: list[str] | None, name: str = "ckpt.pth", **extra) -> str:
    state = {"model": sd, **extra}
    if classes is not None:
        state.update(classes=list(classes), cat_ids=list(range(1, len(classes) + 1)))
    path = tmp_path / name
    save_checkpoint(state, path)
    return str(path)


def assert_rest_equal(model: torch.nn.Module, sd: dict, skip=CLS) -> None:
    for k, v in model.state_dict().items():
        if k not in skip:
            assert torch.equal(v, sd[k]), k


def test_class_rows_are_copied_by_name_and_only_those(tmp_path):
    old = ["person", "car", "dog"]
    sd = trained_state(old)
    path = save(tmp_path, sd, old)
    new = ["Dog", "cat", "PERSON "]
    model = tiny_model(new, seed=1)
    fresh_w = model.head.gfl_cls.weight.detach().clone()

    report = init_from_checkpoint(model, path, new)

    w, b = model.head.gfl_cls.weight.detach(), model.head.gfl_cls.bias.detach()
    w_old, b_old = sd["head.gfl_cls.weight"], sd["head.gfl_cls.bias"]
    assert torch.equal(w[0], w_old[2]) and torch.equal(b[0], b_old[2])  # Dog <- dog
    assert torch.equal(w[2], w_old[0]) and torch.equal(b[2], b_old[0])  # PERSON <- person
    assert torch.equal(w[1], fresh_w[1])  # cat: untouched fresh init
    assert b[1].item() == torch.tensor(PRIOR, dtype=torch.float32).item()
    assert_rest_equal(model, sd)
    assert report["kind"] == "gfldet" and report["weights"] == "model"
    assert report["matched_classes"] == [("Dog", "dog", 0, 2), ("PERSON ", "person", 2, 0)]
    assert report["reinitialised"] == list(CLS)
    assert len(report["loaded"]) == report["total"] - 2 and report["skipped"] == []
    text = format_report(report)  # the invisible space is shown
    assert "'PERSON ' (2) <- person (0)" in text and "person -> 'PERSON '" in text


def test_same_classes_load_the_whole_class_conv(tmp_path):
    classes = ["person", "car", "dog"]
    sd = trained_state(classes)
    model = tiny_model(classes, seed=1)
    report = init_from_checkpoint(model, save(tmp_path, sd, classes), classes)
    assert_rest_equal(model, sd, skip=())
    assert report["reinitialised"] == [] and report["skipped"] == []
    assert "head.gfl_cls loaded (the same 3 classes)" in format_report(report)


@pytest.mark.parametrize("new", [["dog", "person"], ["person", "car", "dog"]])
def test_other_head_width_skips_the_class_conv_and_loads_the_rest(tmp_path, new):
    # Names match (the second: the same list), but each row filters 32 other features.
    old = ["person", "car", "dog"]
    sd = trained_state(old, feat=32)
    model = tiny_model(new, seed=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, save(tmp_path, sd, old), new)

    after = model.state_dict()
    for k in after:
        if k.startswith(("backbone.", "neck.")):
            assert torch.equal(after[k], sd[k]), k
    for k in CLS:
        assert torch.equal(after[k], fresh[k]), k
    assert report["matched_classes"] == []
    assert set(CLS) <= set(report["skipped"]) and set(CLS) <= set(report["reinitialised"])
    assert "head.cls_convs.0.conv.weight" in report["reinitialised"]
    text = format_report(report)
    assert "input width 32 -> 16: nothing copied" in text
    assert (
        f"head.gfl_cls not copied: the checkpoint's is [3, 32, 3, 3], the model's [{len(new)}, 16"
        in text
    )


def test_ema_weights_are_preferred(tmp_path):
    classes = ["a", "b"]
    raw, ema = trained_state(classes, seed=0), trained_state(classes, seed=1)
    model = tiny_model(classes, seed=2)
    report = init_from_checkpoint(model, save(tmp_path, raw, classes, ema=ema), classes)
    assert_rest_equal(model, ema, skip=())
    assert report["weights"] == "ema"
    assert "(gfldet checkpoint, ema weights)" in format_report(report)


def test_legacy_fpn_names_are_read_as_neck(tmp_path):
    classes = ["a", "b"]
    sd = trained_state(classes)
    legacy = {("fpn." + k[5:] if k.startswith("neck.") else k): v for k, v in sd.items()}
    assert any(k.startswith("fpn.") for k in legacy)
    model = tiny_model(classes, seed=1)
    report = init_from_checkpoint(model, save(tmp_path, legacy, classes), classes)
    assert_rest_equal(model, sd, skip=())
    assert report["skipped"] == []


def test_mmdetection_coco_checkpoint_maps_person(tmp_path):
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 80, fill=torch.randn)
    path = tmp_path / "gfl_mmdet.pth"
    torch.save({"meta": {"CLASSES": COCO_CLASSES}, "state_dict": mm}, path)
    new = ["cat", "Person", "hedgehog"]
    model = tiny_model(new, seed=1)
    fresh_w = model.head.gfl_cls.weight.detach().clone()

    report = init_from_checkpoint(model, path, new)

    assert report["kind"] == "mmdetection"
    assert report["matched_classes"] == [("cat", "cat", 0, 15), ("Person", "person", 1, 0)]
    w, b = model.head.gfl_cls.weight.detach(), model.head.gfl_cls.bias.detach()
    assert torch.equal(w[1], mm["bbox_head.gfl_cls.weight"][0])
    assert torch.equal(b[1], mm["bbox_head.gfl_cls.bias"][0])
    assert torch.equal(w[0], mm["bbox_head.gfl_cls.weight"][15])
    assert torch.equal(w[2], fresh_w[2]) and b[2].item() == pytest.approx(PRIOR)
    sd = model.state_dict()
    assert torch.equal(
        sd["backbone.layer1.0.bn1.running_var"], mm["backbone.layer1.0.bn1.running_var"]
    )
    assert torch.equal(sd["neck.fpn_convs.4.weight"], mm["neck.fpn_convs.4.conv.weight"])
    assert torch.equal(sd["head.cls_convs.0.gn.weight"], mm["bbox_head.cls_convs.0.gn.weight"])
    assert report["reinitialised"] == list(CLS)
    text = format_report(report)
    assert "80 -> 3 classes, 2 matched by name: cat -> cat, person -> Person" in text


@pytest.mark.parametrize("wrapped", [True, False])
def test_mmdetection_checkpoint_without_class_names_matches_none(tmp_path, wrapped):
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 3, fill=torch.randn)
    path = tmp_path / "gfl_mmdet_3.pth"
    torch.save({"state_dict": mm} if wrapped else mm, path)  # no meta: 3 classes, not COCO's
    new = ["person", "car", "dog"]
    model = tiny_model(new, seed=1)
    fresh = {k: model.state_dict()[k].clone() for k in CLS}
    report = init_from_checkpoint(model, path, new)
    assert report["kind"] == "mmdetection"
    assert report["checkpoint_classes"] is None and report["matched_classes"] == []
    for k in CLS:
        assert torch.equal(model.state_dict()[k], fresh[k])
    assert len(report["loaded"]) == report["total"] - 2
    text = format_report(report)
    assert "no CLASSES in the checkpoint's meta" in text
    assert "no class names in the checkpoint: nothing copied" in text


def test_mmdetection_checkpoint_with_its_own_classes(tmp_path):
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 3, fill=torch.randn)
    path = tmp_path / "gfl_mmdet_fruit.pth"
    torch.save({"meta": {"CLASSES": ("kiwi", "fig", "plum")}, "state_dict": mm}, path)
    model = tiny_model(["Plum", "apple"], seed=1)
    report = init_from_checkpoint(model, path, ["Plum", "apple"])
    assert report["matched_classes"] == [("Plum", "plum", 0, 2)]
    assert torch.equal(model.head.gfl_cls.weight.detach()[0], mm["bbox_head.gfl_cls.weight"][2])


def test_wrong_architecture_and_not_a_checkpoint_are_clear_errors(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    path = save(tmp_path, other.state_dict(), ["a", "b"], "mlp.pth")
    model = tiny_model(["a", "b"], seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="another architecture") as e:
        init_from_checkpoint(model, path, ["a", "b"])
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "backbone.conv1.weight [8, 3, 7, 7]" in msg and "0.weight [3, 4]" in msg
    assert_rest_equal(model, before, skip=())  # untouched

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.txt: not a checkpoint"):
        init_from_checkpoint(model, text, ["a", "b"])
    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(ValueError, match="not a gfldet or MMDetection GFL checkpoint"):
        init_from_checkpoint(model, junk, ["a", "b"])


def test_format_report_counts_and_matched_classes(tmp_path):
    old = ["person", "car", "dog", "bus"]
    sd = trained_state(old)
    path = save(tmp_path, sd, old)
    new = ["Person", "bike"]
    model = tiny_model(new, seed=1)
    report = init_from_checkpoint(model, path, new)
    text = format_report(report)
    n = report["total"]
    lines = text.splitlines()
    assert lines[0] == f"init_from {path} (gfldet checkpoint, model weights)"
    assert lines[1].startswith(f"  loaded          {n - 2} of {n} model tensors: backbone.")
    assert lines[2] == (
        f"  re-initialised    2 of {n} model tensors: head.gfl_cls.weight [2, 16, 3, 3] vs "
        "checkpoint [4, 16, 3, 3], head.gfl_cls.bias [2] vs checkpoint [4]"
    )
    assert lines[3] == f"  unused            0 of {n} checkpoint tensors"
    assert "4 -> 2, 1 matched by name" in text
    assert "Person (0) <- person (0)" in text
    assert lines[-1] == (
        f"loaded {n - 2} of {n} tensors; re-initialised head.gfl_cls "
        "(4 -> 2 classes, 1 matched by name: person -> Person)"
    )


def test_match_classes_normalises_names():
    assert match_classes(["Person", "car"], [" person", "CAR", "bus"]) == [
        (" person", "Person", 0, 0),
        ("CAR", "car", 1, 1),
    ]
    assert match_classes(["a", "A"], ["a"]) == [("a", "a", 0, 0)]  # the first of duplicates


def test_mmdetection_conversion_errors_name_the_file(tmp_path):
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 80, fill=torch.randn)
    mm["backbone.layer2.0.conv2.conv_offset.weight"] = torch.zeros(18, 8, 3, 3)  # DCN
    path = tmp_path / "gfl_dcn.pth"
    torch.save({"state_dict": mm}, path)
    with pytest.raises(
        ValueError, match="^" + re.escape(f"{path}: 1 keys have no gfldet counterpart")
    ):
        init_from_checkpoint(tiny_model(["a"], seed=1), path, ["a"])


def test_mmdetection_caffe_resnet_and_bad_bins_are_refused_as_convert_mmdet_does(tmp_path):
    # The checks of `gfldet convert-mmdet` hold for init_from too: weights that would load but
    # compute something else are refused, naming the file; the model stays untouched.
    mm = mmdet_gfl_state(18, 8, 16, 16, 1, 80, fill=torch.randn)
    caffe = tmp_path / "gfl_caffe.pth"
    torch.save(
        {"meta": {"config": "model = dict(backbone=dict(style='caffe'))"}, "state_dict": mm}, caffe
    )
    model = tiny_model(["a"], seed=1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="^" + re.escape(f"{caffe}: its ResNet is 'caffe'")):
        init_from_checkpoint(model, caffe, ["a"])
    bad = tmp_path / "gfl_bad_bins.pth"
    project = "bbox_head.integral.project"
    torch.save({"state_dict": {**mm, project: torch.tensor([0.0, 1.0, 3.0])}}, bad)
    with pytest.raises(ValueError, match="^" + re.escape(f"{bad}: {project} is not the bins")):
        init_from_checkpoint(model, bad, ["a"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["gfldet", "mmdetection"])
def test_other_bin_width_is_refused(tmp_path, kind):
    # Same shapes, other bins: every edge would decode to another distance.
    model = tiny_model(["a"], seed=1)
    if kind == "gfldet":
        cfg = Config()
        cfg.model.head.bin_width = 0.5
        path = save(tmp_path, trained_state(["a"]), ["a"], config=to_dict(cfg))
    else:
        mm = mmdet_gfl_state(18, 8, 16, 16, 1, 80, fill=torch.randn)
        n = model.head.box.reg_max
        path = tmp_path / "gfl_half_bins.pth"
        torch.save(
            {"state_dict": {**mm, "bbox_head.integral.project": torch.arange(n + 1) * 0.5}}, path
        )
    with pytest.raises(
        ValueError, match="bins of width 0.5, the model's 1: set model.head.bin_width: 0.5"
    ):
        init_from_checkpoint(model, path, ["a"])
    # The same file loads into a model with those bins.
    report = init_from_checkpoint(tiny_model(["a"], seed=1, bin_width=0.5), path, ["a"])
    assert len(report["loaded"]) > report["total"] / 2


def test_checkpoint_of_another_architecture_fitting_only_scalars_is_an_error_naming_both(tmp_path):
    # Other widths everywhere: only the one-number head.scales.* and BatchNorm counters fit.
    wide = Config().model
    wide.num_classes = 2
    vars(wide.backbone).update(depth=18, base_width=16, frozen_stages=-1, norm_eval=False)
    wide.neck.out_channels = 32
    vars(wide.head).update(feat_channels=32, stacked_convs=1, num_groups=4)
    sd = build_model(wide).state_dict()
    path = save(tmp_path, sd, ["a", "b"], "wide.pth")
    model = tiny_model(["a", "b"], seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="another architecture") as e:
        init_from_checkpoint(model, path, ["a", "b"])
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    # Both models are named by what tells them apart.
    assert "backbone.base_width 16" in msg and "backbone.base_width 8" in msg
    assert "neck.out_channels 32" in msg and "neck.out_channels 16" in msg
    assert_rest_equal(model, before, skip=())  # untouched


def test_a_backbone_and_neck_are_enough_a_head_alone_is_not(tmp_path):
    """The rule: at least half of the model's tensors of more than one number (the class conv
    aside) must load. A detector with another head loads (backbone and neck are most of it);
    a checkpoint whose backbone differs does not."""
    sd = trained_state(["a", "b"], feat=32)  # other head width: backbone + neck fit
    init_from_checkpoint(tiny_model(["a", "b"], seed=1), save(tmp_path, sd, ["a", "b"]), ["a", "b"])
    head_only = {k: v for k, v in trained_state(["a", "b"]).items() if k.startswith("head.")}
    path = save(tmp_path, head_only, ["a", "b"], "head.pth")
    with pytest.raises(ValueError, match=r"only \d+ of \d+ .*fewer than half"):
        init_from_checkpoint(tiny_model(["a", "b"], seed=1), path, ["a", "b"])


@pytest.mark.parametrize(
    "model", [5, {"k": "str"}, [1, 2], {"w": torch.zeros(1), 3: torch.zeros(1)}]
)
def test_checkpoint_whose_model_entry_is_not_a_state_dict_is_a_one_line_error(tmp_path, model):
    path = tmp_path / "odd.pth"
    torch.save({"model": model, "classes": ["a", "b"]}, path)
    with pytest.raises(ValueError, match=r"odd\.pth: .*state dict") as e:
        init_from_checkpoint(tiny_model(["a", "b"], seed=1), path, ["a", "b"])
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_a_checkpoint(shapes, tmp_path, capsys):
    data = [*shapes_overrides(shapes), "train.eval_interval=0"]
    first = tmp_path / "first"
    assert main(["train", "--config", DEMO, "--set", *TINY_RUN, *data, f"work_dir={first}"]) == 0
    second = tmp_path / "second"
    ckpt = first / "latest.pth"
    assert (
        main(
            [
                "train",
                "--config",
                DEMO,
                "--set",
                *TINY_RUN,
                *data,
                f"work_dir={second}",
                f"model.init_from={ckpt}",
            ]
        )
        == 0
    )
    log = (second / "train.log").read_text()
    assert f"init_from {ckpt}" in log and "head.gfl_cls loaded (the same 6 classes)" in log
    from gfldet.core.checkpoint import load_checkpoint

    state = load_checkpoint(second / "latest.pth")
    assert state["iter"] == 2 and state["epoch"] == 1  # a new run: counters from zero
    capsys.readouterr()
