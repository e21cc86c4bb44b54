"""Command line: `gfldet train | eval | infer | data synth`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=24 data.train.batch_size=4",
    )  # fmt: skip


def _cmd_train(a: argparse.Namespace) -> int:
    from .engine.trainer import train

    overrides = list(a.set) + ([f"work_dir={a.work_dir}"] if a.work_dir else [])
    cfg = load_config(a.config, overrides)
    train(cfg, resume=a.resume if a.resume is not None else False)
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from .data.loader import build_dataloader, build_dataset
    from .dist import rank, world_size
    from .engine.evaluator import format_metrics
    from .engine.predictor import load_trained_model
    from .engine.trainer import evaluate, init_distributed, resolve_device, setup_logging

    cfg = load_config(a.config, a.set)
    device = resolve_device(cfg["device"])
    init_distributed(device)  # under torchrun every rank predicts a shard of the val set
    setup_logging()
    d = cfg["data"]
    dataset = build_dataset(d["val"], train=False)
    model, state = load_trained_model(cfg, a.checkpoint, device)
    ckpt_ids = state.get("cat_ids")
    if ckpt_ids is not None and [int(c) for c in ckpt_ids] != list(dataset.cat_ids):
        raise ValueError(
            f"{a.checkpoint} was trained on category ids {ckpt_ids[:10]}..., but "
            f"{d['val']['ann_file']} has {list(dataset.cat_ids)[:10]}..."
        )
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"{a.checkpoint} predicts {model.num_classes} classes but {d['val']['ann_file']} "
            f"has {dataset.num_classes}"
        )
    out_dir = Path(a.out_dir) if a.out_dir else Path(a.checkpoint).resolve().parent
    _check_writable(out_dir)
    loader = build_dataloader(
        dataset, d["val"]["batch_size"], d["val"]["num_workers"], False, cfg["seed"],
        world_size(), rank(), d["size_divisor"],
    )  # fmt: skip
    metrics = evaluate(model, loader, device, out_dir)
    if rank() == 0:
        print(f"{format_metrics(metrics)}\nwrote {out_dir / 'metrics.json'}")
    return 0


def _cmd_infer(a: argparse.Namespace) -> int:
    import cv2

    from .data.coco import load_image
    from .engine.predictor import Predictor
    from .engine.visualize import (
        draw_detections,
        expand_inputs,
        prediction_record,
        write_predictions_json,
    )

    # `--set k=v img.jpg`: argparse gives the image to --set; move it back to the inputs.
    inputs = a.inputs + [s for s in a.set if "=" not in s]
    if not inputs:
        raise ValueError("infer: give at least one image file, folder or glob")
    cfg = load_config(a.config, [s for s in a.set if "=" in s])
    files = expand_inputs(inputs)
    out_dir = Path(a.out_dir)
    _check_writable(out_dir)
    predictor = Predictor(cfg, a.checkpoint, cfg["device"])
    records, used = [], set()
    for path in files:
        rgb = load_image(path)
        det = predictor([rgb])[0]
        records.append(
            prediction_record(path, rgb.shape, det, predictor.cat_ids, predictor.class_names,
                              a.score_thr)
        )  # fmt: skip
        drawn = draw_detections(
            rgb[:, :, ::-1], det["boxes"], det["scores"], det["labels"],
            predictor.class_names, a.score_thr,
        )  # fmt: skip
        name = path.stem
        while name in used:  # same file name in two folders
            name += "_"
        used.add(name)
        cv2.imwrite(str(out_dir / f"{name}.jpg"), drawn)
    write_predictions_json(records, out_dir / "predictions.json")
    n = sum(len(r["detections"]) for r in records)
    print(f"{len(files)} images, {n} detections (score >= {a.score_thr}) -> {out_dir}")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    from .data.synth import main as synth_main

    return synth_main([x for x in a.args if x != "--"])


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"output folder is not writable: {out_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gfldet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector")
    _add_config_args(p)
    p.add_argument("--work-dir", help="output folder (overrides work_dir)")
    p.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PTH",
        help="resume from PTH, or from WORK_DIR/latest.pth when no path is given",
    )  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="COCO bbox evaluation of a checkpoint on the val set")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out-dir", help="where metrics.json / detections.json go")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("infer", help="detect objects in images and draw them")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="*", help="image files, folders or glob patterns")
    p.add_argument("--out-dir", default="work_dirs/infer")
    p.add_argument("--score-thr", type=float, default=0.3)
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic shapes dataset", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["data", "synth"]:  # the generator owns its options (and its --help)
        argv = ["data", "synth", "--", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("gfldet: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, PermissionError, ValueError, FloatingPointError) as e:
        if os.environ.get("GFLDET_DEBUG"):
            raise
        print(f"gfldet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
