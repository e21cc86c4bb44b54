"""The training options: every `train.*` config key, its default, type and allowed values
(see docs/configs.md). Pure Python (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import option

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainOptions:
    """The training loop: schedule, optimizer, checkpoints and logging."""

    epochs: int = option(12, ge=1, help="epochs to train")
    optimizer: str = option(
        "sgd",
        choices=OPTIMIZERS,
        help="sgd: SGD with momentum (the paper's); adamw: AdamW, converges faster from scratch",
    )
    lr: float = option(
        0.01,
        gt=0,
        help="learning rate for a total batch of base_batch_size; the trainer scales it "
        "linearly to the actual total batch",
    )
    base_batch_size: int = option(16, ge=1, help="the total batch that lr is meant for")
    momentum: float = option(0.9, ge=0, lt=1, help="SGD momentum (optimizer sgd only)")
    weight_decay: float = option(
        0.0001, ge=0, help="weight decay of all trainable parameters (decoupled for adamw)"
    )
    warmup_iters: int = option(
        500, ge=0, help="linear warm-up length in iterations (not scaled with the batch); 0: none"
    )
    warmup_ratio: float = option(0.001, ge=0, le=1, help="warm-up starts at warmup_ratio x lr")
    lr_steps: list[int] = option(
        [8, 11], ge=0, help="epochs after which lr is multiplied by lr_gamma"
    )
    lr_gamma: float = option(0.1, gt=0, help="step-decay factor of lr at each of lr_steps")
    lr_schedule: str = option(
        "step",
        choices=("step", "cosine"),
        help="step: lr x lr_gamma at each of lr_steps; cosine: lr annealed per iteration to "
        "min_lr_ratio x lr at the end of the last epoch, after the warm-up",
    )
    min_lr_ratio: float = option(
        0.05, ge=0, le=1, help="lr_schedule cosine: the last lr, as a fraction of lr"
    )
    max_iters: int | None = option(
        None,
        ge=1,
        help="stop after this many iterations in total (smoke tests); the partial epoch is "
        "saved and evaluated as the last one",
    )
    eval_interval: int = option(
        1,
        ge=0,
        help="evaluate on data.val every this many epochs and after the last one; 0: never "
        "during training",
    )
    patience: int = option(
        0,
        ge=0,
        help="stop training after this many evaluations in a row without a better val AP "
        "(best.pth keeps the best); 0: never stop early",
    )
    checkpoint_interval: int = option(
        1, ge=1, help="write epoch_N.pth every this many epochs (the last epoch always)"
    )
    log_interval: int = option(
        20, ge=1, help="iterations between log records (log.jsonl, progress bar)"
    )
    grad_clip: float | None = option(
        None,
        ge=0,
        help="maximum L2 norm of all trainable gradients (after unscaling under AMP); null or "
        "0: no clipping",
    )
    amp: bool = option(
        False,
        help="mixed precision: float16 autocast with a GradScaler on CUDA, bfloat16 on the CPU",
    )
    ema: bool = option(
        False,
        help="keep an exponential moving average of the weights, used by evaluation, eval, "
        "infer and export",
    )
    ema_decay: float = option(
        0.9998,
        ge=0,
        lt=1,
        help="d of ema = d x ema + (1 - d) x weights after every step; spans about 1/(1 - d) "
        "iterations",
    )
    ema_ramp_iters: int = option(
        0,
        ge=0,
        help="ramp the EMA decay up as ema_decay x (1 - exp(-n / ema_ramp_iters)) at update n, "
        "as YOLOX and YOLOv8 do (they use 2000); 0: ema_decay from the first update",
    )
    sync_bn: bool = option(
        False,
        help="SyncBatchNorm across processes (CUDA, torchrun, model.backbone.norm_eval false)",
    )
    checkpoint_interval_iters: int = option(
        0, ge=0, help="also rewrite latest.pth every this many iterations, mid-epoch; 0: off"
    )
    keep_last: int = option(
        0, ge=0, help="keep only the newest N epoch_N.pth files of the run; 0: all"
    )
    deterministic: bool = option(
        False,
        help="deterministic algorithms where torch has them: bitwise reproducible training and "
        "resuming on the CPU",
    )
    tensorboard: bool = option(
        False, help="also log to WORK_DIR/tensorboard (needs the tensorboard package)"
    )


@dataclass
class DistillOptions:
    """Localization Distillation: learn from a trained teacher's edge distributions (distill.md).

    Zheng et al., CVPR 2022; MMDetection v2's configs/ld."""

    teacher_checkpoint: str | None = option(
        None,
        help="the teacher's checkpoint (its EMA weights when it has them); null: no "
        "distillation. The teacher needs edge distributions with the student's bins "
        "(reg_max, bin_width) and pyramid strides",
    )
    teacher_config: str | None = option(
        None,
        help="the teacher's config file or shipped name; null: the config stored in "
        "teacher_checkpoint (every checkpoint gfldet trains holds one)",
    )
    temperature: float = option(
        10.0, ge=1, help="T: both edge distributions are softmax(logits / T); the KL is × T²"
    )
    weight: float = option(
        0.25,
        ge=0,
        help="weight of loss_ld, the KL on the student's positives (main region), each "
        "weighted by its best detached score, summed, divided by 4 edges and scaled to 2 "
        "images per process (MMDetection's 0.25 at its 2 images per GPU)",
    )
    vlr_weight: float = option(
        0.0,
        ge=0,
        help="weight of loss_ld_vlr, the KL on the valuable localization region (locations "
        "whose anchor has α·t ≤ DIoU < t with a gt, t its ATSS threshold); 0: off; the "
        "paper's LD repository uses 0.25",
    )
    vlr_alpha: float = option(
        0.25, gt=0, lt=1, help="α of the valuable localization region (vlr_weight > 0)"
    )
    cls_weight: float = option(
        0.0,
        ge=0,
        help="weight of loss_kd, KD of the joint class scores (softmax over classes at "
        "cls_temperature) on the positives; 0: off; the paper's LD repository uses 10",
    )
    cls_temperature: float = option(2.0, ge=1, help="temperature of the class KD (cls_weight > 0)")
