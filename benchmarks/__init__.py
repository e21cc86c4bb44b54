"""gfldet's benchmarks: its speed, its accuracy per CPU-minute and its CUDA paths, measured
beside torchvision's detectors, and the shapes-scale experiments behind the docs' figures.

Run them from the repository root (the make targets do):

    python -m benchmarks.bench --out bench.json                    # make bench
    python -m benchmarks.bench_converge --out bench_converge.json  # make bench-converge
    python -m benchmarks.bench_gpu --out bench_gpu.json            # make bench-gpu
    python -m benchmarks.ablate                                    # docs/ablations.md
    python -m benchmarks.finetune_demo                             # docs/custom_datasets.md

Each writes a JSON file that records the command, the machine and every raw time, so that its
numbers can be checked and compared later (docs/benchmarks.md says what each one means).

timing.py holds what every benchmark shares (medians over repeats, contenders measured side by
side, the machine's description), models.py the contenders and inputs of the comparisons,
budget.py training for a wall-clock budget; cpu/ and gpu/ hold one module per section of
bench and bench_gpu.
"""
