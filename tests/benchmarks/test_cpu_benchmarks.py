"""benchmarks.bench and benchmarks.bench_converge: --quick smoke runs on a tiny shapes set, and
the shared helpers (machine description)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import bench, bench_converge
from benchmarks.models import LOADED_PAIRS
from benchmarks.timing import machine, measure, median
from gfldet.data.synth import write_shapes_dataset
from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

REQUIRED = (
    "infer_ratio_fcos",
    "infer_ratio_retinanet",
    "train_ratio_fcos",
    "atss_speedup",
    "atss_share",
    "postprocess_share",
    "postprocess_share_random",
    "loader_images_per_s_0_workers",
    "loader_images_per_s_2_workers",
    "loader_wait_share",
    "demo_train_images_per_s",
    "coco_eval_s",
    "lite_ratio_ssdlite",
    "lite_ratio_frcnn",
    "infer_ratio_gflv2_gfl",
    "data_read_s",
)


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    """The benchmarks' --data folder: a shapes set of 8 train and 4 val images of 64x64."""
    root = tmp_path_factory.mktemp("bench") / "shapes"
    write_shapes_dataset(root, num_train=8, num_val=4, img_size=64, max_size=40, max_objects=4)
    return root


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def positive_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def test_machine_names_the_cpu_its_instruction_sets_and_the_versions():
    m = machine()
    assert m["cpu"] and isinstance(m["cpu_flags"], list) and m["torch_cpu_capability"]
    assert m["torch"] == torch.__version__ and m["threads"] == torch.get_num_threads()
    if Path("/proc/cpuinfo").is_file() and "flags" in Path("/proc/cpuinfo").read_text():
        assert any(f.startswith(("sse", "avx")) for f in m["cpu_flags"])  # x86 Linux


def test_measure_runs_the_contenders_in_turn():
    calls: list[str] = []
    times = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 1)
    assert calls == ["a", "b"] * 3 and [len(v) for v in times.values()] == [2, 2]
    assert median([3.0, 1.0, 2.0]) == 2.0


@pytest.mark.slow
def test_bench_quick_writes_every_measurement(bench_data, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--quick", "--threads", "1", "--data", str(bench_data), "--out", str(out)]
    assert bench.main(args) == 0
    res = json.loads(out.read_text())
    bad = {k: res.get(k) for k in REQUIRED if not positive_finite(res.get(k))}
    assert not bad, bad
    assert res["settings"]["quick"] and res["settings"]["repeats"] == 1
    assert res["machine"]["threads"] == 1 and res["machine"]["torch"] == torch.__version__
    assert res["machine"]["cpu"]
    # Raw times of every contender, each a list of positive seconds.
    for section in ("infer", "train", "atss", "loader", "coco", "data", "lite"):
        times = res["times"][section]
        assert times and all(v and all(positive_finite(t) for t in v) for v in times.values())
    for key in ("gfldet", "gfldet_loaded", "fcos", "retinanet", "postprocess_loaded"):
        assert key in res["times"]["infer"]
    # The "loaded" case really puts about LOADED_PAIRS pairs over the threshold.
    assert abs(res["postprocess_candidates"] - LOADED_PAIRS) <= 30
    assert abs(res["lite_candidates"] - LOADED_PAIRS) <= 30
    assert res["lite_params"]["gfldet_lite"] <= 4_000_000
    assert set(res["medians"]["data"]) == {"coco", "voc", "yolo"} and res["data_memory_images"] > 0
    assert 0 < res["postprocess_detections"] <= 100
    assert 0 < res["postprocess_share"] < 1 and 0 < res["atss_share"] < 1
    assert res["coco_eval_detections"] == res["coco_eval_images"] * 100
    assert set(res["targets"]) == set(bench.TARGETS)
    assert all(isinstance(t["met"], bool) for t in res["targets"].values())
    assert "inference" in res["table"] and "targets:" in res["table"]
    assert res["command"].startswith("python -m benchmarks.bench --quick")


@pytest.mark.slow
def test_bench_only_runs_the_sections_asked(bench_data, tmp_path):
    out = tmp_path / "atss.json"
    assert bench.main(["--quick", "--threads", "1", "--only", "atss", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["times"]) == {"atss"} and positive_finite(res["atss_speedup"])
    assert res.get("atss_share") is None and res["targets"]["ATSS share of step"]["met"] is None


def converge_args(data: Path, tmp_path: Path, out: Path) -> list[str]:
    """bench_converge's smoke settings: tiny images, 1.2 s of training per model."""
    args = ["--quick", "--minutes", "0.02", "--threads", "1", "--data", str(data)]
    return [*args, "--work-dir", str(tmp_path / "work"), "--out", str(out)]


@pytest.mark.slow
def test_bench_converge_trains_both_detectors_for_the_budget(bench_data, tmp_path):
    out = tmp_path / "converge.json"
    assert bench_converge.main(converge_args(bench_data, tmp_path, out)) == 0
    res = json.loads(out.read_text())
    for name in ("gfldet", "fcos"):
        r = res["results"][name]
        assert r["iterations"] >= 1 and r["train_s"] >= 0.02 * 60
        assert 0 <= r["AP"] <= 1
    assert res["ap_gfldet_minus_peer"] == pytest.approx(
        res["results"]["gfldet"]["AP"] - res["results"]["fcos"]["AP"]
    )


@pytest.mark.slow
def test_bench_converge_lite_against_ssdlite(bench_data, tmp_path):
    out = tmp_path / "lite.json"
    assert (
        bench_converge.main(["--peer", "ssdlite", *converge_args(bench_data, tmp_path, out)]) == 0
    )
    res = json.loads(out.read_text())
    assert res["peer"] == "ssdlite" and res["config"].endswith("gfl_lite_shapes.yaml")
    for name in ("gfldet", "ssdlite"):
        r = res["results"][name]
        assert r["iterations"] >= 1 and 0 <= r["AP"] <= 1


def test_fcos_on_gfldet_backbone_shares_its_modules():
    from gfldet.config import load_config

    cfg = load_config(REPO / "configs" / "shapes_demo.yaml", ["model.num_classes=6"])
    fcos = bench_converge.build_fcos_on_gfldet(cfg)
    torch.manual_seed(cfg.seed)
    from gfldet.model.build import build_model

    gfl = build_model(cfg.model)
    # The same ResNet + FPN, initialised alike.
    ours = {f"body.{k}": v for k, v in gfl.backbone.state_dict().items()}
    ours |= {f"neck.{k}": v for k, v in gfl.neck.state_dict().items()}
    theirs = fcos.backbone.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Head of the demo's depth, width and GroupNorm groups; one anchor of side = stride.
    h = cfg.model.head
    tower = fcos.head.classification_head.conv
    gns = [m for m in tower if isinstance(m, torch.nn.GroupNorm)]
    assert len(gns) == h.stacked_convs and all(g.num_groups == h.num_groups for g in gns)
    assert fcos.anchor_generator.sizes == tuple((s,) for s in gfl.strides)
    feats = fcos.backbone(torch.zeros(1, 3, 64, 64))
    assert list(feats) == ["p3", "p4", "p5", "p6", "p7"]
    assert all(f.shape[1] == fcos.backbone.out_channels for f in feats.values())
