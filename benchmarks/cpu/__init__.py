"""The sections of `python -m benchmarks.bench`, one module each, and what they run.

Every section module has `run(settings, out)`, which measures and writes its numbers into the
results dict `out` (its raw times into out["times"][section], their medians into
out["medians"][section], its headline numbers at the top level), and `report(out)`, the lines
of the printed table that show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sizes:
    """The sizes of every section: the defaults, or QUICK's for a smoke test."""

    infer_hw: tuple[int, int] = (800, 1216)
    train_hw: tuple[int, int] = (512, 512)
    train_images: int = 2
    train_boxes: int = 5
    atss_hw: tuple[int, int] = (800, 1216)
    atss_images: int = 16
    atss_gts: int = 30
    loader_batches: int = 30  # per timed pass over the loader
    demo_steps: int = 10  # demo training steps timed for the data-wait share
    coco_dets_per_image: int = 100  # test.max_per_img
    demo_set: tuple[str, ...] = ()  # overrides of the demo config
    lite_hw: tuple[int, int] = (320, 320)
    data_images: int = 20_000  # read in each format
    data_memory_images: int = 100_000


QUICK = Sizes(
    infer_hw=(64, 96),
    train_hw=(64, 64),
    atss_hw=(128, 192),
    atss_images=4,
    atss_gts=5,
    loader_batches=2,
    demo_steps=2,
    demo_set=("data.train.img_scale=[64,64]",),
    lite_hw=(64, 64),
    data_images=50,
    data_memory_images=200,
)


@dataclass
class Settings:
    """What one run of the benchmark measures with: sizes, timed runs, untimed runs before
    them, and the shapes dataset of the loader and coco sections (made when missing)."""

    sizes: Sizes = field(default_factory=Sizes)
    repeats: int = 3
    warmup: int = 1
    data: Path = Path("data/shapes")
