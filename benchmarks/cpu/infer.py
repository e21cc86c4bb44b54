"""infer: latency, batch 1, at Sizes.infer_hw: gfldet's R-50 GFL (prepared by
gfldet.model.fuse.prepare_for_inference) vs torchvision's FCOS and RetinaNet, each with its own
pre- and post-processing; gfldet's post-processing share, with random weights and with scores
arranged so that a few thousand (box, class) pairs pass the score threshold, as a trained
model's do."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from gfldet.config import load_config
from gfldet.model.fuse import prepare_for_inference

from ..models import (
    RECIPE,
    RECIPE_V2,
    build_fcos,
    build_gfl_r50,
    build_retinanet,
    count_candidates,
    input_size_check,
    layout,
    loaded_copy,
)
from ..timing import measure, median, time_calls
from . import Settings


def run(s: Settings, out: dict[str, Any]) -> None:
    h, w = s.sizes.infer_hw
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)
    img_cl = img.contiguous(memory_format=torch.channels_last)
    targets = [{"img_size": (h, w), "scale_factor": (1.0, 1.0)}]
    peer_in = [img[0].float() / 255]  # torchvision's API: float 0..1 [3, H, W]

    gfl = build_gfl_r50().eval()
    test_cfg = load_config(RECIPE, ["model.num_classes=80"]).model.test
    fast = prepare_for_inference(gfl)
    loaded = loaded_copy(fast, img_cl, targets, test_cfg)
    candidates = count_candidates(loaded, img_cl, targets, test_cfg)
    fast_v2 = prepare_for_inference(build_gfl_r50(RECIPE_V2).eval())
    post_random = time_calls(fast, "postprocess")
    post_loaded = time_calls(loaded, "postprocess")
    fcos = build_fcos((h, w)).eval()
    fcos_cl = copy.deepcopy(fcos).to(memory_format=torch.channels_last)
    retina = build_retinanet((h, w)).eval()

    fns = {
        "gfldet": lambda: fast.predict(img_cl, targets),
        "gfldet_loaded": lambda: loaded.predict(img_cl, targets),
        "gfldet_unprepared": lambda: gfl.predict(img, targets),
        "gfldet_v2": lambda: fast_v2.predict(img_cl, targets),
        "fcos": lambda: fcos(peer_in),
        "fcos_channels_last": lambda: fcos_cl(peer_in),
        "retinanet": lambda: retina(peer_in),
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        for model, name in ((fcos, "fcos"), (fcos_cl, "fcos"), (retina, "retinanet")):
            stack.enter_context(input_size_check(model, (1, 3, h, w), name))
        times = measure(fns, s.repeats, s.warmup)
        detections = len(loaded.predict(img_cl, targets)[0]["scores"])
    times["postprocess_random"] = post_random[s.warmup : s.warmup + s.repeats]
    times["postprocess_loaded"] = post_loaded[s.warmup : s.warmup + s.repeats]
    m = {k: median(v) for k, v in times.items()}
    out["times"]["infer"] = times
    out["medians"]["infer"] = m
    out["infer_ratio_fcos"] = m["gfldet"] / m["fcos"]
    out["infer_ratio_retinanet"] = m["gfldet"] / m["retinanet"]
    out["infer_ratio_gflv2_gfl"] = m["gfldet_v2"] / m["gfldet"]
    out["infer_ratio_fcos_channels_last"] = m["gfldet"] / m["fcos_channels_last"]
    out["infer_ratio_unprepared_fcos"] = m["gfldet_unprepared"] / m["fcos"]
    out["postprocess_share"] = m["postprocess_loaded"] / m["gfldet_loaded"]
    out["postprocess_share_random"] = m["postprocess_random"] / m["gfldet"]
    out["postprocess_candidates"] = candidates
    out["postprocess_detections"] = detections
    out["infer_gfldet_unprepared_layout"] = layout(gfl)


def report(out: dict[str, Any]) -> list[str]:
    h, w = out["settings"]["sizes"]["infer_hw"]
    m = out["medians"]["infer"]
    built = out["infer_gfldet_unprepared_layout"]
    return [
        f"\ninference, batch 1, {h}x{w}, pre- and post-processing included (s):",
        f"  gfldet R-50 GFL, prepare_for_inference (BN folded, channels_last) {m['gfldet']:8.3f}",
        f"  gfldet R-50 GFL, as built ({built}){' ' * (38 - len(built))}"
        f"{m['gfldet_unprepared']:8.3f}",
        f"  gfldet R-50 GFLv2 (DGQP), prepared                               {m['gfldet_v2']:8.3f}",
        f"  torchvision FCOS R-50                                            {m['fcos']:8.3f}",
        f"  torchvision FCOS R-50, weights channels_last                     "
        f"{m['fcos_channels_last']:8.3f}",
        f"  torchvision RetinaNet R-50                                       {m['retinanet']:8.3f}",
        f"  gfldet post-processing, random weights: {m['postprocess_random'] * 1e3:.1f} ms "
        f"({100 * out['postprocess_share_random']:.2f} %); loaded "
        f"({out['postprocess_candidates']} pairs over the threshold, "
        f"{out['postprocess_detections']} kept): {m['postprocess_loaded'] * 1e3:.1f} ms of "
        f"{m['gfldet_loaded']:.3f} s ({100 * out['postprocess_share']:.2f} %)",
    ]
