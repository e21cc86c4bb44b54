"""The sections of `python -m benchmarks.bench_gpu`, one module each, and what they run.

Every section module has `run(sz, device, res, ...)`, which writes its results into the dict
`res` (bench_gpu stores it as the section's "results", with its status and duration), and
`report(res)`, the lines of the printed table that show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def small_set(img: int, batch: int, workers: int) -> tuple[str, ...]:
    """--set overrides of the demo config for a small shapes set of img x img images."""
    keys = (f"img_scale=[{img},{img}]", f"batch_size={batch}", f"num_workers={workers}")
    return tuple(f"data.{split}.{key}" for split in ("train", "val") for key in keys)


TORCHRUN_DATA = {"num_train": 32, "num_val": 8, "img_size": 128, "max_size": 80, "max_objects": 4}


@dataclass
class Sizes:
    """What each section runs: the GPU's defaults, or SMOKE's on the CPU."""

    infer_hw: tuple[int, int] = (800, 1333)
    lite_hw: tuple[int, int] = (320, 320)
    infer_repeats: int = 30
    infer_warmup: int = 5  # the first calls also pick cuDNN's algorithms
    train_hw: tuple[int, int] = (800, 1216)
    train_images: int = 2
    train_boxes: int = 5
    train_iters: int = 30  # per variant, warm-up included
    train_warmup: int = 5
    # torchrun: a tiny shapes set (write_shapes_dataset's arguments) and the run's overrides
    torchrun_data: dict = field(default_factory=lambda: dict(TORCHRUN_DATA))
    torchrun_set: tuple[str, ...] = small_set(128, 8, 1)
    demo_data: dict | None = None  # None: `make demo`'s set (--data, made when missing)
    demo_set: tuple[str, ...] = ()  # overrides of the demo config
    demo_seconds: float = 120.0  # wall-clock cap of the demo's training
    timeout_s: float = 300.0  # per torchrun subprocess
    cudnn_benchmark: bool = True  # infer and train (both contenders alike)


TINY = {"img_size": 64, "max_size": 40, "max_objects": 3}
SMOKE = Sizes(
    infer_hw=(64, 100),
    lite_hw=(64, 64),
    infer_repeats=2,
    infer_warmup=1,
    train_hw=(64, 96),
    train_iters=3,
    train_warmup=1,
    torchrun_data={"num_train": 8, "num_val": 4, **TINY},
    torchrun_set=small_set(64, 4, 0),
    demo_data={"num_train": 12, "num_val": 4, **TINY},
    demo_set=(*small_set(64, 4, 0), "train.log_interval=1"),
    # A budget of 0 s: the deadline ends the run after its first step, deterministically.
    demo_seconds=0.0,
    timeout_s=600.0,
    cudnn_benchmark=False,
)
