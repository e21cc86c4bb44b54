"""`gfldet eval`: a checkpoint evaluated on the config's val split, with every output file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core import dist as gdist
from ..core.files import make_output_dir

if TYPE_CHECKING:  # the config layer sits above the jobs: a type only, never imported here
    from ..config import Config


def evaluate_checkpoint(
    cfg: Config, checkpoint: str | Path, out_dir: str | Path | None = None
) -> dict:
    """COCO evaluation of `checkpoint` (its EMA weights when it has some) on the config's val
    split; under torchrun every rank predicts a shard of the images. out_dir (default: the
    checkpoint's folder) gets detections.json, metrics.json, per_class.csv, the confusion
    matrix and the plots (see evaluator.coco_evaluate). Returns the metrics on rank 0 and {}
    on the other ranks, and prints their summary.

    Raises ValueError when the checkpoint does not fit the val split (other category ids or
    another number of classes) and PermissionError when out_dir cannot be written.
    """
    from ..core.runtime import resolve_device, setup_logging
    from ..data.loader import build_dataloader, build_dataset
    from ..inference.predictor import load_trained_model
    from .evaluator import evaluate, format_metrics

    device = resolve_device(cfg.device)
    joined = not gdist.is_distributed()
    gdist.init_distributed(device)  # under torchrun every rank predicts a shard of the val set
    try:
        setup_logging()
        d = cfg.data
        model, state = load_trained_model(cfg, checkpoint, device, fast=True)
        # A VOC split's classes are the checkpoint's (its own may lack some).
        classes = d.classes or state.get("classes")
        dataset = build_dataset(d.val, False, d.skip_bad_images, classes)
        ckpt_ids = state.get("cat_ids")
        if ckpt_ids is not None and [int(c) for c in ckpt_ids] != list(dataset.cat_ids):
            raise ValueError(
                f"{checkpoint} was trained on category ids {ckpt_ids[:10]}..., but "
                f"{d.val.ann_file} has {list(dataset.cat_ids)[:10]}..."
            )
        if model.num_classes != dataset.num_classes:
            raise ValueError(
                f"{checkpoint} predicts {model.num_classes} classes but {d.val.ann_file} "
                f"has {dataset.num_classes}"
            )
        out_dir = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent
        make_output_dir(out_dir)
        loader = build_dataloader(
            dataset,
            d.val.batch_size,
            d.val.num_workers,
            False,
            cfg.seed,
            gdist.world_size(),
            gdist.rank(),
            d.size_divisor,
        )
        metrics = evaluate(model, loader, device, out_dir)
        if gdist.is_main():
            print(
                f"{format_metrics(metrics)}\nwrote {out_dir / 'metrics.json'}, per_class.csv, "
                "confusion_matrix.csv/.png, calibration.png and pr_curves_*.png"
            )
    except BaseException:
        if joined:
            gdist.shutdown(clean=False)
        raise
    if joined:
        gdist.shutdown()
    return metrics
