"""Command line: `gfldet train | eval | infer | export | benchmark | convert-mmdet | curves |
data (synth | convert | check | stats | show) | config (schema | list)`. Each command parses its
arguments and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import Config, ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        required=required,
        help="YAML config file, or the name of a shipped config (`gfldet config list`)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=24 data.train.batch_size=4",
    )
    _add_custom_modules_arg(p)


# `train --data` presets (gfldet.presets.PRESETS; named here so that --help needs no import).
MODELS = ("lite", "demo", "r50", "gflv2-r50")
DEFAULT_MODEL = "lite"
# `infer --runtime` (gfldet.inference.runtimes.RUNTIMES, which imports torch).
RUNTIMES = ("auto", "torch", "torch-bf16", "onnxruntime", "openvino")


def _add_custom_modules_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-custom-modules",
        metavar="MODULES",
        help="let the config build `module:Class` parts from these modules (comma-separated "
        "prefixes, or '*'); a config alone never imports code outside gfldet and torchvision "
        "(sets GFLDET_ALLOW_CUSTOM_MODULES)",
    )


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """--config CFG or --data PATH (the `train --data` preset's config for that dataset)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML config file, or a shipped config's name")
    src.add_argument(
        "--data", metavar="PATH", help="a dataset instead: YOLO data.yaml, VOC root or COCO folder"
    )
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override keys")
    _add_custom_modules_arg(p)


def _source_config(a: argparse.Namespace) -> Config:
    """The config of --config, or of --data through the default preset."""
    if a.data:
        from .presets import config_from_data

        return config_from_data(a.data, a.set)
    return load_config(a.config, a.set)


def _cmd_train(a: argparse.Namespace) -> int:
    from .training.trainer import train

    if bool(a.config) == bool(a.data):
        raise ValueError(
            "train: give --config CFG, or --data PATH to train on a dataset with a "
            "preset (not both)"
        )
    overrides = list(a.set) + ([f"work_dir={a.work_dir}"] if a.work_dir else [])
    if a.data:
        from .presets import config_for_data

        if a.resume is not None and not a.work_dir:
            raise ValueError(
                "--resume with --data needs the run's --work-dir (or resume with `gfldet train "
                "--config WORK_DIR/config.yaml --resume`)"
            )
        cfg = config_for_data(
            a.data,
            a.model,
            epochs=a.epochs,
            img_size=a.img_size,
            batch_size=a.batch_size,
            overrides=overrides,
        )
        print(
            f"train --data {a.data} --model {a.model}: work dir {cfg.work_dir} (its "
            "config.yaml is this run's config)"
        )
    else:
        quick = [
            f
            for f, v in (
                ("--model", a.model != DEFAULT_MODEL),
                ("--epochs", a.epochs),
                ("--img-size", a.img_size),
                ("--batch-size", a.batch_size),
            )
            if v
        ]
        if quick:
            raise ValueError(
                f"{', '.join(quick)} go with --data; with --config set the keys instead, e.g. "
                "--set train.epochs=24 data.train.batch_size=4"
            )
        cfg = load_config(a.config, overrides)
    # A teacher named by its config file (distill.teacher_config): the config layer reads it.
    teacher = cfg.distill.teacher_config
    train(
        cfg,
        resume=a.resume if a.resume is not None else False,
        overwrite=a.overwrite,
        teacher_model=load_config(teacher).model if teacher else None,
    )
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation.run import evaluate_checkpoint

    evaluate_checkpoint(load_config(a.config, a.set), a.checkpoint, a.out_dir)
    return 0


def _cmd_infer(a: argparse.Namespace) -> int:
    from .inference.run import run_inference

    # `--set k=v img.jpg`: argparse gives the image to --set; move it back to the inputs.
    inputs = a.inputs + [s for s in a.set if "=" not in s]
    overrides = [s for s in a.set if "=" in s]
    if overrides and not a.config:
        raise ValueError("infer: --set overrides a --config; an --onnx file takes none")
    run_inference(
        load_config(a.config, overrides) if a.config else None,
        a.checkpoint,
        inputs,
        a.out_dir,
        every=a.every,
        batch_size=a.batch_size,
        score_thr=a.score_thr,
        show_uncertainty=a.show_uncertainty,
        overwrite=a.overwrite,
        onnx=a.onnx,
        runtime=a.runtime,
        threads=a.threads,
    )
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .inference.export import export_checkpoint

    cfg = load_config(a.config, a.set)
    export_checkpoint(
        cfg,
        a.checkpoint,
        a.out,
        img_size=a.img_size,
        input_dtype=a.input_dtype,
        nms=a.nms,
        opset=a.opset,
        inputs=[a.config],
        int8=a.int8,
        calib=a.calib,
        calib_num=a.calib_num,
    )
    return 0


def _cmd_benchmark(a: argparse.Namespace) -> int:
    from .inference.benchmark import benchmark_checkpoint

    benchmark_checkpoint(
        load_config(a.config, a.set),
        a.checkpoint,
        quick=a.quick,
        img_size=a.img_size,
        threads=a.threads,
        calib=a.calib,
        out=a.out,
    )
    return 0


def _cmd_convert_mmdet(a: argparse.Namespace) -> int:
    from .interop.mmdet import convert_mmdet_file

    if a.set and not a.config:
        raise ValueError("convert-mmdet: --set overrides a --config; give --config too")
    model = load_config(a.config, a.set).model if a.config else None
    print(convert_mmdet_file(a.input, a.output, a.ann_file, model, a.config))
    return 0


def _cmd_curves(a: argparse.Namespace) -> int:
    from .training.curves import write_training_curves

    print(f"wrote {write_training_curves(a.work_dir)}")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    from .data.synth import main as synth_main

    return synth_main([x for x in a.args if x != "--"])


def _cmd_convert(a: argparse.Namespace) -> int:
    from .data.convert import convert_annotations

    args = (a.src_format, a.dst_format, a.src, a.out, a.img_dir, a.classes, a.split, a.prefix)
    print(convert_annotations(*args))
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    from .data.check import check_data, format_check

    report = check_data(_source_config(a), not a.no_images, a.workers)
    print(format_check(report))
    return 0 if report["ok"] else 1


def _cmd_stats(a: argparse.Namespace) -> int:
    from .data.stats import data_stats

    print(data_stats(_source_config(a), a.out, a.max_images))
    return 0


def _cmd_show(a: argparse.Namespace) -> int:
    from .data.show import show_ground_truth

    files = show_ground_truth(_source_config(a), a.split, a.num, a.out, a.seed, a.augmented)
    print(f"drew the ground truth of {len(files)} {a.split} images -> {a.out}")
    return 0


def _cmd_config_schema(a: argparse.Namespace) -> int:
    from .config_schema import json_schema_text, write_json_schema

    if a.out:
        print(f"wrote {write_json_schema(a.out)}")
    else:
        sys.stdout.write(json_schema_text())
    return 0


def _cmd_config_list(a: argparse.Namespace) -> int:
    from .config import shipped_config_list

    print(shipped_config_list())
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector (from a config, or a dataset with --data)")
    _add_config_args(p, required=False)
    p.add_argument(
        "--data",
        metavar="PATH",
        help="train on this dataset with a preset instead of --config: a YOLO data.yaml, a VOC "
        "root or a COCO folder (docs/your_data.md)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|CONFIG",
        help=f"with --data: a preset ({', '.join(MODELS)}; default {DEFAULT_MODEL}) or a config "
        "file whose model and recipe to use",
    )
    p.add_argument("--epochs", type=int, help="with --data: epochs (the schedule follows)")
    p.add_argument("--img-size", type=int, help="with --data: train and val at S x S pixels")
    p.add_argument("--batch-size", type=int, help="with --data: images per batch and process")
    p.add_argument("--work-dir", help="output folder (overrides work_dir)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="PTH",
        help="resume from PTH, or from WORK_DIR/latest.pth when no path is given",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a work dir that holds one: its files are moved to "
        "WORK_DIR/previous/<time>/ first (without it, such a work dir is refused)",
    )
    p.set_defaults(func=_cmd_train)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO bbox evaluation of a checkpoint on the val set")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--out-dir",
        help="where metrics.json, detections.json, per_class.csv and the plots go "
        "(default: the checkpoint's folder)",
    )
    p.set_defaults(func=_cmd_eval)


def _infer_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="detect objects in images or videos and draw them")
    _add_config_args(p, required=False)
    p.add_argument("--checkpoint", help="the trained model (with --config)")
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="run a file of `gfldet export` instead of --config/--checkpoint: its metadata "
        "holds the classes, resize and post-processing",
    )
    p.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="what runs the model (default auto: the fastest available, printed; docs/deploy.md)",
    )
    p.add_argument(
        "--threads", type=int, help="threads of the ONNX runtimes (default: the runtime's own)"
    )
    p.add_argument(
        "inputs",
        nargs="*",
        help="image files, folders or glob patterns; video files (.mp4 .avi .mov .mkv ...) and "
        "image sequences ('frames/%%06d.jpg', from number 0 or 1 to the highest present; "
        "numbers missing in between are named in a warning and skipped)",
    )
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="videos: predict every N-th frame (the others show the last boxes)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="videos: frames per forward pass")
    p.add_argument(
        "--out-dir",
        default="work_dirs/infer",
        help="where the drawn images, predictions.json, <video>.mp4 and "
        "<video>.predictions.jsonl go (default: %(default)s); inputs there are refused or "
        "left out",
    )
    p.add_argument(
        "--score-thr",
        type=float,
        default=None,
        help="draw and record detections scoring at least this (default: the drawing "
        "threshold, gfldet.core.draw.DRAW_SCORE_THR)",
    )
    p.add_argument(
        "--show-uncertainty",
        action="store_true",
        help="shade a band of +-std across each box edge (the spread of its edge distribution)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="also replace files in --out-dir that infer did not write (without it, they are "
        "refused before any work; infer's own unchanged outputs, listed in "
        "OUT_DIR/.gfldet-infer.json, are replaced either way)",
    )
    p.set_defaults(func=_cmd_infer)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, with box decoding")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="fixed input size (default: the config's test scale, landscape, padded)",
    )
    p.add_argument(
        "--input-dtype",
        choices=["uint8", "float32"],
        default="uint8",
        help="input images: uint8 or float32 RGB pixel values 0..255 (normalised in the graph)",
    )
    p.add_argument(
        "--nms",
        action="store_true",
        help="include score threshold + class-wise NMS (outputs boxes [K, 4], scores [K], "
        "labels [K]) instead of boxes [1, A, 4] + scores [1, A, C] for every location",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 11 with --nms)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="write an int8 model (onnxruntime static quantization, QDQ, per-channel), "
        "calibrated on images of the config's val split",
    )
    p.add_argument("--calib", metavar="DIR", help="--int8: calibrate on the images in DIR")
    p.add_argument(
        "--calib-num", type=int, metavar="N", help="--int8: calibration images (default 32)"
    )
    p.set_defaults(func=_cmd_export)


def _benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark", help="latency, throughput and memory of a checkpoint in every runtime here"
    )
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
    p.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (default: the export default, the config's test scale padded)",
    )
    p.add_argument("--threads", type=int, help="threads of every runtime (default: torch's)")
    p.add_argument("--calib", metavar="DIR", help="int8 calibration images (default: data.val)")
    p.add_argument("--out", help="also write the results to this .json file")
    p.set_defaults(func=_cmd_benchmark)


def _convert_mmdet_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-mmdet", help="convert an MMDetection v2 / official GFL checkpoint to gfldet's"
    )
    p.add_argument("input", help="MMDetection checkpoint (.pth), e.g. gfl_r50_fpn_1x_coco_*.pth")
    p.add_argument("output", help="gfldet checkpoint to write")
    p.add_argument(
        "--ann-file",
        help="COCO-format annotation file the model was trained with (needed unless its "
        "classes are COCO's 80): matches its class order and category ids",
    )
    p.add_argument("--config", help="check that the result loads strictly into this config")
    p.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for --config"
    )
    p.set_defaults(func=_cmd_convert_mmdet)


def _curves_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curves", help="plot WORK_DIR/log.jsonl into WORK_DIR/curves.png")
    p.add_argument("work_dir")
    p.set_defaults(func=_cmd_curves)


def _data_parser(sub: argparse._SubParsersAction) -> None:
    dsub = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True
    )
    s = dsub.add_parser("synth", help="write the synthetic shapes dataset", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_synth)

    s = dsub.add_parser("convert", help="convert annotations between COCO, VOC and YOLO")
    s.add_argument("--from", dest="src_format", required=True, choices=("coco", "voc", "yolo"))
    s.add_argument("--to", dest="dst_format", required=True, choices=("coco", "voc", "yolo"))
    s.add_argument(
        "src",
        help="what data.*.ann_file takes: a COCO json, a VOC ImageSets list or a YOLO data.yaml",
    )
    s.add_argument("out", help="--to coco: the json file to write; voc, yolo: a folder")
    s.add_argument(
        "--img-dir",
        help="the images: YOLO's split folder, .txt list or data.yaml split name (default: "
        "--split), the VOC root (default: the list file's ../../), COCO's image folder "
        "(needed --to voc / yolo)",
    )
    s.add_argument("--classes", nargs="+", help="--from voc: the class names in label order")
    s.add_argument(
        "--split",
        default="train",
        help="--to voc / yolo: the split's name; --from yolo: the data.yaml split read when "
        "--img-dir is not given",
    )
    s.add_argument(
        "--prefix",
        default="",
        help="--to voc: put before this split's image ids and file names (e.g. val_), so that "
        "splits whose images share names can share one VOC root",
    )
    s.set_defaults(func=_cmd_convert)

    s = dsub.add_parser("check", help="run every check training and evaluation make, now")
    _add_source_args(s)
    s.add_argument("--no-images", action="store_true", help="skip decoding every image")
    s.add_argument("--workers", type=int, default=2, help="threads decoding images")
    s.set_defaults(func=_cmd_check)

    s = dsub.add_parser("stats", help="classes, box sizes, pyramid levels and reg_max fit")
    _add_source_args(s)
    s.add_argument(
        "--out", help="folder for data_stats.json and the plots (outside the image folders)"
    )
    s.add_argument("--max-images", type=int, help="look at a seeded sample of N images")
    s.set_defaults(func=_cmd_stats)

    s = dsub.add_parser("show", help="draw the ground truth of N images of a split")
    _add_source_args(s)
    s.add_argument("--split", choices=("train", "val"), default="train")
    s.add_argument("--num", type=int, default=16, help="how many images (default 16)")
    s.add_argument("--out", required=True, help="folder for the drawings (not in a split)")
    s.add_argument("--seed", type=int, default=0, help="which images: a seeded random choice")
    s.add_argument(
        "--augmented",
        action="store_true",
        help="draw the training pipeline's output (what the model is fed) instead of the "
        "images as they are",
    )
    s.set_defaults(func=_cmd_show)


def _config_parser(sub: argparse._SubParsersAction) -> None:
    csub = sub.add_parser(
        "config", help="config tools: the JSON Schema, the shipped configs"
    ).add_subparsers(dest="config_command", required=True)
    s = csub.add_parser(
        "schema", help="the JSON Schema of a config file, for editors (docs/configs.md)"
    )
    s.add_argument("--out", help="write it to this .json file (default: print it)")
    s.set_defaults(func=_cmd_config_schema)
    s = csub.add_parser("list", help="the shipped configs, by the name --config and _base_ take")
    s.set_defaults(func=_cmd_config_list)


# One builder per command, in the order of `gfldet --help`.
COMMANDS = (
    _train_parser,
    _eval_parser,
    _infer_parser,
    _export_parser,
    _benchmark_parser,
    _convert_mmdet_parser,
    _curves_parser,
    _data_parser,
    _config_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gfldet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gfldet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["data", "synth"]:  # the generator owns its options (and its --help)
        argv = ["data", "synth", "--", *argv[2:]]
    args = build_parser().parse_args(argv)
    if getattr(args, "allow_custom_modules", None):
        os.environ["GFLDET_ALLOW_CUSTOM_MODULES"] = args.allow_custom_modules
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
