"""Loading a config needs no torch: `gfldet config ...`, the docs' generator and any tool that
reads configs start fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "torchvision", "numpy", "cv2", "matplotlib", "pycocotools", "pydantic")


def test_load_config_and_the_schema_import_no_heavy_package():
    code = (
        "import sys, gfldet.config, gfldet.config_schema\n"
        "cfg = gfldet.config.load_config('shapes_demo')\n"
        "gfldet.config_schema.json_schema(); gfldet.config_schema.reference_table()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
