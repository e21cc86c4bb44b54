"""Where a run may write: never inside an image split, never losing the weights it starts from."""

from __future__ import annotations

import pytest
import yaml

from gfldet.cli import main
from gfldet.core.checkpoint import load_checkpoint
from gfldet.training.run_dir import PREVIOUS

pytestmark = pytest.mark.usefixtures("one_thread")
DEMO = "configs/shapes_demo.yaml"


@pytest.mark.parametrize("split", ["train", "val"])
def test_work_dir_inside_an_image_split_is_refused(shapes, tiny_sets, tmp_path, capsys, split):
    # Its curves.png and train_batch*.jpg would become images of the split.
    img_dir = shapes[f"{split}_img_dir"]
    before = sorted(p.name for p in img_dir.rglob("*"))
    work = img_dir / "runs" / "a"
    assert main(["train", "--config", DEMO, "--set", *tiny_sets(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(work) in err and f"data.{split}.img_dir" in err
    assert sorted(p.name for p in img_dir.rglob("*")) == before  # nothing written


@pytest.mark.slow
def test_overwrite_starting_from_the_latest_checkpoint_of_the_same_work_dir(
    tiny_sets, tmp_path, capsys
):
    work = tmp_path / "w"
    assert main(["train", "--config", DEMO, "--set", *tiny_sets(work, "train.max_iters=1")]) == 0
    first = load_checkpoint(work / "latest.pth")
    sets = tiny_sets(work, "train.max_iters=1", f"model.init_from={work / 'latest.pth'}")
    assert main(["train", "--config", DEMO, "--overwrite", "--set", *sets]) == 0
    (moved,) = (work / PREVIOUS).iterdir()
    # The old run is kept whole, and the new run says which file it started from.
    assert (moved / "latest.pth").is_file()
    saved = yaml.safe_load((work / "config.yaml").read_text())
    assert saved["model"]["init_from"] == str(moved / "latest.pth")
    assert f"init_from {moved / 'latest.pth'}" in (work / "train.log").read_text()
    second = load_checkpoint(work / "latest.pth")
    assert second["iter"] == 1 and second["config"]["model"]["init_from"] == str(
        moved / "latest.pth"
    )
    assert not all(first["model"][k].equal(v) for k, v in second["model"].items())
