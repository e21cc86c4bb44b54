"""gfldet.core.checkpoint: saving (atomic, with normal permissions), loading (round trip, bare
state dicts, names of older layouts, another architecture named key by key), and files that
are not what they claim: one-line errors wherever they are loaded, and code never run."""

from __future__ import annotations

import copy
import os
import pickle
import stat

import numpy as np
import pytest
import torch

from gfldet.cli import main
from gfldet.core.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    load_model_weights,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gfldet.core.options import to_dict
from gfldet.model.build import build_model
from tests.helpers import DEMO, tiny_backbone_config, tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
ODD = {
    "int": {"model": 5},
    "strings": {"model": {"k": "str"}},
    "list": {"model": [1, 2]},
    "int_keys": {"model": {0: torch.zeros(1)}},
    "ema": {"model": {"w": torch.zeros(1)}, "ema": 5},
    "classes": {"model": {"w": torch.zeros(1)}, "classes": 7},
}


@pytest.mark.parametrize("kind", ODD)
def test_load_checkpoint_refuses_entries_of_the_wrong_type(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    torch.save(ODD[kind], path)
    with pytest.raises(ValueError, match=rf"{kind}\.pth: not a gfldet checkpoint") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["int", "strings"])
@pytest.mark.parametrize("command", ["eval", "infer", "train"])
def test_commands_loading_an_odd_checkpoint_give_one_line(
    shapes, tiny_sets, tmp_path, capsys, kind, command
):
    path = tmp_path / f"{kind}.pth"
    torch.save(ODD[kind], path)
    sets = tiny_sets(tmp_path / "w")
    if command == "train":
        args = ["train", "--config", DEMO, "--set", *sets, f"model.init_from={path}"]
    elif command == "eval":
        args = ["eval", "--config", DEMO, "--checkpoint", str(path), "--set", *sets]
    else:
        args = [
            "infer",
            "--config",
            DEMO,
            "--checkpoint",
            str(path),
            "--out-dir",
            str(tmp_path / "out"),
            str(shapes["val_img_dir"]),
            "--set",
            *sets,
        ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{kind}.pth" in err, err


class Payload:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    def __init__(self):
        self.value = 1


def test_a_text_file_is_not_a_checkpoint_and_code_is_refused_in_a_sentence(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError) as info:
        load_checkpoint(text)
    msg = str(info.value)
    assert "not a checkpoint" in msg and "refused" not in msg and str(text) in msg
    code = tmp_path / "code.pth"
    torch.save({"model": {}, "f": print}, code)
    with pytest.raises(ValueError) as info:
        load_checkpoint(code)
    msg = str(info.value)
    assert "\x1b" not in msg and "\n" not in msg and "print" in msg and msg.endswith(".")


def test_prune_keeps_the_newest_epoch_files_and_rng_state_round_trips(tmp_path):
    for n in (1, 2, 3, 10):
        save_checkpoint({"model": {"w": torch.full((1,), float(n))}}, tmp_path / f"epoch_{n}.pth")
    link_checkpoint(tmp_path / "epoch_10.pth", tmp_path / "latest.pth")
    (tmp_path / "epoch_x.pth").write_text("not ours")
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["epoch_1.pth", "epoch_2.pth"]  # numeric order
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_10.pth",
        "epoch_3.pth",
        "epoch_x.pth",
        "latest.pth",
    ]
    (tmp_path / "epoch_10.pth").unlink()  # latest.pth is a file of its own
    assert load_checkpoint(tmp_path / "latest.pth")["model"]["w"].item() == 10
    assert prune_checkpoints(tmp_path, 0) == []

    import random

    state = rng_state()
    save_checkpoint({"model": {}, "rng": [state]}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"][0])  # through weights_only
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_checkpoints_from_before_the_neck_was_named_load(tmp_path):
    model = build_model(tiny_backbone_config().model)
    old = {
        ("fpn." + k[5:] if k.startswith("neck.") else k): v for k, v in model.state_dict().items()
    }
    fresh = build_model(tiny_backbone_config().model)
    load_model_weights(fresh, {"model": old}, tmp_path / "old.pth")
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
    )


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    state = {"model": model.state_dict(), "epoch": 3, "iter": 120, "cfg": to_dict(tiny_config())}
    path = tmp_path / "sub" / "ckpt.pth"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert (
        loaded["epoch"] == 3 and loaded["iter"] == 120 and loaded["cfg"] == to_dict(tiny_config())
    )
    other = tiny_model(seed=1)
    assert not torch.equal(other.head.gfl_reg.weight, model.head.gfl_reg.weight)
    load_model_weights(other, loaded, path)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]


def test_bare_state_dict_is_accepted(tmp_path):
    model = tiny_model()
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path)
    assert set(loaded) == {"model"}
    other = tiny_model(seed=5)
    load_model_weights(other, loaded, path)
    assert torch.equal(other.head.gfl_cls.weight, model.head.gfl_cls.weight)


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "text",
    [
        '{"model": {"w": 1}}\n',
        "#!/bin/sh\necho hi\n",
        "",
        pytest.param("train:\n  epochs: 3\n", id="yaml-config"),
        pytest.param("this is not a checkpoint\n", id="sentence"),
        pytest.param("hello world\n", id="hello"),
    ],
)
def test_load_checkpoint_text_file(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_truncated_and_wrong_content(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint({"model": tiny_model().state_dict()}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pth"):
        load_checkpoint(cut)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="tensor.pth"):
        load_checkpoint(tensor)
    nomodel = tmp_path / "nomodel.pth"
    torch.save({"epoch": 1}, nomodel)
    with pytest.raises(ValueError, match="nomodel.pth"):
        load_checkpoint(nomodel)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_checkpoint_refuses_code(tmp_path):
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": Payload(marker)}))
    zipped = tmp_path / "zipped.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload(marker)}, zipped)
    custom = tmp_path / "custom.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Custom()}, custom)
    for path in (raw, zipped, custom):
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
        assert not marker.exists()
    # the payload is live: a plain unpickler does run it
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_load_model_weights_of_another_architecture_names_the_keys(tmp_path):
    small = tiny_model(num_classes=3)
    cfg = tiny_config(num_classes=5)
    cfg.model.head.stacked_convs = 2
    other = build_model(cfg.model)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError) as info:
        load_model_weights(other, {"model": small.state_dict()}, tmp_path / "x.pth")
    msg = str(info.value)
    assert "x.pth" in msg
    assert "missing: head.cls_convs.1.conv.weight" in msg
    assert "unexpected" not in msg  # small's keys are all in other
    assert "shape: head.gfl_cls.weight (3, 16, 3, 3) vs (5, 16, 3, 3)" in msg
    for k, v in other.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match=r"unexpected: head\.cls_convs\.1\.conv\.weight"):
        load_model_weights(small, {"model": other.state_dict()}, "y.pth")


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    before = path.read_bytes()

    for exc in (OSError("disk full"), KeyboardInterrupt()):

        def broken_save(obj, f, *args, exc=exc, **kwargs):
            f.write(b"partial garbage")
            raise exc

        monkeypatch.setattr(torch, "save", broken_save)
        with pytest.raises(type(exc)):
            save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_saved_checkpoint_has_normal_permissions(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": {"w": torch.ones(1)}}, path)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.ones(1)}}, plain)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
