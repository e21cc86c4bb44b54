"""configs/ablations/: one config per row of the GFL and GFLv2 papers' tables, each the R-50
recipe with its row's switches only."""

from __future__ import annotations

import pytest
import torch

from gfldet.config import load_config
from gfldet.model.build import build_model
from tests.helpers import (
    ABLATION_ROWS,
    ABLATIONS,
    GFL_PARAMS,
    GFL_SWITCHES,
    REPO,
    SWITCHES,
    V2,
    switches_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


RECIPE = REPO / "configs" / "gfl_r50_fpn_1x_coco.yaml"


V2_ABLATIONS = sorted((REPO / "configs" / "ablations").glob("v2_*.yaml"))


def test_one_config_per_row_of_the_papers_tables():
    assert sorted(p.stem for p in ABLATIONS) == sorted(ABLATION_ROWS)


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_config_loads_with_its_rows_switches_only(path):
    ap, switches = ABLATION_ROWS[path.stem]
    cfg = load_config(path, ["model.num_classes=80"])
    assert switches_of(cfg) == {**GFL_SWITCHES, **switches}
    # Everything but the switches and the work_dir is the R-50 recipe.
    recipe = load_config(RECIPE, ["model.num_classes=80"])
    for section, key in SWITCHES:
        setattr(getattr(recipe.model, section), key, getattr(getattr(cfg.model, section), key))
    assert cfg.work_dir == f"work_dirs/ablations/{path.stem}"
    recipe.work_dir = cfg.work_dir
    assert cfg == recipe
    text = path.read_text()
    assert "_base_: ../gfl_r50_fpn_1x_coco.yaml" in text
    assert f"paper AP {ap}" in text


def test_the_gflv2_ablation_configs_are_all_there():
    # The parametrized test below runs over whatever the glob finds: an empty or short glob
    # would skip or shrink it silently.
    topk = {f"v2_topk_{k}{s}" for k in (1, 2, 3, 4, 8) for s in ("", "_no_mean")}
    channels = {f"v2_channels_{c}" for c in (16, 32, 64, 128)}
    assert [p.stem for p in V2_ABLATIONS] == sorted(topk | channels)


@pytest.mark.parametrize("path", V2_ABLATIONS, ids=[p.stem for p in V2_ABLATIONS])
def test_every_gflv2_ablation_config_builds_with_its_predictor_size(path):
    cfg = load_config(path, ["model.num_classes=80", "model.backbone.pretrained=null"])
    d = cfg.model.head.dgqp
    name = path.stem
    if name.startswith("v2_topk"):
        assert (
            d.topk == int(name.split("_")[2])
            and d.add_mean == (not name.endswith("no_mean"))
            and d.channels == 64
        )
    else:
        assert (d.topk, d.add_mean, d.channels) == (4, True, int(name.split("_")[-1]))
    with torch.device("meta"):
        model = build_model(cfg.model)
    inputs, c = 4 * (d.topk + d.add_mean), d.channels
    expect = GFL_PARAMS + inputs * c + c + c + 1
    assert sum(p.numel() for p in model.parameters()) == expect
    # Everything else is the GFLv2 recipe.
    base = load_config(V2, ["model.num_classes=80", "model.backbone.pretrained=null"])
    base.model.head.dgqp, base.work_dir = d, cfg.work_dir
    assert cfg == base
