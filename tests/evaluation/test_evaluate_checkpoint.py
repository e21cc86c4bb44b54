"""`gfldet eval` as a library call: evaluation.run.evaluate_checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from gfldet.config import load_config
from gfldet.data.loader import build_dataset
from gfldet.data.synth import shapes_overrides
from gfldet.evaluation.run import evaluate_checkpoint
from gfldet.model.build import build_model
from tests.helpers import DEMO, TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "data.val.img_scale=[64,64]",
    "data.val.num_workers=0",
    *TINY_MODEL,
    "model.test.score_thr=0.001",
]


@pytest.fixture
def checkpoint(shapes, tmp_path):
    """(config, an untrained tiny model's checkpoint in tmp_path/run/)."""
    cfg = load_config(DEMO, [*shapes_overrides(shapes), *TINY])
    ds = build_dataset(cfg.data.val, False)
    model_options = copy.deepcopy(cfg.model)
    model_options.num_classes = ds.num_classes
    torch.manual_seed(0)
    model = build_model(model_options)
    path = tmp_path / "run" / "latest.pth"
    path.parent.mkdir()
    state = {"model": model.state_dict(), "classes": ds.class_names, "cat_ids": ds.cat_ids}
    torch.save(state, path)
    return cfg, path


def test_evaluate_checkpoint_writes_next_to_the_checkpoint(checkpoint, one_thread, capsys):
    cfg, path = checkpoint
    metrics = evaluate_checkpoint(cfg, path)
    assert set(metrics) >= {"AP", "AP50", "per_class", "quality", "confusion"}
    run = path.parent
    for name in ("metrics.json", "detections.json", "confusion_matrix.csv", "eval_manifest.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["confusion"]["classes"][-1] == (
        "background"
    )
    assert "confusion_matrix.csv" in capsys.readouterr().out


def test_evaluate_checkpoint_refuses_another_datasets_checkpoint(checkpoint, tmp_path, one_thread):
    cfg, path = checkpoint
    state = torch.load(path, weights_only=True)
    state["cat_ids"] = [c + 100 for c in state["cat_ids"]]
    other = tmp_path / "other.pth"
    torch.save(state, other)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="trained on category ids"):
        evaluate_checkpoint(cfg, other, out)
    assert not out.exists()


def test_evaluate_checkpoint_refuses_an_out_dir_it_cannot_create(checkpoint, tmp_path, one_thread):
    cfg, path = checkpoint
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="--out-dir: cannot create output folder"):
        evaluate_checkpoint(cfg, path, blocker / "sub")
