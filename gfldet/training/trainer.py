"""Training loop: SGD with linear warm-up and step decay, checkpoints, periodic COCO evaluation.

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
import errno
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..core import dist as gdist
from ..core.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    load_model_weights,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..core.dist import init_distributed
from ..core.draw import draw_detections
from ..core.files import write_yaml_atomic
from ..core.options import to_dict
from ..core.runtime import (
    configure_determinism,
    resolve_device,
    resolve_num_classes,
    seed_everything,
    setup_logging,
    start_log_file,
)
from ..data.loader import build_dataloader, build_dataset
from ..data.transforms import collate_batch
from ..evaluation.evaluator import evaluate, format_metrics
from ..model.build import build_model
from ..model.detector import GFL
from ..model.fuse import prepare_for_inference
from .curves import write_training_curves
from .finetune import format_report, init_from_checkpoint
from .optim import build_optimizer, lr_at
from .run_dir import check_work_dir, move_run_aside, new_run_problem
from .run_logs import VAL_KEYS, TensorBoard, write_results_csv

__all__ = ["Trainer", "TrainingInterrupted", "train"]

log = logging.getLogger("gfldet")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised on every rank after SIGINT / SIGTERM, once the checkpoint is saved. The message
    gives the command that resumes the run."""


def unwrap(model: nn.Module) -> GFL:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Builds data, model and optimizer from a config and runs the epochs.

    resume: False, True (WORK_DIR/latest.pth) or a checkpoint path.
    """

    def __init__(
        self, cfg: dict, resume: bool | str | Path = False, overwrite: bool = False
    ) -> None:
        self.cfg = cfg
        t, d = cfg.train, cfg.data
        if t.tensorboard:
            TensorBoard.check_available()  # before anything is read or written
        configure_determinism(t.deterministic)
        self.device = resolve_device(cfg.device)
        init_distributed(self.device)
        self.work_dir = Path(cfg.work_dir)
        check_work_dir(self.work_dir)
        # A new run never mixes with an old one (see run_dir); rank 0's view decides for all.
        problem = None if resume else new_run_problem(self.work_dir)
        problem = gdist.all_gather_object(problem)[0]
        if problem and not overwrite:
            raise FileExistsError(problem)
        if resume:
            resume = self.work_dir / "latest.pth" if resume is True else Path(resume)
            if not resume.is_file():
                raise FileNotFoundError(
                    f"no checkpoint to resume from: {resume}; name one with --resume PATH (e.g. "
                    "an epoch_N.pth of the run), or start a new run without --resume in an "
                    "empty --work-dir"
                )
        moved = None
        if problem and gdist.is_main():
            moved = move_run_aside(self.work_dir)
        gdist.barrier()
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # one clear line, as the CLI's out dirs
            raise PermissionError(f"cannot create work_dir {self.work_dir}: {e.strerror}") from None
        if not os.access(self.work_dir, os.W_OK):
            raise PermissionError(f"work_dir is not writable: {self.work_dir}")
        setup_logging(self.work_dir)
        if moved is not None:
            log.info("--overwrite: moved the previous run's files to %s", moved)
        seed_everything(cfg.seed + gdist.rank())

        skip = d.skip_bad_images
        self.train_set = build_dataset(d.train, True, skip, d.classes)
        # A VOC val split takes the training set's classes (its own may lack some).
        self.val_set = build_dataset(d.val, False, skip, self.train_set.class_names)
        resolve_num_classes(cfg, self.train_set.class_names, d.train.ann_file)
        if self.val_set.cat_ids != self.train_set.cat_ids:
            raise ValueError(f"{d.val.ann_file}: categories differ from {d.train.ann_file}")
        ws, rk = gdist.world_size(), gdist.rank()
        self.batch_size = d.train.batch_size
        self.train_loader = build_dataloader(
            self.train_set, self.batch_size, d.train.num_workers, True,
            cfg.seed, ws, rk, d.size_divisor,
        )  # fmt: skip
        self.val_loader = build_dataloader(
            self.val_set, d.val.batch_size, d.val.num_workers, False,
            cfg.seed, ws, rk, d.size_divisor,
        )  # fmt: skip

        # Rank 0 first: it fetches pretrained weights into the cache that the others then read.
        if not gdist.is_main():
            gdist.barrier()
        model = build_model(cfg.model)
        if gdist.is_main():
            gdist.barrier()
        if cfg.model.init_from and not resume:  # before the EMA copy and DDP
            report = init_from_checkpoint(model, cfg.model.init_from, self.train_set.class_names)
            for line in format_report(report).splitlines():
                log.info(line)
        model = self._maybe_sync_bn(model).to(self.device)
        self.ema = None
        if t.ema:
            # The average is kept on every rank (each evaluates its shard with it); buffers are
            # averaged too, so BatchNorm statistics follow the weights.
            self.ema = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True
            )
        self.model: nn.Module = model
        if gdist.is_distributed():
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.base_lr = t.lr * self.batch_size * ws / t.base_batch_size
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
        self.last_checkpoint: Path | None = None
        self._signal: str | None = None
        self._stopped = False
        if resume:
            self._resume(resume)
        # Only now, with the resume validated: the run's config.yaml is what resumes it.
        if gdist.is_main():
            write_yaml_atomic(to_dict(cfg), self.work_dir / "config.yaml")
        start_log_file(self.work_dir)
        self.tensorboard = TensorBoard(self.work_dir) if t.tensorboard and gdist.is_main() else None
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "model: %d classes, %.2fM parameters; %d train / %d val images; device %s x%d; lr %g"
            "%s%s", model.num_classes, n_params / 1e6, len(self.train_set), len(self.val_set),
            self.device, ws, self.base_lr, f"; amp {str(self.amp_dtype)[6:]}" if self.amp else "",
            f"; ema {t.ema_decay}" if self.ema is not None else "",
        )  # fmt: skip

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
            # The lr schedule is lr_at(cfg.train, base_lr, epoch, iter); base_lr depends on these.
            "base_lr": self.base_lr,
            "world_size": gdist.world_size(),
            "batch_size": self.batch_size,
            "skipped_images": self.skipped_images,
            "epoch_sums": dict(self.epoch_sums),  # results.csv's epoch means, exact on resume
            "epoch_steps": self.epoch_steps,
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
        rng = gdist.all_gather_object(rng_state(self.device))
        latest = self.work_dir / "latest.pth"
        last_good, self.last_checkpoint = self.last_checkpoint, latest  # named in messages
        if not gdist.is_main():
            return
        state = self.state(rng)
        try:
            if epoch_file:
                save_checkpoint(state, self.work_dir / epoch_file)
                link_checkpoint(self.work_dir / epoch_file, latest)
                keep = self.cfg.train.keep_last
                for p in prune_checkpoints(self.work_dir, keep, up_to=self.epoch):
                    log.info("removed %s (train.keep_last: %d)", p, keep)
            else:
                save_checkpoint(state, latest)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.last_checkpoint = last_good
            kept = f"the last good checkpoint {last_good} is intact" if last_good else (
                "no checkpoint of this run was written yet")  # fmt: skip
            raise OSError(
                e.errno,
                f"no space left on the device of {self.work_dir} while saving a "
                f"checkpoint; {kept}. Free some space, then resume with: {self.resume_command()}",
            ) from None

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_model_weights(unwrap(self.model), state, path)
        self.last_checkpoint = path
        if "optimizer" in state:
            self._check_optimizer_state(state, path)
            self.optimizer.load_state_dict(state["optimizer"])
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
                "data order and lr differ from an uninterrupted run", path, *saved, ws,
                self.batch_size,
            )  # fmt: skip
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
        if gdist.is_main():
            self._truncate_log()
        log.info(
            "resumed from %s: epoch %d, iteration %d (%d of the epoch's batches done)",
            path, self.epoch + 1, self.iter, self.epoch_iter,
        )  # fmt: skip

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

    def _truncate_log(self) -> None:
        """Drops log.jsonl records written after the checkpoint (their iterations are redone)."""
        path = self.work_dir / "log.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= self.iter:
                    keep.append(line)
            except (json.JSONDecodeError, AttributeError):
                pass  # a line cut short by a kill
        tmp = path.with_name(".log.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    def resume_command(self) -> str:
        """The command that continues this run from WORK_DIR/latest.pth."""
        cfg = shlex.quote(str(self.work_dir / "config.yaml"))
        ws, local = gdist.world_size(), gdist.local_world_size()
        if ws == 1:
            return f"gfldet train --config {cfg} --resume"
        launch = f"torchrun --nproc_per_node={local}"
        if ws > local:
            launch += f" --nnodes={ws // local} [same rendezvous flags as before, on every node]"
        return f"{launch} -m gfldet train --config {cfg} --resume"

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
                "once, without saving)", self._signal,
            )  # fmt: skip

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
        if gdist.is_main():
            with open(self.work_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

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
            losses = self.model(images, targets)
        values = torch.stack([v.detach().float() for v in losses.values()])
        bad = gdist.reduce_sum((~torch.isfinite(values)).float().tolist(), self.device)
        if any(bad):
            terms = [f"{k} = {v:g}" for (k, v), b in zip(losses.items(), bad) if b]
            where = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint is not None
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
            self.train_loader, desc=f"epoch {self.epoch + 1}/{t.epochs}",
            initial=self.epoch_iter, total=n, disable=not gdist.is_main(), dynamic_ncols=True,
            file=sys.stdout,
        )  # fmt: skip
        start = time.time()
        every = t.checkpoint_interval_iters
        for images, targets in bar:
            # One all-reduce agrees on what every rank must do the same way.
            empty, stop, skipped = gdist.reduce_sum(
                [float(not targets), float(self._signal is not None),
                 float(sampler.batch_size - len(targets))], self.device,
            )  # fmt: skip
            if stop:
                self._stopped = True
                return False
            if skipped:
                self.skipped_images += int(skipped)
            if skipped and gdist.is_main():  # totals over ranks: said once
                log.warning(
                    "iteration %d: %d unreadable image(s) skipped, %d so far "
                    "(data.skip_bad_images)", self.iter + 1, skipped, self.skipped_images,
                )  # fmt: skip
            lr = lr_at(self.cfg.train, self.base_lr, self.epoch, self.iter)
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
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", **{
                    k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()
                })  # fmt: skip
                extra = {"skipped_images": self.skipped_images} if self.skipped_images else {}
                self._log_json({
                    "epoch": self.epoch + 1, "iter": self.iter, "lr": lr, "loss": round(loss, 4),
                    **{k: round(v, 4) for k, v in losses.items()},
                    "time": round(time.time() - start, 1), **extra,
                })  # fmt: skip
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
            self._log_json({"epoch": self.epoch + 1, "iter": self.iter,
                            "lr": self.lr, "epoch_mean": means})  # fmt: skip
        self.epoch_sums, self.epoch_steps = {}, 0

    def _write_results(self) -> None:
        if gdist.is_main() and (self.work_dir / "log.jsonl").is_file():
            write_results_csv(self.work_dir)

    def _evaluate(self) -> dict:
        """Evaluates the EMA weights when there are some, else the model's."""
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        # A BatchNorm-folded, channels_last copy: same detections, ~2x faster on the CPU.
        fast = prepare_for_inference(model)
        metrics = evaluate(fast, self.val_loader, self.device, self.work_dir)
        if self.tensorboard is not None and metrics:
            self.tensorboard.evaluation(self.iter, metrics, self._drawn_val_images(fast))
        if gdist.is_main():
            which = "EMA weights" if self.ema is not None else "weights"
            log.info("epoch %d (%s): %s", self.epoch, which, format_metrics(metrics))
            ap = {k: metrics[k] for k in VAL_KEYS}
            ap = {k: (None if v is None or math.isnan(v) else v) for k, v in ap.items()}
            record = {"epoch": self.epoch, "iter": self.iter, "val": ap}
            if self.ema is not None:
                record["weights"] = "ema"
            self._log_json(record)
            self._plot_curves()
        return metrics

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
            drawn = draw_detections(rgb[:, :, ::-1], det["boxes"], det["scores"], det["labels"],
                                    ds.class_names, 0.3)  # fmt: skip
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
                if t.eval_interval and (last or self.epoch % t.eval_interval == 0):
                    metrics = self._evaluate()
                self._write_results()
                if self._stop_requested():
                    self._save_and_stop()
        if self.skipped_images and gdist.is_main():
            log.warning("%d unreadable image(s) were skipped in this run", self.skipped_images)
        log.info("done: %d epochs, %d iterations; checkpoints in %s", self.epoch, self.iter,
                 self.work_dir)  # fmt: skip
        if self.tensorboard is not None:
            self.tensorboard.close()
        return metrics


def train(cfg: dict, resume: bool | str | Path = False, overwrite: bool = False) -> dict:
    """Trains a detector as configured; returns the final evaluation metrics. A new run needs a
    work dir without a run in it; `overwrite` moves an old run aside first (see run_dir)."""
    try:
        metrics = Trainer(cfg, resume, overwrite).fit()
    except BaseException:
        gdist.shutdown(clean=False)
        raise
    gdist.shutdown()
    return metrics
