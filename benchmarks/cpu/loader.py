"""loader: training-loader images/s on the shapes dataset with 0 and 2 workers, and how long
the demo model's training waits for data with 2 workers."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch

from gfldet.data.loader import build_dataloader, build_dataset
from gfldet.model.build import build_model
from gfldet.model.detector import GFL
from gfldet.training.optim import build_optimizer

from ..models import shapes_config, train_step
from ..timing import measure, median
from . import Settings


def loader_pass(loader: Any, batches: int, epochs: Any) -> None:
    """The first `batches` batches of the next epoch (`epochs` yields the epoch numbers)."""
    loader.batch_sampler.set_epoch(next(epochs))
    it = iter(loader)
    for _ in range(batches):
        next(it)


def demo_training(model: GFL, opt: Any, loader: Any, steps: int) -> tuple[list, list]:
    """`steps` training steps on the loader's batches (after one untimed step: the first batch
    waits for the workers to start). Returns each step's seconds waiting for its batch and in
    all."""
    wait, total = [], []
    epochs = iter(range(10**9))
    it = iter(())
    for i in range(steps + 1):
        start = time.perf_counter()
        batch = next(it, None)
        if batch is None:  # the end of an epoch: the next one
            loader.batch_sampler.set_epoch(next(epochs))
            it = iter(loader)
            batch = next(it)
        got = time.perf_counter()
        train_step(model, opt, *batch)
        if i > 0:
            wait.append(got - start)
            total.append(time.perf_counter() - start)
    return wait, total


def run(s: Settings, out: dict[str, Any]) -> None:
    cfg = shapes_config(s.data, s.sizes.demo_set)
    d = cfg.data
    ds = build_dataset(d.train, train=True)
    bs = d.train.batch_size
    cfg.model.num_classes = ds.num_classes
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    opt = build_optimizer(model, cfg.train, 0.01)
    times: dict[str, list[float]] = {}
    batches = 0
    for workers in (0, 2):
        loader = build_dataloader(ds, bs, workers, True, cfg.seed, 1, 0, d.size_divisor)
        batches = min(s.sizes.loader_batches, len(loader))
        one_pass = partial(loader_pass, loader, batches, iter(range(10**9)))
        times[f"workers_{workers}"] = measure({"pass": one_pass}, s.repeats, s.warmup)["pass"]
        if workers == 2:
            # The demo model's training on this loader: how long each step waits for data.
            times["demo_wait"], times["demo_step"] = demo_training(
                model, opt, loader, s.sizes.demo_steps
            )
        del loader, one_pass  # shuts its persistent workers down
    out["times"]["loader"] = times
    out["medians"]["loader"] = {k: median(v) for k, v in times.items()}
    out["loader_images_per_s_0_workers"] = batches * bs / median(times["workers_0"])
    out["loader_images_per_s_2_workers"] = batches * bs / median(times["workers_2"])
    total = times["demo_step"]
    out["demo_train_images_per_s"] = bs * len(total) / sum(total)
    out["loader_wait_share"] = sum(times["demo_wait"]) / sum(total)


def report(out: dict[str, Any]) -> list[str]:
    return [
        f"\ntraining loader, shapes demo config: {out['loader_images_per_s_0_workers']:.0f} "
        f"images/s with 0 workers, {out['loader_images_per_s_2_workers']:.0f} with 2; demo "
        f"training {out['demo_train_images_per_s']:.1f} images/s, waiting for data "
        f"{100 * out['loader_wait_share']:.1f} % of the time (2 workers)",
    ]
