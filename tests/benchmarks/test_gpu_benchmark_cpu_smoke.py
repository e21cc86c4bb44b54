"""benchmarks.bench_gpu: its --cpu-smoke run (every section at tiny sizes on the CPU), its
refusal without CUDA, and the bookkeeping (sections that fail, skipped configs, target
verdicts)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import bench_gpu
from benchmarks.gpu import SMOKE
from benchmarks.gpu import infer as gpu_infer
from benchmarks.models import LOADED_PAIRS

pytestmark = pytest.mark.usefixtures("one_thread")

# Numbers that only CUDA measures: null in the CPU smoke run.
CUDA_ONLY = {"peak_memory_bytes", "peak_memory_mib", "grad_scale"}
R50_AND_FCOS = {"gfl_r50", "gfl_r50_loaded", "fcos_r50", "fcos_r50_channels_last"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, run_python):
    """One `--cpu-smoke` run as `python -m` from the repository root: (its process, the JSON
    it wrote)."""
    out = tmp_path_factory.mktemp("bench_gpu") / "x.json"
    proc = run_python("-m", "benchmarks.bench_gpu", "--cpu-smoke", "--out", out, one_thread=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc, json.loads(out.read_text())


def numbers(obj, path=()):
    """(path, value) of every number and null in a JSON tree (bools excluded)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, (*path, i))
    elif obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool)):
        yield path, obj


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_without_error(smoke):
    proc, res = smoke
    assert res["mode"] == "cpu-smoke" and res["ok"] is True
    assert list(res["sections"]) == list(bench_gpu.SECTIONS)
    for name, section in res["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
        assert "error" not in section and section["seconds"] > 0
    assert res["failed_sections"] == [] and res["missed_targets"] == []
    bad = [(p, v) for p, v in numbers(res["sections"]) if v is None and p[-1] not in CUDA_ONLY]
    bad += [(p, v) for p, v in numbers(res["sections"]) if v is not None and not math.isfinite(v)]
    assert not bad, bad
    env = res["environment"]
    assert env["torch"] == torch.__version__ and env["python"] and env["platform"]
    assert res["command"].startswith("python -m benchmarks.bench_gpu --cpu-smoke") and res["date"]
    assert env["cpu"] and isinstance(env["cpu_flags"], list)
    assert "targets:" in proc.stdout and res["table"] in proc.stdout


@pytest.mark.slow
def test_cpu_smoke_infer_and_train(smoke):
    _, res = smoke
    infer = res["sections"]["infer"]["results"]
    assert infer["skipped"] == {}  # every config is in the repository
    assert set(infer["models"]) == {"gflv2_r50", *R50_AND_FCOS}
    # The loaded copy's scores put LOADED_PAIRS (box, class) pairs over the threshold.
    assert abs(infer["loaded_candidates"] - LOADED_PAIRS) <= 30
    assert set(infer["lite"]["models"]) == {"gfl_lite", "ssdlite"}
    for model in [*infer["models"].values(), *infer["lite"]["models"].values()]:
        for precision in ("fp32", "amp"):
            m = model[precision]
            assert m["finite"] is True and m["latency_s"] > 0 and len(m["times"]) == 2
            assert m["images_per_s"] == pytest.approx(1 / m["latency_s"])
    assert infer["ratios"]["gfl_r50/fcos_r50"]["amp"] > 0
    assert infer["padded_hw"] == [64, 128]  # 64 x 100, padded to a multiple of 32

    train = res["sections"]["train"]["results"]
    models = ("gfl_r50", "fcos_r50", "fcos_r50_same_recipe")
    assert set(train["variants"]) == {f"{m}_{p}" for m in models for p in ("amp", "fp32")}
    for v in train["variants"].values():
        assert v["losses_finite"] is True and v["s_per_iter"] > 0 and len(v["times"]) == 2
        assert v["peak_memory_bytes"] is None and v["grad_scale"] is None  # CPU: no scaler
    assert train["ratios"]["s_per_iter"]["amp"] > 0 and train["all_finite"] is True


@pytest.mark.slow
def test_cpu_smoke_torchrun_trains_evaluates_and_resumes(smoke):
    _, res = smoke
    run = res["sections"]["torchrun"]["results"]
    assert run["backend"] == "gloo"
    assert {k: r["returncode"] for k, r in run["runs"].items()} == {
        "train": 0,
        "eval": 0,
        "resume": 0,
    }
    assert all("torch.distributed.run" in r["command"] for r in run["runs"].values())
    assert run["process_group_joined"] is True  # torchrun with 1 process: DDP's code path
    assert run["resume_ok"] is True and run["resumed_logged"] is True
    assert run["epochs_logged"] == [1, 2]
    assert run["latest"] == {"epoch": 2, "iter": 4, "world_size": 1}  # 8 images, batch 4
    assert run["checkpoints"] == ["epoch_1.pth", "epoch_2.pth", "latest.pth"]
    assert run["ema_in_checkpoint"] is True and 0 <= run["eval_AP"] <= 1


@pytest.mark.slow
def test_cpu_smoke_demo_and_targets(smoke):
    _, res = smoke
    demo = res["sections"]["demo"]["results"]
    assert 0 <= demo["AP"] <= 1 and demo["all_finite"] is True
    # The 0 s budget of the smoke run stops the training after exactly one step.
    assert demo["iterations"] == 1 and demo["stopped_by_budget"] is True
    assert set(res["targets"]) == set(bench_gpu.TARGETS)
    assert all(t["status"] == bench_gpu.NOT_APPLICABLE for t in res["targets"].values())
    assert res["targets"]["no NaN/inf anywhere"]["value"] is True
    assert res["targets"]["resume exits 0, trains epoch 2"]["value"] is True


def test_without_cuda_and_without_cpu_smoke_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # even on a machine with one
    out = tmp_path / "x.json"
    assert bench_gpu.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is available" in err and "--cpu-smoke" in err
    assert not out.exists()


def test_a_failing_section_is_recorded_and_the_others_run(tmp_path):
    path = tmp_path / "x.json"
    out = {"sections": {}}

    def broken(res: dict) -> None:
        res["partial"] = 1
        raise ValueError("boom")

    bench_gpu.run_section(out, "infer", broken, path)
    bench_gpu.run_section(out, "train", lambda res: res.update(all_finite=True), path)
    written = json.loads(path.read_text())
    failed, ok = written["sections"]["infer"], written["sections"]["train"]
    assert failed["status"] == "failed" and failed["error"] == "ValueError: boom"
    assert "raise ValueError" in failed["traceback"] and failed["results"] == {"partial": 1}
    assert ok["status"] == "ok" and ok["results"] == {"all_finite": True}


@pytest.mark.slow
def test_absent_configs_are_skipped_with_a_reason(monkeypatch, tmp_path, one_thread):
    monkeypatch.setattr(gpu_infer, "RECIPE_V2", tmp_path / "gflv2_missing.yaml")
    monkeypatch.setattr(gpu_infer, "LITE", tmp_path / "lite_missing.yaml")
    res: dict = {}
    gpu_infer.run(SMOKE, torch.device("cpu"), res)
    assert set(res["skipped"]) == {"gflv2_r50", "lite"}
    assert "gflv2_missing.yaml not found" in res["skipped"]["gflv2_r50"]
    assert set(res["models"]) == R50_AND_FCOS
    assert "lite" not in res and set(res["ratios"]) == {
        "gfl_r50/fcos_r50",
        "gfl_r50/fcos_r50_channels_last",
    }


def gpu_like_results(**overrides) -> dict:
    """A minimal out dict as a GPU run would write it (values chosen to meet every target)."""
    res = {
        "infer": {
            "models": {"gfl_r50": {"amp": {"images_per_s": 80.0}}},
            "ratios": {"gfl_r50/fcos_r50": {"fp32": 0.8, "amp": 0.85}},
            "all_finite": True,
        },
        "train": {
            "ratios": {"s_per_iter": {"amp": 0.7}, "peak_memory": {"amp": 1.05}},
            "all_finite": True,
        },
        "torchrun": {"resume_ok": True, "all_finite": True},
        "demo": {"AP": 0.45, "all_finite": True},
    }
    for section, values in overrides.items():
        res[section].update(values)
    return {"sections": {k: {"status": "ok", "results": v} for k, v in res.items()}}


def test_targets_are_met_missed_or_not_measured_on_gpu_results():
    met = bench_gpu.check_targets(gpu_like_results(), smoke=False)
    assert {t["status"] for t in met.values()} == {"met"}, met
    missed = bench_gpu.check_targets(
        gpu_like_results(demo={"AP": 0.2, "all_finite": False}, torchrun={"resume_ok": False}),
        smoke=False,
    )
    expected = ["no NaN/inf anywhere", "resume exits 0, trains epoch 2", "demo AP"]
    assert [k for k, t in missed.items() if t["status"] == "MISSED"] == expected
    partial = gpu_like_results()
    del partial["sections"]["train"]
    verdicts = bench_gpu.check_targets(partial, smoke=False)
    assert verdicts["train step AMP / FCOS AMP"]["status"] == "not measured"
    assert verdicts["inference fp16 / FCOS"]["status"] == "met"
    smoke = bench_gpu.check_targets(gpu_like_results(), smoke=True)
    assert {t["status"] for t in smoke.values()} == {bench_gpu.NOT_APPLICABLE}
