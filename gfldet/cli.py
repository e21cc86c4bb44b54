"""Command line: `gfldet train | eval | infer | export | convert-mmdet | curves | data
(synth | convert | check | stats)`."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=24 data.train.batch_size=4",
    )  # fmt: skip
    p.add_argument(
        "--allow-custom-modules", metavar="MODULES",
        help="let the config build `module:Class` parts from these modules (comma-separated "
        "prefixes, or '*'); a config alone never imports code outside gfldet and torchvision "
        "(sets GFLDET_ALLOW_CUSTOM_MODULES)",
    )  # fmt: skip


def _cmd_train(a: argparse.Namespace) -> int:
    from .training.trainer import train

    overrides = list(a.set) + ([f"work_dir={a.work_dir}"] if a.work_dir else [])
    cfg = load_config(a.config, overrides)
    train(cfg, resume=a.resume if a.resume is not None else False, overwrite=a.overwrite)
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation.run import evaluate_checkpoint

    evaluate_checkpoint(load_config(a.config, a.set), a.checkpoint, a.out_dir)
    return 0


def _cmd_infer(a: argparse.Namespace) -> int:
    from .inference.run import run_inference

    # `--set k=v img.jpg`: argparse gives the image to --set; move it back to the inputs.
    inputs = a.inputs + [s for s in a.set if "=" not in s]
    cfg = load_config(a.config, [s for s in a.set if "=" in s])
    run_inference(
        cfg,
        a.checkpoint,
        inputs,
        a.out_dir,
        every=a.every,
        batch_size=a.batch_size,
        score_thr=a.score_thr,
        show_uncertainty=a.show_uncertainty,
        overwrite=a.overwrite,
    )
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .inference.export import export_checkpoint

    cfg = load_config(a.config, a.set)
    export_checkpoint(
        cfg, a.checkpoint, a.out, img_size=a.img_size, input_dtype=a.input_dtype, nms=a.nms,
        opset=a.opset, inputs=[a.config],
    )  # fmt: skip
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

    report = check_data(load_config(a.config, a.set), not a.no_images, a.workers)
    print(format_check(report))
    return 0 if report["ok"] else 1


def _cmd_stats(a: argparse.Namespace) -> int:
    from .data.stats import data_stats

    print(data_stats(load_config(a.config, a.set), a.out, a.max_images))
    return 0


def _cmd_show(a: argparse.Namespace) -> int:
    from .data.show import show_ground_truth

    if a.data:
        from .config import config_from_data  # the config composed from a dataset path

        cfg = config_from_data(a.data, a.set)
    else:
        cfg = load_config(a.config, a.set)
    files = show_ground_truth(cfg, a.split, a.num, a.out, a.seed, a.augmented)
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
        "image sequences ('frames/%%06d.jpg', from number 0 or 1 to the highest present; "
        "numbers missing in between are named in a warning and skipped)",
    )  # fmt: skip
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="videos: predict every N-th frame (the others show the last boxes)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="videos: frames per forward pass")
    p.add_argument(
        "--out-dir", default="work_dirs/infer",
        help="where the drawn images, predictions.json, <video>.mp4 and "
        "<video>.predictions.jsonl go (default: %(default)s); inputs there are refused or "
        "left out",
    )  # fmt: skip
    p.add_argument(
        "--score-thr", type=float, default=None,
        help="draw and record detections scoring at least this (default: the drawing "
        "threshold, gfldet.core.draw.DRAW_SCORE_THR)",
    )  # fmt: skip
    p.add_argument(
        "--show-uncertainty", action="store_true",
        help="shade a band of +-std across each box edge (the spread of its edge distribution)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="also replace files in --out-dir that infer did not write (without it, they are "
        "refused before any work; infer's own unchanged outputs, listed in "
        "OUT_DIR/.gfldet-infer.json, are replaced either way)",
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
        help="the images: YOLO's split folder, .txt list or data.yaml split name (default: "
        "--split), the VOC root (default: the list file's ../../), COCO's image folder "
        "(needed --to voc / yolo)",
    )  # fmt: skip
    s.add_argument("--classes", nargs="+", help="--from voc: the class names in label order")
    s.add_argument(
        "--split", default="train",
        help="--to voc / yolo: the split's name; --from yolo: the data.yaml split read when "
        "--img-dir is not given",
    )  # fmt: skip
    s.add_argument(
        "--prefix", default="",
        help="--to voc: put before this split's image ids and file names (e.g. val_), so that "
        "splits whose images share names can share one VOC root",
    )  # fmt: skip
    s.set_defaults(func=_cmd_convert)

    s = dsub.add_parser("check", help="run every check training and evaluation make, now")
    _add_config_args(s)
    s.add_argument("--no-images", action="store_true", help="skip decoding every image")
    s.add_argument("--workers", type=int, default=2, help="threads decoding images")
    s.set_defaults(func=_cmd_check)

    s = dsub.add_parser("stats", help="classes, box sizes, pyramid levels and reg_max fit")
    _add_config_args(s)
    s.add_argument(
        "--out", help="folder for data_stats.json and the plots (outside the image folders)"
    )
    s.add_argument("--max-images", type=int, help="look at a seeded sample of N images")
    s.set_defaults(func=_cmd_stats)

    s = dsub.add_parser("show", help="draw the ground truth of N images of a split")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML config file")
    src.add_argument("--data", help="a dataset: YOLO data.yaml, VOC root or COCO folder")
    s.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override keys")
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

    p = sub.add_parser("config", help="config tools: the JSON Schema, the shipped configs")
    csub = p.add_subparsers(dest="config_command", required=True)
    s = csub.add_parser(
        "schema", help="the JSON Schema of a config file, for editors (docs/configs.md)"
    )
    s.add_argument("--out", help="write it to this .json file (default: print it)")
    s.set_defaults(func=_cmd_config_schema)
    s = csub.add_parser("list", help="the shipped configs, by the name --config and _base_ take")
    s.set_defaults(func=_cmd_config_list)
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
