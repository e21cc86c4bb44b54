"""Loading a config needs no torch: `gfldet config ...`, the docs' generator and any tool that
reads configs start fast."""

from __future__ import annotations

HEAVY = ("torch", "torchvision", "numpy", "cv2", "matplotlib", "pycocotools", "pydantic")


def test_load_config_checks_registry_names_and_imports_no_heavy_package(run_python):
    code = (
        "import sys, gfldet.config, gfldet.config_schema\n"
        "assert 'dgqp' in gfldet.config.CHOICES['model.head.quality']\n"
        "cfg = gfldet.config.load_config('shapes_demo', ['model.head.quality=dgqp'])\n"
        "assert cfg.model.head.quality == 'dgqp'\n"
        "gfldet.config_schema.json_schema(); gfldet.config_schema.reference_table()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = run_python("-c", code, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
