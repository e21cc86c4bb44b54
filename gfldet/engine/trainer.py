"""Training loop: SGD with linear warm-up and step decay, checkpoints, periodic COCO evaluation.

Works in one process (CPU or one GPU) and under torchrun (one process per GPU, DDP).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .. import dist as gdist
from ..config import dump_config
from ..data.loader import build_dataloader, build_dataset
from ..model.detector import GFL, build_model
from .checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from .evaluator import coco_evaluate, format_metrics, predict_dataset

log = logging.getLogger("gfldet")


def setup_logging(work_dir: Path | None = None) -> None:
    """Console logging on the main rank (and a train.log file in work_dir)."""
    log.handlers.clear()
    log.setLevel(logging.INFO if gdist.is_main() else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if work_dir is not None and gdist.is_main():
        handlers.append(logging.FileHandler(work_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> None:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not gdist.is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_num_classes(cfg: dict, class_names: list[str], source: str) -> None:
    """model.num_classes from the dataset when unset; a mismatch is an error."""
    n = cfg["model"]["num_classes"]
    if n is None:
        cfg["model"]["num_classes"] = len(class_names)
    elif n != len(class_names):
        raise ValueError(
            f"model.num_classes is {n} but {source} has {len(class_names)} categories"
        )


def lr_at(cfg: dict, base_lr: float, epoch: int, it: int) -> float:
    """Step decay by epoch with a linear warm-up over the first iterations (global iter `it`)."""
    t = cfg["train"]
    lr = base_lr * t["lr_gamma"] ** sum(epoch >= s for s in t["lr_steps"])
    if it < t["warmup_iters"]:
        lr *= 1 - (1 - it / t["warmup_iters"]) * (1 - t["warmup_ratio"])
    return lr


def build_optimizer(model: nn.Module, t: dict, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the official recipe) or AdamW, over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr, momentum=t["momentum"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr, weight_decay=t["weight_decay"])
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {t['optimizer']!r}")


def unwrap(model: nn.Module) -> GFL:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def evaluate(model: GFL, loader, device: torch.device, out_dir: Path | None) -> dict:
    """Predicts this rank's share of the val set; rank 0 gathers and runs COCO evaluation."""
    ds = loader.dataset
    results = predict_dataset(model, loader, device, progress=gdist.is_main(), cat_ids=ds.cat_ids)
    if gdist.is_distributed():
        gathered: list[Any] = [None] * gdist.world_size()
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics: dict = {}
    if gdist.is_main():
        metrics = coco_evaluate(ds.coco, results, ds.class_names, ds.cat_ids, out_dir)
    return metrics


class Trainer:
    """Builds data, model and optimizer from a config and runs the epochs."""

    def __init__(self, cfg: dict, resume: bool | str = False) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg["device"])
        init_distributed(self.device)
        self.work_dir = Path(cfg["work_dir"])
        self.work_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(self.work_dir)
        seed_everything(cfg["seed"] + gdist.rank())

        d = cfg["data"]
        self.train_set = build_dataset(d["train"], train=True)
        self.val_set = build_dataset(d["val"], train=False)
        resolve_num_classes(cfg, self.train_set.class_names, d["train"]["ann_file"])
        if self.val_set.cat_ids != self.train_set.cat_ids:
            raise ValueError(
                f"{d['val']['ann_file']}: categories differ from {d['train']['ann_file']}"
            )
        ws, rk = gdist.world_size(), gdist.rank()
        self.train_loader = build_dataloader(
            self.train_set, d["train"]["batch_size"], d["train"]["num_workers"], True,
            cfg["seed"], ws, rk, d["size_divisor"],
        )  # fmt: skip
        self.val_loader = build_dataloader(
            self.val_set, d["val"]["batch_size"], d["val"]["num_workers"], False,
            cfg["seed"], ws, rk, d["size_divisor"],
        )  # fmt: skip

        # Rank 0 first: it fetches pretrained weights into the cache that the others then read.
        if gdist.is_distributed() and not gdist.is_main():
            dist.barrier()
        model = build_model(cfg).to(self.device)
        if gdist.is_distributed() and gdist.is_main():
            dist.barrier()
        self.model: nn.Module = model
        if gdist.is_distributed():
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        t = cfg["train"]
        self.base_lr = t["lr"] * d["train"]["batch_size"] * ws / t["base_batch_size"]
        self.optimizer = build_optimizer(model, t, self.base_lr)
        self.epoch, self.iter = 0, 0
        if resume:
            self._resume(self.work_dir / "latest.pth" if resume is True else Path(resume))
        if gdist.is_main():
            dump_config(cfg, self.work_dir / "config.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "model: %d classes, %.2fM parameters; %d train / %d val images; device %s x%d; lr %g",
            model.num_classes, n_params / 1e6, len(self.train_set), len(self.val_set),
            self.device, ws, self.base_lr,
        )  # fmt: skip

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "iter": self.iter,
            "config": self.cfg,
            "classes": list(self.train_set.class_names),
            "cat_ids": [int(c) for c in self.train_set.cat_ids],
            "rng": {"torch": torch.get_rng_state()},
        }

    def save(self, name: str) -> None:
        if not gdist.is_main():
            return
        state = self.state()
        save_checkpoint(state, self.work_dir / name)
        save_checkpoint(state, self.work_dir / "latest.pth")

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_model_weights(unwrap(self.model), state, path)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.iter = int(state.get("epoch", 0)), int(state.get("iter", 0))
        if "rng" in state:
            torch.set_rng_state(state["rng"]["torch"])
        log.info("resumed from %s at epoch %d, iteration %d", path, self.epoch, self.iter)

    # -- the loop -----------------------------------------------------------------------------
    def _log_json(self, record: dict) -> None:
        if gdist.is_main():
            with open(self.work_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def train_epoch(self) -> bool:
        """One epoch; returns False when train.max_iters was reached."""
        t = self.cfg["train"]
        self.model.train()
        self.train_loader.batch_sampler.set_epoch(self.epoch)
        bar = tqdm(
            self.train_loader, desc=f"epoch {self.epoch + 1}/{t['epochs']}",
            disable=not gdist.is_main(), dynamic_ncols=True, file=sys.stdout,
        )  # fmt: skip
        start = time.time()
        for images, targets in bar:
            lr = lr_at(self.cfg, self.base_lr, self.epoch, self.iter)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            images = images.to(self.device, non_blocking=True)
            losses = self.model(images, targets)
            loss = sum(losses.values())
            losses = {k: v.detach() for k, v in losses.items()}
            if not torch.isfinite(loss):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise FloatingPointError(
                    f"non-finite loss at iteration {self.iter} (epoch {self.epoch + 1}): "
                    f"{', '.join(bad)}; the last good checkpoint is {self.work_dir / 'latest.pth'}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t["grad_clip"]:
                nn.utils.clip_grad_norm_(self.model.parameters(), t["grad_clip"])
            self.optimizer.step()
            self.iter += 1
            if self.iter % t["log_interval"] == 0 or self.iter == 1:
                values = {k: round(v.item(), 4) for k, v in losses.items()}
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", **{
                    k.removeprefix("loss_"): f"{v:.3f}" for k, v in values.items()
                })  # fmt: skip
                self._log_json({
                    "epoch": self.epoch + 1, "iter": self.iter, "lr": lr,
                    "loss": round(loss.item(), 4), **values,
                    "time": round(time.time() - start, 1),
                })  # fmt: skip
            if t["max_iters"] is not None and self.iter >= t["max_iters"]:
                return False
        return True

    def fit(self) -> dict:
        """Runs the remaining epochs; returns the last evaluation's metrics (may be empty)."""
        t = self.cfg["train"]
        metrics: dict = {}
        while self.epoch < t["epochs"]:
            more = self.train_epoch()
            self.epoch += 1
            last = self.epoch == t["epochs"] or not more
            if last or self.epoch % t["checkpoint_interval"] == 0:
                self.save(f"epoch_{self.epoch}.pth")
            if t["eval_interval"] and (last or self.epoch % t["eval_interval"] == 0):
                metrics = evaluate(unwrap(self.model), self.val_loader, self.device, self.work_dir)
                if gdist.is_main():
                    log.info("epoch %d: %s", self.epoch, format_metrics(metrics))
                    ap = {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
                    ap = {k: (None if v is None or math.isnan(v) else v) for k, v in ap.items()}
                    self._log_json({"epoch": self.epoch, "iter": self.iter, "val": ap})
            if not more:
                break
        return metrics


def train(cfg: dict, resume: bool | str = False) -> dict:
    """Trains a detector as configured; returns the final evaluation metrics."""
    trainer = Trainer(cfg, resume)
    try:
        return trainer.fit()
    finally:
        if gdist.is_distributed():
            dist.destroy_process_group()
