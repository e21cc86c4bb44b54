"""Training loop: SGD or AdamW with a warm-up and a step or cosine schedule, checkpoints,
periodic COCO evaluation, best.pth and early stopping.

Works in one process (CPU or one GPU) and under torchrun (one process per GPU, DDP; gloo on the
CPU). Options: mixed precision (train.amp), gradient clipping, an EMA of the weights, SyncBN.

Nothing is lost on failure. Checkpoints are written atomically and hold everything needed to
continue exactly: model, optimizer, GradScaler, EMA, epoch, iteration, the position in the epoch
and every rank's RNG states (the learning rate is a function of epoch and iteration). SIGINT /
SIGTERM finish the current step, save, and say how to resume; a NaN/inf loss stops training before
it reaches the weights and leaves the last good checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ..core import dist as gdist
from ..core.checkpoint import load_model_weights, rng_state, set_rng_state
from ..core.dist import init_distributed
from ..core.draw import DRAW_SCORE_THR, draw_batch, draw_detections
from ..core.options import to_dict
from ..core.runtime import (
    configure_determinism,
    resolve_device,
    resolve_num_classes,
    seed_everything,
)
from ..data.loader import build_dataloader, build_dataset
from ..data.transforms import collate_batch
from ..evaluation.evaluator import evaluate, format_metrics
from ..model.build import build_model
from ..model.detector import GFL
from ..model.fuse import prepare_for_inference
from .checkpointer import BestAP, Checkpointer
from .curves import write_training_curves
from .distill import Distiller, build_distiller, check_teacher_path
from .finetune import format_report, init_from_checkpoint
from .optim import build_optimizer, ema_avg_fn, lr_at, reapply_settings
from .run_dir import RunDir
from .run_logs import VAL_KEYS, TensorBoard, write_results_csv

if TYPE_CHECKING:  # the config layer sits above the jobs: a type only, never imported here
    from ..config import Config
    from ..model.options import ModelOptions

__all__ = ["Trainer", "TrainingInterrupted", "train"]

log = logging.getLogger("gfldet")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised on every rank after SIGINT / SIGTERM, once the checkpoint is saved. The message
    gives the command that resumes the run."""


def unwrap(model: nn.Module) -> GFL:
    """The model itself, also when DDP wraps it."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Builds data, model and optimizer from a config and runs the epochs.

    resume: False (a new run), True (WORK_DIR/latest.pth) or a checkpoint path. overwrite: a
    new run in a work dir that holds one moves the old run aside first (see run_dir).
    teacher_model: the model section of distill.teacher_config, which the caller reads (the
    config layer sits above the trainer); unused without distill.teacher_config.

    The constructor runs the build steps in order, each a method: `_setup_process` (device,
    torch.distributed, determinism), `_open_run_dir` (the work dir's rules, logging, seeds),
    `_build_data`, `_build_model` (with model.init_from), `_build_training` (SyncBN, EMA, DDP,
    optimizer, AMP, counters), the `Checkpointer` and the resume, then `_start_run` (config.yaml,
    train.log, TensorBoard, the first batches drawn). `Trainer.for_model` builds a trainer of a
    given model with the steps that `train_step` needs alone.
    """

    # train_batch0.jpg ... of a new run: its first training batches, as the model gets them.
    preview_batches = 3

    def __init__(
        self,
        cfg: Config,
        resume: bool | str | Path = False,
        overwrite: bool = False,
        teacher_model: ModelOptions | None = None,
    ) -> None:
        self.cfg = cfg
        self.teacher_model = teacher_model
        self._setup_process()
        resume_path = self._open_run_dir(resume, overwrite)
        self._build_data()
        self._build_training(self._build_model(init_from=resume_path is None))
        self.checkpointer: Checkpointer | None = Checkpointer(
            self.run_dir, self.device, cfg.train.keep_last
        )
        if resume_path is not None:
            self._resume(resume_path)
        self._start_run(new=resume_path is None)

    @classmethod
    def for_model(
        cls,
        cfg: Config,
        model: nn.Module,
        device: torch.device | None = None,
        batch_size: int | None = None,
        teacher_model: ModelOptions | None = None,
    ) -> Trainer:
        """A trainer of `model` for `train_step` alone (e.g. a benchmark of the step): the same
        steps as a run's (SyncBN, EMA, DDP when a process group is joined, the optimizer, AMP
        and its GradScaler) from cfg.train, without data, work dir or checkpoints.

        model: a GFL as build_model returns it (moved to `device`). device: default cfg.device.
        batch_size: images per step and process, which scales lr to `base_lr` (default
        data.train.batch_size). `fit`, `save` and evaluation need a full Trainer.
        teacher_model: as for the constructor (cfg.distill distils into `model`).
        """
        self = cls.__new__(cls)
        self.cfg = cfg
        self.teacher_model = teacher_model
        self.device = device if device is not None else resolve_device(cfg.device)
        self.batch_size = batch_size if batch_size is not None else cfg.data.train.batch_size
        self.checkpointer = None
        self._build_training(model)
        return self

    # -- build steps ----------------------------------------------------------------------------
    def _setup_process(self) -> None:
        """Checks what is needed before anything is read or written, selects deterministic
        kernels, the device, and joins the process group under torchrun."""
        t = self.cfg.train
        if t.tensorboard:
            TensorBoard.check_available()
        configure_determinism(t.deterministic)
        self.device = resolve_device(self.cfg.device)
        init_distributed(self.device)

    def _open_run_dir(self, resume: bool | str | Path, overwrite: bool) -> Path | None:
        """The work dir checked and claimed (see RunDir), logging started, seeds set; returns
        the checkpoint to resume from (None for a new run). A model.init_from that --overwrite
        moved aside with the old run is read from where it went."""
        d = self.cfg.data
        self.run_dir = RunDir(self.cfg.work_dir)
        self.work_dir = self.run_dir.path
        self.run_dir.check(
            {"data.train.img_dir": d.train.img_dir, "data.val.img_dir": d.val.img_dir}
        )
        check_teacher_path(self.cfg.distill, self.work_dir)
        resume_path = Checkpointer.find(resume, self.run_dir)
        self.run_dir.claim(new_run=resume_path is None, overwrite=overwrite)
        if self.run_dir.moved_to is not None:
            log.info("--overwrite: moved the previous run's files to %s", self.run_dir.moved_to)
        init_from = self.cfg.model.init_from
        moved = self.run_dir.moved(init_from) if init_from and resume_path is None else None
        if moved is not None:
            log.info("model.init_from %s went with the previous run: reading %s", init_from, moved)
            self.cfg.model.init_from = str(moved)  # config.yaml says what the run read
        seed_everything(self.cfg.seed + gdist.rank())
        return resume_path

    def _build_data(self) -> None:
        """The train and val datasets and loaders; model.num_classes from the data."""
        cfg, d = self.cfg, self.cfg.data
        skip = d.skip_bad_images
        self.train_set = build_dataset(d.train, True, skip, d.classes, cfg.train.epochs)
        # A VOC val split takes the training set's classes (its own may lack some).
        self.val_set = build_dataset(d.val, False, skip, self.train_set.class_names)
        resolve_num_classes(cfg, self.train_set.class_names, d.train.ann_file)
        if self.val_set.cat_ids != self.train_set.cat_ids:
            raise ValueError(f"{d.val.ann_file}: categories differ from {d.train.ann_file}")
        ws, rk = gdist.world_size(), gdist.rank()
        self.batch_size = d.train.batch_size
        self.train_loader = build_dataloader(
            self.train_set,
            self.batch_size,
            d.train.num_workers,
            True,
            cfg.seed,
            ws,
            rk,
            d.size_divisor,
        )
        self.val_loader = build_dataloader(
            self.val_set,
            d.val.batch_size,
            d.val.num_workers,
            False,
            cfg.seed,
            ws,
            rk,
            d.size_divisor,
        )

    def _build_model(self, init_from: bool) -> GFL:
        """The config's model; with `init_from`, model.init_from's weights loaded into it."""
        # Rank 0 first: it fetches pretrained weights into the cache that the others then read.
        if not gdist.is_main():
            gdist.barrier()
        model = build_model(self.cfg.model)
        if gdist.is_main():
            gdist.barrier()
        if self.cfg.model.init_from and init_from:  # before the EMA copy and DDP
            report = init_from_checkpoint(
                model, self.cfg.model.init_from, self.train_set.class_names
            )
            for line in format_report(report).splitlines():
                log.info(line)
        return model

    def _build_training(self, model: GFL) -> None:
        """Everything `train_step` uses: the model (SyncBN, on the device, DDP-wrapped under
        torchrun), its EMA, the optimizer at the scaled lr, AMP, the distillation's teacher
        (cfg.distill) and the run's counters."""
        t = self.cfg.train
        model = self._maybe_sync_bn(model).to(self.device)
        classes = self.train_set.class_names if hasattr(self, "train_set") else None
        self.distiller: Distiller | None = build_distiller(
            self.cfg.distill, model, self.device, self.teacher_model, classes
        )
        self.ema = None
        if t.ema:
            # The average is kept on every rank (each evaluates its shard with it); buffers are
            # averaged too, so BatchNorm statistics follow the weights.
            avg = ema_avg_fn(t.ema_decay, t.ema_ramp_iters)
            self.ema = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
        self.model: nn.Module = model
        if gdist.is_distributed():
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.base_lr = t.lr * self.batch_size * gdist.world_size() / t.base_batch_size
        self.optimizer = build_optimizer(model, t, self.base_lr)
        # fp16 needs loss scaling against underflow; the CPU's bf16 has float32's range.
        self.amp = bool(t.amp)
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp and self.device.type == "cuda"
        )
        self.epoch = 0  # completed epochs
        self.iter = 0  # completed iterations, all epochs together
        self.epoch_iter = 0  # batches of the current epoch already trained on
        self.skipped_images = 0  # unreadable images skipped (data.skip_bad_images), all ranks
        self.epoch_sums: dict[str, float] = {}  # loss terms summed over this epoch's steps
        self.epoch_steps = 0
        self.lr: float | None = None  # of the last step
        self.best = BestAP()  # val AP: best.pth and train.patience
        self._signal: str | None = None
        self._stopped = False

    def _start_run(self, new: bool) -> None:
        """With the run validated (a resume included): config.yaml (what resumes the run),
        train.log, TensorBoard, the summary line, and for a new run its first batches drawn."""
        t = self.cfg.train
        self.run_dir.start_log(to_dict(self.cfg))
        self.tensorboard = TensorBoard(self.work_dir) if t.tensorboard and gdist.is_main() else None
        model = unwrap(self.model)
        n_params = sum(p.numel() for p in model.parameters())
        ema = f"; ema {t.ema_decay}" + (f" (ramp {t.ema_ramp_iters})" if t.ema_ramp_iters else "")
        log.info(
            "model: %d classes, %.2fM parameters; %d train / %d val images; device %s x%d; lr %g"
            "%s%s",
            model.num_classes,
            n_params / 1e6,
            len(self.train_set),
            len(self.val_set),
            self.device,
            gdist.world_size(),
            self.base_lr,
            f"; amp {str(self.amp_dtype)[6:]}" if self.amp else "",
            ema if self.ema is not None else "",
        )
        if new:
            self._draw_first_batches()

    def _draw_first_batches(self) -> None:
        """WORK_DIR/train_batch{0,1,...}.jpg: the first `preview_batches` training batches with
        their boxes, as augmented for the model (rank 0's). They are read as the loader would,
        in this process; every RNG state is put back after, so training does not change. A
        failure only warns."""
        if not gdist.is_main() or self.preview_batches < 1:
            return
        rng = rng_state(self.device)
        sampler = self.train_loader.batch_sampler
        try:
            sampler.set_epoch(self.epoch, self.epoch_iter)
            for k, items in zip(range(self.preview_batches), sampler):
                images, targets = self.train_loader.collate_fn([self.train_set[i] for i in items])
                if targets:
                    path = self.work_dir / f"train_batch{k}.jpg"
                    draw_batch(images, targets, self.train_set.class_names, path)
        except Exception as e:  # noqa: BLE001 - a picture must never end a training run
            log.warning("could not draw the first training batches: %s", e)
        finally:
            set_rng_state(rng, self.device)

    def _maybe_sync_bn(self, model: GFL) -> GFL:
        """train.sync_bn: BatchNorm statistics over all ranks' images (CUDA only, as torch's)."""
        if not self.cfg.train.sync_bn:
            return model
        if self.cfg.model.backbone.norm_eval:
            log.warning(
                "train.sync_bn has no effect while model.backbone.norm_eval is true "
                "(BatchNorm statistics are frozen); set norm_eval: false to train them"
            )
            return model
        if not gdist.is_distributed():
            return model  # one process: SyncBN would be plain BN
        if self.device.type != "cuda":
            log.warning(
                "train.sync_bn: torch's SyncBatchNorm needs CUDA; on the CPU every process "
                "keeps its own BatchNorm statistics"
            )
            return model
        log.info("train.sync_bn: BatchNorm synchronised over %d processes", gdist.world_size())
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    # -- checkpoints --------------------------------------------------------------------------
    def state(self, rng: list[dict] | None = None) -> dict[str, Any]:
        """Everything a checkpoint holds. rng: every rank's RNG states, indexed by rank."""
        state = {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iter": self.iter,
            "epoch_iter": self.epoch_iter,
            # The lr schedule is lr_at(cfg.train, base_lr, epoch, iter, ...); base_lr depends
            # on these.
            "base_lr": self.base_lr,
            "world_size": gdist.world_size(),
            "batch_size": self.batch_size,
            "skipped_images": self.skipped_images,
            "epoch_sums": dict(self.epoch_sums),  # results.csv's epoch means, exact on resume
            "epoch_steps": self.epoch_steps,
            "best": self.best.state_dict(),
            "config": to_dict(self.cfg),
            "classes": list(self.train_set.class_names),
            "cat_ids": [int(c) for c in self.train_set.cat_ids],
            "rng": rng if rng is not None else [rng_state(self.device)],
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    def save(self, epoch_file: str | None = None) -> None:
        """Writes latest.pth (and `epoch_file`, e.g. "epoch_3.pth") on rank 0.

        Every rank must call it: the RNG states of all ranks are gathered into the checkpoint.
        """
        self.checkpointer.save(self.state, self.iter, epoch_file, self.epoch)

    def _resume(self, path: Path) -> None:
        """Restores the run from the checkpoint `path`, after checking that it fits this
        config (nothing is written before)."""
        state = self.checkpointer.load(path)
        load_model_weights(unwrap(self.model), state, path)
        if "optimizer" in state:
            self._check_optimizer_state(state, path)
            fresh = [
                {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
            ]
            self.optimizer.load_state_dict(state["optimizer"])
            # The config's settings, as config.yaml will say (the optimizer's state is kept).
            for key, (was, now) in reapply_settings(self.optimizer, fresh).items():
                log.info(
                    "resume: %s %s -> %s: the optimizer takes this config's value (as "
                    "config.yaml says) and keeps its state",
                    key,
                    _show(was),
                    _show(now),
                )
        else:
            log.warning("%s holds no optimizer state: momentum restarts from zero", path)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" in state:
                load_model_weights(self.ema.module, state, path, key="ema")
                self.ema.n_averaged.fill_(int(state.get("ema_updates", 1)))
            else:
                log.warning("%s holds no EMA weights: the average restarts from its weights", path)
                self.ema.n_averaged.zero_()  # the next update copies the model
        self.epoch, self.iter = int(state.get("epoch", 0)), int(state.get("iter", 0))
        self.skipped_images = int(state.get("skipped_images", 0))
        self.epoch_sums = {k: float(v) for k, v in (state.get("epoch_sums") or {}).items()}
        self.epoch_steps = int(state.get("epoch_steps", 0))
        ws = gdist.world_size()
        epoch_iter = int(state.get("epoch_iter", 0))
        saved = (int(state.get("world_size", ws)), int(state.get("batch_size", self.batch_size)))
        if saved != (ws, self.batch_size):
            log.warning(
                "%s was trained with %d process(es) x %d images per batch, this run has %d x %d: "
                "data order and lr differ from an uninterrupted run",
                path,
                *saved,
                ws,
                self.batch_size,
            )
            # The same number of images seen, in batches of the new size.
            epoch_iter = epoch_iter * saved[0] * saved[1] // (ws * self.batch_size)
        self.epoch_iter = min(epoch_iter, len(self.train_loader.batch_sampler))
        rng = state.get("rng")
        if isinstance(rng, list) and len(rng) == ws:
            set_rng_state(rng[gdist.rank()], self.device)
        elif isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor):
            torch.set_rng_state(rng["torch"])  # checkpoints of gfldet <= 0.1 held only this
        else:
            log.warning("%s: RNG states not restored (saved by another number of processes)", path)
        # The best val AP so far: the checkpoint's, and the evaluation that followed its save
        # (in log.jsonl, which rank 0 holds); then the log loses what comes after.
        self.best = BestAP.from_state(state.get("best"))
        if gdist.is_main():
            self.best.replay(self.run_dir.records(), self.iter)
        self.best = gdist.all_gather_object(self.best)[0]
        self.run_dir.truncate_log(self.iter)
        log.info(
            "resumed from %s: epoch %d, iteration %d (%d of the epoch's batches done)",
            path,
            self.epoch + 1,
            self.iter,
            self.epoch_iter,
        )

    def _check_optimizer_state(self, state: dict, path: Path) -> None:
        """Raises ValueError, before anything is loaded or written, when the checkpoint's
        optimizer state cannot continue with this config: another optimizer (its state holds
        other quantities), or other trainable parameters (e.g. another frozen_stages)."""
        saved_cfg = state.get("config") or {}
        then = saved_cfg.get("train", {}).get("optimizer")
        now = self.cfg.train.optimizer
        if then is not None and then != now:
            raise ValueError(
                f"{path}: cannot resume: the run was trained with train.optimizer {then!r} and "
                f"this config has {now!r}, whose state (momentum, moments) is another. Resume "
                f"with train.optimizer: {then} (as in the run's config.yaml), or start a new run "
                f"from these weights with model.init_from: {path}"
            )
        saved = [len(g["params"]) for g in state["optimizer"].get("param_groups", [])]
        current = [len(g["params"]) for g in self.optimizer.param_groups]
        if saved != current:
            key = "model.backbone.frozen_stages"
            was = saved_cfg.get("model", {}).get("backbone", {}).get("frozen_stages")
            is_ = self.cfg.model.backbone.frozen_stages
            change = f" ({key} was {was}, is {is_})" if was is not None and was != is_ else ""
            raise ValueError(
                f"{path}: cannot resume: its optimizer state covers {sum(saved)} trainable "
                f"tensors, this config trains {sum(current)}{change}; resume with the run's own "
                "config.yaml, or start a new run from these weights with model.init_from"
            )

    def resume_command(self) -> str:
        """The command that continues this run from WORK_DIR/latest.pth."""
        return self.run_dir.resume_command()

    # -- signals ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_handled(self) -> Iterator[None]:
        """SIGINT / SIGTERM ask the loop to stop after the current step (and save); a second
        one acts at once, as it would without this handler."""
        if threading.current_thread() is not threading.main_thread():
            yield  # handlers can only be installed from the main thread
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        old = {s: signal.getsignal(s) for s in sigs}
        old = {s: h if h is not None else signal.SIG_DFL for s, h in old.items()}

        def handler(signum: int, frame: Any) -> None:
            self._signal = signal.Signals(signum).name
            signal.signal(signum, old[signum])
            log.warning(
                "%s received: saving a checkpoint after this step (send it again to stop at "
                "once, without saving)",
                self._signal,
            )

        for s in sigs:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _stop_requested(self) -> bool:
        """Whether any rank got SIGINT / SIGTERM (the same answer on every rank)."""
        return gdist.reduce_sum([float(self._signal is not None)], self.device)[0] > 0

    def _save_and_stop(self) -> NoReturn:
        self.save()
        sampler = self.train_loader.batch_sampler
        n = sampler.start + len(sampler)
        msg = (
            f"stopped by {self._signal or 'a signal to another process'} after iteration "
            f"{self.iter} (epoch {self.epoch + 1}, {self.epoch_iter}/{n} batches); saved "
            f"{self.work_dir / 'latest.pth'}. Resume with:\n  {self.resume_command()}"
        )
        if gdist.is_main():
            log.warning(msg)
        raise TrainingInterrupted(msg)

    # -- the loop -----------------------------------------------------------------------------
    def _log_json(self, record: dict) -> None:
        self.run_dir.append(record)

    def _max_iters_reached(self) -> bool:
        m = self.cfg.train.max_iters
        return m is not None and self.iter >= m

    def train_step(self, images: torch.Tensor, targets: list[dict], lr: float) -> dict[str, float]:
        """One optimisation step on a batch (images uint8 [B, 3, H, W]); returns the losses.

        A NaN / inf loss on any rank raises FloatingPointError on every rank, before backward:
        the weights, optimizer and checkpoints stay as they were.
        """
        t = self.cfg.train
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            if self.distiller is None:
                losses = self.model(images, targets)
            else:  # the student's losses and the teacher's lessons (loss_ld, ...)
                losses = self.distiller(self.model, images, targets)
        values = torch.stack([v.detach().float() for v in losses.values()])
        bad = gdist.reduce_sum((~torch.isfinite(values)).float().tolist(), self.device)
        if any(bad):
            terms = [f"{k} = {v:g}" for (k, v), b in zip(losses.items(), bad) if b]
            last = self.checkpointer.last if self.checkpointer is not None else None
            where = (
                f"the last good checkpoint is {last}"
                if last is not None
                else "no checkpoint was written in this run"
            )
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iter + 1} (epoch {self.epoch + 1}): "
                f"{', '.join(terms)}; stopped before updating the weights, {where} "
                "(try a lower train.lr, train.grad_clip, or longer train.warmup_iters)"
            )
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            params = [p for p in self.model.parameters() if p.requires_grad]
            nn.utils.clip_grad_norm_(params, t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.model))
        return dict(zip(losses, values.tolist()))

    def train_epoch(self) -> bool:
        """Trains on the rest of the epoch. Returns True at its end, False when stopped early
        (train.max_iters, or a signal: then `self._stopped` is set on every rank)."""
        t = self.cfg.train
        self.model.train()
        sampler = self.train_loader.batch_sampler
        sampler.set_epoch(self.epoch, self.epoch_iter)
        n = self.epoch_iter + len(sampler)
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            initial=self.epoch_iter,
            total=n,
            disable=not gdist.is_main(),
            dynamic_ncols=True,
            file=sys.stdout,
        )
        start = time.time()
        every = t.checkpoint_interval_iters
        for images, targets in bar:
            # One all-reduce agrees on what every rank must do the same way.
            empty, stop, skipped = gdist.reduce_sum(
                [
                    float(not targets),
                    float(self._signal is not None),
                    float(sampler.batch_size - len(targets)),
                ],
                self.device,
            )
            if stop:
                self._stopped = True
                return False
            if skipped:
                self.skipped_images += int(skipped)
            if skipped and gdist.is_main():  # totals over ranks: said once
                log.warning(
                    "iteration %d: %d unreadable image(s) skipped, %d so far "
                    "(data.skip_bad_images)",
                    self.iter + 1,
                    skipped,
                    self.skipped_images,
                )
            lr = lr_at(t, self.base_lr, self.epoch, self.iter, t.epochs * n)
            losses = None
            if empty:  # some rank has no image at all: nobody steps, so DDP stays in lockstep
                if gdist.is_main():
                    log.warning("iteration %d skipped: no readable image in a batch", self.iter + 1)
            else:
                losses = self.train_step(images, targets, lr)
                for k, v in losses.items():
                    self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                self.epoch_steps += 1
            self.iter += 1
            self.epoch_iter += 1
            self.lr = lr
            if losses and (self.iter % t.log_interval == 0 or self.iter == 1):
                loss = sum(losses.values())
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    lr=f"{lr:.2e}",
                    **{k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()},
                )
                extra = {"skipped_images": self.skipped_images} if self.skipped_images else {}
                self._log_json(
                    {
                        "epoch": self.epoch + 1,
                        "iter": self.iter,
                        "lr": lr,
                        "loss": round(loss, 4),
                        **{k: round(v, 4) for k, v in losses.items()},
                        "time": round(time.time() - start, 1),
                        **extra,
                    }
                )
                if self.tensorboard is not None:
                    self.tensorboard.step(self.iter, lr, losses)
            if self._max_iters_reached():
                return False
            if every and self.iter % every == 0 and self.epoch_iter < n:
                self.save()  # mid-epoch; the epoch's end is saved by fit()
        return True

    def _end_epoch(self) -> None:
        """The epoch's mean losses into log.jsonl (results.csv is rebuilt from it)."""
        if self.epoch_steps and gdist.is_main():
            means = {k: round(v / self.epoch_steps, 5) for k, v in self.epoch_sums.items()}
            means["loss"] = round(sum(means.values()), 5)
            self._log_json(
                {"epoch": self.epoch + 1, "iter": self.iter, "lr": self.lr, "epoch_mean": means}
            )
        self.epoch_sums, self.epoch_steps = {}, 0

    def _write_results(self) -> None:
        if gdist.is_main() and self.run_dir.log_file.is_file():
            write_results_csv(self.work_dir)

    def _evaluate(self) -> dict:
        """Evaluates the EMA weights when there are some, else the model's; a better val AP
        than before is saved as best.pth (every rank calls it)."""
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        # A BatchNorm-folded, channels_last copy: the same detections, faster on the CPU.
        fast = prepare_for_inference(model)
        metrics = evaluate(fast, self.val_loader, self.device, self.work_dir)
        if self.tensorboard is not None and metrics:
            self.tensorboard.evaluation(self.iter, metrics, self._drawn_val_images(fast))
        ap: dict[str, float | None] = {}
        if gdist.is_main():
            ap = {k: metrics[k] for k in VAL_KEYS}
            ap = {k: (None if v is None or math.isnan(v) else v) for k, v in ap.items()}
        # Rank 0 scored the detections; every rank takes the same decisions from its AP.
        improved = self.best.update(gdist.all_gather_object(ap.get("AP"))[0], self.epoch, self.iter)
        if improved:
            self.checkpointer.save_best(self.state, self.iter)
        if gdist.is_main():
            which = "EMA weights" if self.ema is not None else "weights"
            log.info("epoch %d (%s): %s", self.epoch, which, format_metrics(metrics))
            if improved:
                log.info("new %s", self.best.describe())
            record = {"epoch": self.epoch, "iter": self.iter, "val": ap}
            if self.ema is not None:
                record["weights"] = "ema"
            if self.best.ap is not None:
                record["best"] = {"epoch": self.best.epoch, "AP": self.best.ap}
            self._log_json(record)
            self._plot_curves()
        return metrics

    def _stop_early(self) -> None:
        """train.patience ran out: the epoch's weights saved (if they are not yet), and said."""
        t = self.cfg.train
        if self.checkpointer.saved_iter != self.iter:
            self.save(f"epoch_{self.epoch}.pth")
        msg = (
            f"early stop after epoch {self.epoch}: no better val AP in the last {t.patience} "
            f"evaluation(s) (train.patience); {self.best.describe()}"
        )
        log.info(msg)
        self._log_json(
            {
                "epoch": self.epoch,
                "iter": self.iter,
                "early_stop": {
                    "patience": t.patience,
                    "best_epoch": self.best.epoch,
                    "best_AP": self.best.ap,
                },
            }
        )

    def _drawn_val_images(self, model: GFL, n: int = 4) -> list:
        """The first `n` val images (RGB uint8) with the model's detections drawn."""
        ds, out = self.val_set, []
        for i in range(min(n, len(ds))):
            sample = ds[i]
            if sample is None:
                continue
            batch, targets = collate_batch([sample], self.cfg.data.size_divisor)
            det = model.predict(batch.to(self.device), targets)[0]
            rgb = ds.read_image(ds.img_ids[i])
            drawn = draw_detections(
                rgb[:, :, ::-1],
                det["boxes"],
                det["scores"],
                det["labels"],
                ds.class_names,
                DRAW_SCORE_THR,
            )
            out.append(drawn[:, :, ::-1].copy())
        return out

    def _plot_curves(self) -> None:
        """Redraws WORK_DIR/curves.png (loss terms, lr, val AP); a failed plot only warns."""
        try:
            write_training_curves(self.work_dir)
        except Exception as e:  # noqa: BLE001 - a picture must never end a training run
            log.warning("could not draw the training curves: %s", e)

    def fit(self) -> dict:
        """Runs the remaining epochs; returns the last evaluation's metrics (may be empty).

        Raises TrainingInterrupted after SIGINT / SIGTERM (a checkpoint is saved first) and
        FloatingPointError on a NaN / inf loss.
        """
        t = self.cfg.train
        metrics: dict = {}
        with self._signals_handled():
            while self.epoch < t.epochs and not self._max_iters_reached():
                if self.best.exhausted(t.patience):  # a resumed run that had stopped early
                    log.info(
                        "train.patience %d: the run had stopped early; %s",
                        t.patience,
                        self.best.describe(),
                    )
                    break
                self.train_epoch()
                if self._stopped:
                    self._save_and_stop()
                # train.max_iters ends the run as if the epoch were complete (smoke tests).
                self._end_epoch()
                self.epoch += 1
                self.epoch_iter = 0
                last = self.epoch == t.epochs or self._max_iters_reached()
                if last or self.epoch % t.checkpoint_interval == 0:
                    self.save(f"epoch_{self.epoch}.pth")
                elif t.checkpoint_interval_iters:
                    self.save()
                stop_early = False
                if t.eval_interval and (last or self.epoch % t.eval_interval == 0):
                    metrics = self._evaluate()
                    stop_early = not last and self.best.exhausted(t.patience)
                if stop_early:
                    self._stop_early()
                self._write_results()
                if stop_early:
                    break
                if self._stop_requested():
                    self._save_and_stop()
        if self.skipped_images and gdist.is_main():
            log.warning("%d unreadable image(s) were skipped in this run", self.skipped_images)
        best = f"; {self.best.describe()}" if self.best.ap is not None else ""
        log.info(
            "done: %d epochs, %d iterations; checkpoints in %s%s",
            self.epoch,
            self.iter,
            self.work_dir,
            best,
        )
        if self.tensorboard is not None:
            self.tensorboard.close()
        return metrics


def train(
    cfg: Config,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    teacher_model: ModelOptions | None = None,
) -> dict:
    """Trains a detector as configured; returns the final evaluation metrics. A new run needs a
    work dir without a run in it; `overwrite` moves an old run aside first (see run_dir).
    teacher_model: the model section of distill.teacher_config, when it is set."""
    try:
        metrics = Trainer(cfg, resume, overwrite, teacher_model).fit()
    except BaseException:
        gdist.shutdown(clean=False)
        raise
    gdist.shutdown()
    return metrics


def _show(value: object) -> str:
    """A setting's value for the log: numbers as %g, anything else as repr."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
