# gfldet — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Users with their own CUDA build can override, e.g. `make setup TORCH="torch torchvision"`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.gfldet-installed
DEV_STAMP := $(VENV)/.gfldet-dev-installed

DEMO_CFG := configs/shapes_demo.yaml
DEMO_DIR := work_dirs/shapes_demo

.PHONY: setup demo test test-fast lint bench bench-converge bench-gpu clean

setup: $(DEV_STAMP)

# What running gfldet needs (the demo's budget counts this step) ...
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

# ... and what testing it needs on top (pytest, ruff, onnx + onnxruntime).
$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/gfldet data synth --out data/shapes
	$(BIN)/gfldet train --config $(DEMO_CFG) --work-dir $(DEMO_DIR)
	$(BIN)/gfldet infer --config $(DEMO_CFG) --checkpoint $(DEMO_DIR)/latest.pth \
		'data/shapes/val/images/00000*.jpg' --out-dir $(DEMO_DIR)/infer
	@$(BIN)/python -c "import json; m = json.load(open('$(DEMO_DIR)/metrics.json')); \
		print(f\"demo: shapes val AP = {m['AP']:.3f} (AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f})\")"

# The lint CI runs is `make lint`'s (ruff is pinned in the dev extra, so it cannot drift).
test: lint
	$(BIN)/python -m pytest tests

# Everything but the tests marked slow (trainings of more than a step, torchrun, benchmarks):
# the quick check while working; `make test` (all of them, one process) is what CI runs. In two
# processes where pytest-xdist (a dev dependency) is installed.
XDIST = $(shell $(BIN)/python -c "import xdist" 2>/dev/null && echo "-n 2")
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest tests -m "not slow" $(XDIST)

# The benchmarks are the package benchmarks/ at the repository root, run as modules from here.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench --out bench.json

# gfldet beside torchvision's FCOS and SSDlite at equal CPU time; then `gfldet train --data` with
# the your-data recipe against flip-only on the real-content digits set (needs the bench extra:
# scikit-learn and scikit-image ship the digits and the photographs). Larger budgets and more
# seeds: `python -m benchmarks.your_data --help`.
bench-converge: $(STAMP)
	$(BIN)/python -m benchmarks.bench_converge --out bench_converge.json
	$(BIN)/python -m benchmarks.bench_converge --peer ssdlite --out bench_converge_lite.json
	$(BIN)/python -m pip install -q -e ".[bench]"
	test -f data/digits/data.yaml || $(BIN)/python -m benchmarks.digits --out data/digits
	$(BIN)/python -m benchmarks.your_data --data data/digits/data.yaml --minutes 4 --seeds 0 \
		--out bench_your_data.json

# The CUDA paths (fp16, NCCL, pinned memory, EMA, SyncBN) checked and timed, sized for a few
# minutes on one GPU; exits 2 without one (`python -m benchmarks.bench_gpu --cpu-smoke` runs
# every section on the CPU).
bench-gpu: $(STAMP)
	$(BIN)/python -m benchmarks.bench_gpu --out bench_gpu.json

lint: $(DEV_STAMP)
	$(BIN)/ruff check gfldet tests benchmarks tools
	$(BIN)/ruff format --check gfldet tests benchmarks tools

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
