"""Command line: `gfldet train | eval | infer | export | convert-mmdet | curves | data
(synth | convert | check | stats)`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config

ARCH_KEYS = ("backbone", "neck", "head")  # the parts of a converted checkpoint's meta to print


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=24 data.train.batch_size=4",
    )  # fmt: skip


def _cmd_train(a: argparse.Namespace) -> int:
    from .training.trainer import train

    overrides = list(a.set) + ([f"work_dir={a.work_dir}"] if a.work_dir else [])
    cfg = load_config(a.config, overrides)
    train(cfg, resume=a.resume if a.resume is not None else False, overwrite=a.overwrite)
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from .core.dist import init_distributed, rank, shutdown, world_size
    from .core.runtime import resolve_device, setup_logging
    from .data.loader import build_dataloader, build_dataset
    from .evaluation.evaluator import evaluate, format_metrics
    from .inference.predictor import load_trained_model

    cfg = load_config(a.config, a.set)
    device = resolve_device(cfg.device)
    init_distributed(device)  # under torchrun every rank predicts a shard of the val set
    setup_logging()
    d = cfg.data
    model, state = load_trained_model(cfg, a.checkpoint, device, fast=True)
    # A VOC split's classes are the checkpoint's (its own may lack some).
    classes = d.classes or state.get("classes")
    dataset = build_dataset(d.val, False, d.skip_bad_images, classes)
    ckpt_ids = state.get("cat_ids")
    if ckpt_ids is not None and [int(c) for c in ckpt_ids] != list(dataset.cat_ids):
        raise ValueError(
            f"{a.checkpoint} was trained on category ids {ckpt_ids[:10]}..., but "
            f"{d.val.ann_file} has {list(dataset.cat_ids)[:10]}..."
        )
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"{a.checkpoint} predicts {model.num_classes} classes but {d.val.ann_file} "
            f"has {dataset.num_classes}"
        )
    out_dir = Path(a.out_dir) if a.out_dir else Path(a.checkpoint).resolve().parent
    _check_writable(out_dir)
    loader = build_dataloader(
        dataset, d.val.batch_size, d.val.num_workers, False, cfg.seed,
        world_size(), rank(), d.size_divisor,
    )  # fmt: skip
    metrics = evaluate(model, loader, device, out_dir)
    if rank() == 0:
        print(f"{format_metrics(metrics)}\nwrote {out_dir / 'metrics.json'}, per_class.csv, "
              "calibration.png and pr_curves_*.png")  # fmt: skip
    shutdown()
    return 0


def _cmd_infer(a: argparse.Namespace) -> int:
    from .inference.infer import expand_inputs, infer_images
    from .inference.predictor import Predictor
    from .inference.video import infer_video, split_inputs, video_output_path

    if not (math.isfinite(a.score_thr) and 0 <= a.score_thr <= 1):
        raise ValueError(f"--score-thr must be a number in [0, 1], got {a.score_thr}")
    if a.every < 1:
        raise ValueError(f"--every must be >= 1 (predict every N-th frame), got {a.every}")
    # `--set k=v img.jpg`: argparse gives the image to --set; move it back to the inputs.
    inputs = a.inputs + [s for s in a.set if "=" not in s]
    if not inputs:
        raise ValueError("infer: give at least one image file, folder, glob, video or image "
                         "sequence")  # fmt: skip
    cfg = load_config(a.config, [s for s in a.set if "=" in s])
    out_dir = Path(a.out_dir)
    videos, rest = split_inputs(inputs)
    files = expand_inputs(rest, exclude=out_dir) if rest else []
    _check_writable(out_dir)
    predictor = Predictor(cfg, a.checkpoint, cfg.device)
    box = predictor.model.head.box
    if a.show_uncertainty and not box.has_distributions:
        raise ValueError(
            f"--show-uncertainty needs edge distributions (model.head.box: general); "
            f"this model's box representation is {box.name!r}"
        )
    used: set[Path] = set()
    for src in videos:
        out = video_output_path(src, out_dir)
        while out in used:  # two inputs of the same name
            out = out.with_name(out.stem + "_" + out.suffix)
        used.add(out)
        v = infer_video(predictor, src, out, a.every, a.score_thr, a.show_uncertainty,
                        batch_size=a.batch_size)  # fmt: skip
        assumed = f" (the source gives none: {v['fps_in']:g} assumed)" if v["fps_assumed"] else ""
        print(f"{src}: {v['frames']} frames ({v['predicted']} predicted), {v['detections']} "
              f"detections, {v['fps_processed']:.1f} frames/s -> {v['video']}{assumed}, "
              f"{v['jsonl']}")  # fmt: skip
    if files:
        s = infer_images(predictor, files, out_dir, a.score_thr, a.show_uncertainty,
                         cfg.data.skip_bad_images)  # fmt: skip
        skipped = f", {s['skipped']} skipped as unreadable" if s["skipped"] else ""
        print(f"{s['images']} images{skipped}, {s['detections']} detections "
              f"(score >= {a.score_thr}) -> {out_dir}")  # fmt: skip
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    import torch

    from .inference.export import check_onnx, default_img_size, export_onnx, onnx_opset_range
    from .inference.predictor import load_trained_model

    lo, hi = onnx_opset_range()
    if not lo <= a.opset <= hi:
        raise ValueError(
            f"--opset {a.opset}: torch {torch.__version__} exports ONNX opsets {lo} to {hi}"
        )
    out_path = Path(a.out)
    if out_path.is_dir():
        raise IsADirectoryError(f"--out {out_path} is a folder: name the .onnx file to write")
    _check_writable(out_path.parent, "--out")
    cfg = load_config(a.config, a.set)
    model, _ = load_trained_model(cfg, a.checkpoint, torch.device("cpu"))
    img_size = tuple(a.img_size) if a.img_size else default_img_size(cfg)
    div = cfg.data.size_divisor
    if any(v <= 0 or v % div for v in img_size):
        raise ValueError(
            f"--img-size {img_size[0]} {img_size[1]}: height and width must be positive "
            f"multiples of data.size_divisor ({div}), the padding the model was trained with"
        )
    out = export_onnx(model, a.out, img_size, a.input_dtype, a.nms, a.opset)
    kind = "boxes, scores, labels after NMS" if a.nms else "boxes [1, A, 4], scores [1, A, C]"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): input images [1, 3, "
          f"{img_size[0]}, {img_size[1]}] {a.input_dtype} RGB; outputs {kind}")  # fmt: skip
    try:
        diffs = check_onnx(out, model, img_size, a.nms, a.input_dtype)
    except ImportError as e:
        print(f"not checked: {e}")
        return 0
    print("onnxruntime vs PyTorch, max |difference|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))  # fmt: skip
    return 0


def _cmd_convert_mmdet(a: argparse.Namespace) -> int:
    from .core.checkpoint import load_model_weights, save_checkpoint
    from .interop.mmdet import convert_mmdet

    if a.set and not a.config:
        raise ValueError("convert-mmdet: --set overrides a --config; give --config too")
    _check_writable(Path(a.output).resolve().parent, "OUTPUT")
    state = convert_mmdet(a.input, a.ann_file)
    meta = state["meta"]
    arch = ", ".join(f"{k} {v}" for k, v in meta.items() if k.split(".")[0] in ARCH_KEYS)
    print(
        f"{a.input}: {len(state['model'])} tensors, {len(state['classes'])} classes "
        f"({', '.join(state['classes'][:3])}, ...); {arch}, bin width {meta['bin_width']}"
    )
    if a.config:
        from .core.runtime import resolve_num_classes
        from .model.build import build_model

        cfg = load_config(a.config, a.set)
        cfg.model.backbone.pretrained = None  # every weight comes from the checkpoint
        resolve_num_classes(cfg, state["classes"], a.input)
        if cfg.model.head.bin_width != meta["bin_width"]:
            raise ValueError(
                f"{a.input} has bins of width {meta['bin_width']} but {a.config} sets "
                f"model.head.bin_width {cfg.model.head.bin_width}"
            )
        load_model_weights(build_model(cfg.model), state, a.output)  # strict: names and shapes
        print(f"loads into {a.config} with no missing or unexpected keys")
    save_checkpoint(state, a.output)
    print(f"wrote {a.output}")
    return 0


def _cmd_curves(a: argparse.Namespace) -> int:
    from .training.curves import write_training_curves

    print(f"wrote {write_training_curves(a.work_dir)}")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    from .data.synth import main as synth_main

    return synth_main([x for x in a.args if x != "--"])


def _cmd_convert(a: argparse.Namespace) -> int:
    from .core.files import write_json_atomic
    from .data.loader import read_annotations
    from .data.voc import write_voc
    from .data.yolo import write_yolo

    if a.src_format == a.dst_format:
        raise ValueError(f"--from and --to are both {a.src_format}: nothing to convert")
    if a.classes and a.src_format != "voc":
        raise ValueError("--classes names a VOC dataset's classes (--from voc)")
    if a.src_format == "coco":
        from .data.coco import read_coco_json

        data = read_coco_json(Path(a.src))
    else:
        if a.src_format == "yolo" and not a.img_dir:
            raise ValueError("--from yolo needs --img-dir, the split's images folder")
        img_dir = a.img_dir or Path(a.src).resolve().parents[2]
        data = read_annotations(a.src_format, a.src, img_dir, a.classes)
    out = Path(a.out)
    if out.resolve() == Path(a.src).resolve():
        raise ValueError(f"OUT {out} is the input {a.src}: refusing to overwrite it")
    if a.dst_format == "coco":
        _check_writable(out.resolve().parent, "OUT")
        write_json_atomic(data, out)
    else:
        if not a.img_dir:
            raise ValueError(f"--to {a.dst_format} needs --img-dir, where the images are")
        write = write_voc if a.dst_format == "voc" else write_yolo
        out = write(data, a.img_dir, out, a.split, source=a.src)
    print(f"{a.src} ({a.src_format}): {len(data['images'])} images, "
          f"{len(data['annotations'])} annotations, {len(data['categories'])} classes -> "
          f"{out} ({a.dst_format})")  # fmt: skip
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    from .data.check import check_data, format_check

    report = check_data(load_config(a.config, a.set), not a.no_images, a.workers)
    print(format_check(report))
    return 0 if report["ok"] else 1


def _cmd_stats(a: argparse.Namespace) -> int:
    from .data.stats import dataset_statistics, format_statistics

    if a.max_images is not None and a.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {a.max_images}")
    out = Path(a.out) if a.out else None
    if out is not None:
        _check_writable(out, "--out")
    stats = dataset_statistics(load_config(a.config, a.set), out, a.max_images)
    print(format_statistics(stats))
    if out is not None:
        print(f"wrote {out / 'data_stats.json'} and the plots in {out}")
    return 0


def _check_writable(out_dir: Path, option: str = "--out-dir") -> None:
    """Creates `out_dir` (the folder of `option`'s output) or raises a one-line error."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f"{option}: cannot create output folder {out_dir}: {e.strerror}"
        ) from None
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"{option}: output folder is not writable: {out_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gfldet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gfldet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector")
    _add_config_args(p)
    p.add_argument("--work-dir", help="output folder (overrides work_dir)")
    p.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PTH",
        help="resume from PTH, or from WORK_DIR/latest.pth when no path is given",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in a work dir that holds one: its files are moved to "
        "WORK_DIR/previous/<time>/ first (without it, such a work dir is refused)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="COCO bbox evaluation of a checkpoint on the val set")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--out-dir",
        help="where metrics.json, detections.json, per_class.csv and the plots go "
        "(default: the checkpoint's folder)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("infer", help="detect objects in images or videos and draw them")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "inputs", nargs="*",
        help="image files, folders or glob patterns; video files (.mp4 .avi .mov .mkv ...) and "
        "image sequences ('frames/%%06d.jpg')",
    )  # fmt: skip
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="videos: predict every N-th frame (the others show the last boxes)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="videos: frames per forward pass")
    p.add_argument("--out-dir", default="work_dirs/infer")
    p.add_argument("--score-thr", type=float, default=0.3)
    p.add_argument(
        "--show-uncertainty", action="store_true",
        help="shade a band of +-std across each box edge (the spread of its edge distribution)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, with box decoding")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--img-size", type=int, nargs=2, metavar=("H", "W"),
        help="fixed input size (default: the config's test scale, landscape, padded)",
    )  # fmt: skip
    p.add_argument(
        "--input-dtype", choices=["uint8", "float32"], default="uint8",
        help="input images: uint8 or float32 RGB pixel values 0..255 (normalised in the graph)",
    )  # fmt: skip
    p.add_argument(
        "--nms", action="store_true",
        help="include score threshold + class-wise NMS (outputs boxes [K, 4], scores [K], "
        "labels [K]) instead of boxes [1, A, 4] + scores [1, A, C] for every location",
    )  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 11 with --nms)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "convert-mmdet", help="convert an MMDetection v2 / official GFL checkpoint to gfldet's"
    )
    p.add_argument("input", help="MMDetection checkpoint (.pth), e.g. gfl_r50_fpn_1x_coco_*.pth")
    p.add_argument("output", help="gfldet checkpoint to write")
    p.add_argument(
        "--ann-file",
        help="COCO-format annotation file the model was trained with (needed unless its "
        "classes are COCO's 80): matches its class order and category ids",
    )  # fmt: skip
    p.add_argument("--config", help="check that the result loads strictly into this config")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for --config")  # fmt: skip
    p.set_defaults(func=_cmd_convert_mmdet)

    p = sub.add_parser("curves", help="plot WORK_DIR/log.jsonl into WORK_DIR/curves.png")
    p.add_argument("work_dir")
    p.set_defaults(func=_cmd_curves)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic shapes dataset", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_synth)

    s = dsub.add_parser("convert", help="convert annotations between COCO, VOC and YOLO")
    s.add_argument("--from", dest="src_format", required=True, choices=("coco", "voc", "yolo"))
    s.add_argument("--to", dest="dst_format", required=True, choices=("coco", "voc", "yolo"))
    s.add_argument(
        "src", help="what data.*.ann_file takes: a COCO json, a VOC ImageSets list or a YOLO "
        "data.yaml",
    )  # fmt: skip
    s.add_argument("out", help="--to coco: the json file to write; voc, yolo: a folder")
    s.add_argument(
        "--img-dir",
        help="the images: YOLO's split folder, the VOC root (default: the list file's "
        "../../), COCO's image folder (needed --to voc / yolo)",
    )  # fmt: skip
    s.add_argument("--classes", nargs="+", help="--from voc: the class names in label order")
    s.add_argument("--split", default="train", help="--to voc / yolo: the split's name")
    s.set_defaults(func=_cmd_convert)

    s = dsub.add_parser("check", help="run every check training and evaluation make, now")
    _add_config_args(s)
    s.add_argument("--no-images", action="store_true", help="skip decoding every image")
    s.add_argument("--workers", type=int, default=2, help="threads decoding images")
    s.set_defaults(func=_cmd_check)

    s = dsub.add_parser("stats", help="classes, box sizes, pyramid levels and reg_max fit")
    _add_config_args(s)
    s.add_argument("--out", help="folder for data_stats.json and the plots")
    s.add_argument("--max-images", type=int, help="look at a seeded sample of N images")
    s.set_defaults(func=_cmd_stats)
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
    # Expected failures (bad input, files, permissions, disk full, a NaN loss) get one line;
    # GFLDET_DEBUG=1 shows the traceback. Anything else is a bug and keeps its traceback.
    except (ConfigError, OSError, ValueError, FloatingPointError, ImportError) as e:
        if os.environ.get("GFLDET_DEBUG"):
            raise
        print(f"gfldet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
