"""Fine-tuning: start a new run from a trained detector's weights (`model.init_from`).

A checkpoint trained on other classes (e.g. COCO's 80) initialises a freshly built model for
the classes of a new dataset. Every tensor whose name and shape fit is copied; the class conv
`head.gfl_cls` is copied whole only when the class lists are identical, and otherwise keeps its
fresh initialisation except for the rows of classes found by name in the checkpoint's list.
`init_from_checkpoint` returns a report of what happened and `format_report` turns it into the
lines the trainer logs, so that the start of a fine-tuning run can be checked at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checkpoint import load_checkpoint, rename_legacy_keys
from ..interop.mmdet import (
    COCO_CLASSES,
    checked_bin_width,
    describe,
    load_mmdet_checkpoint,
    rename_keys,
)

CLS_WEIGHT = "head.gfl_cls.weight"  # [C, F, 3, 3]: one row of F x 3 x 3 weights per class
CLS_BIAS = "head.gfl_cls.bias"  # [C]
CLS_KEYS = (CLS_WEIGHT, CLS_BIAS)
_SHOW = 3  # names listed per category in format_report
# The rule that tells a checkpoint of this architecture (fine-tuning) from one of another (a
# mistake): at least this fraction of the model's weight tensors of more than one number, the
# class conv aside, must load. One-number tensors (head.scales.*, BatchNorm counters) have the
# same shape in every architecture, and the class conv is matched by class names. A detector
# with another head still loads (backbone and neck are most of its tensors); one whose
# backbone differs does not.
MIN_FIT = 0.5
PARTS = ("backbone", "neck", "head")


def init_from_checkpoint(
    model: nn.Module, path: str | Path, class_names: list[str]
) -> dict[str, Any]:
    """Loads the weights of the checkpoint `path` that fit into `model`, in place.

    model: a freshly built GFL (as `build_model` returns it, not DDP-wrapped), whose classes are
        `class_names` in label order (label k = class_names[k]).
    path: a gfldet checkpoint (its EMA weights "ema" when it has them, else "model"; a bare
        state dict works too; gfldet 0.1's `fpn.` names are read as `neck.`) or an MMDetection /
        official GFL checkpoint (converted as `gfldet convert-mmdet` does).

    Every model tensor (parameters and buffers, e.g. BatchNorm statistics) whose name and shape
    match a checkpoint tensor is copied. The class conv `head.gfl_cls` (weight [C, F, 3, 3],
    bias [C]) is copied whole when the checkpoint's class list equals `class_names`. Otherwise
    it keeps the model's own initialisation (weights N(0, 0.01), bias at the prior), except for
    the rows of classes whose names match, compared case-insensitively and ignoring surrounding
    whitespace: new row k gets the checkpoint's row of the class of the same name. Nothing of
    it is copied when the checkpoint's conv has another input width F or kernel, or when the
    checkpoint has no class names (a bare state dict, an MMDetection file without CLASSES).

    Returns the report:
        source: the path (str); kind: "gfldet" or "mmdetection"; weights: "ema" or "model";
        loaded: model tensor names copied whole;
        reinitialised: model tensor names not copied whole (missing in the checkpoint, another
            shape, or head.gfl_cls when the classes differ: see matched_classes);
        matched_classes: (new_name, old_name, new_label, old_label) per gfl_cls row copied;
        skipped: checkpoint tensor names not used at all (absent from the model or another
            shape);
        mismatched: {name: (model shape, checkpoint shape)} of tensors present in both;
        classes: class_names; checkpoint_classes: the checkpoint's names or None;
        total, checkpoint_total: the numbers of model and checkpoint tensors;
        notes: anything else worth a line in the log (why a class conv was not copied, ...).

    Raises ValueError (one line, naming the file) when `path` is not a checkpoint, when it is
    of another architecture (see MIN_FIT: fewer than half of the model's weight tensors fit, so
    that e.g. a checkpoint of which only the one-number `head.scales.*` fit is refused, with
    both models described by what tells them apart), when its bins have another width than the
    model's (model.head.bin_width), or when an MMDetection checkpoint has a 'caffe' style
    ResNet; the model is left untouched then.
    FileNotFoundError when there is no such file.
    """
    path = Path(path)
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    source = _read_source(path)
    weights: dict[str, Tensor] = source["weights"]
    old_classes: list[str] | None = source["classes"]
    notes: list[str] = list(source["notes"])
    own = model.state_dict()
    class_names = list(class_names)
    # Same tensors, other bins: every edge would decode to another distance, silently.
    theirs, ours = source["bin_width"], getattr(model.head.box, "bin_width", None)
    if theirs is not None and ours is not None and abs(theirs - ours) > 1e-6:
        raise ValueError(
            f"{path}: its edge distributions have bins of width {theirs:g}, the model's "
            f"{ours:g}: set model.head.bin_width: {theirs:g}"
        )
    if CLS_WEIGHT in own and int(own[CLS_WEIGHT].shape[0]) != len(class_names):
        raise ValueError(
            f"{path}: the model has {own[CLS_WEIGHT].shape[0]} class channels but "
            f"{len(class_names)} class names were given"
        )

    same_classes = old_classes is not None and old_classes == class_names
    # The class conv is one unit: its bias without its weight rows would mean nothing.
    cls_whole = same_classes and all(
        k in weights and weights[k].shape == own[k].shape for k in CLS_KEYS if k in own
    )
    update: dict[str, Tensor] = {}
    loaded, reinitialised = [], []
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for name, tensor in own.items():
        theirs = weights.get(name)
        if theirs is not None and tuple(theirs.shape) != tuple(tensor.shape):
            mismatched[name] = (tuple(tensor.shape), tuple(theirs.shape))
        if name in CLS_KEYS and not cls_whole:
            reinitialised.append(name)  # rows by name, below, if the class lists differ
        elif theirs is not None and name not in mismatched:
            update[name] = theirs
            loaded.append(name)
        else:
            reinitialised.append(name)

    matched: list[tuple[str, str, int, int]] = []
    if cls_whole:
        matched = [(n, n, k, k) for k, n in enumerate(class_names)]
    elif CLS_WEIGHT in own and CLS_WEIGHT in weights:  # (or the same classes, another width)
        matched, rows = _copy_rows_by_name(own, weights, old_classes, class_names, notes)
        update.update(rows)
    used = set(update) | ({k for k in CLS_KEYS if k in weights} if matched else set())
    skipped = [k for k in weights if k not in used]

    if not update:
        raise ValueError(f"{path}: {_nothing_fits(own, weights)}")
    if problem := _too_little_fits(own, weights, loaded):
        raise ValueError(f"{path}: {problem}")
    missing = model.load_state_dict(update, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys  # update holds model keys only
    return {
        "source": str(path),
        "kind": source["kind"],
        "weights": source["key"],
        "loaded": loaded,
        "reinitialised": reinitialised,
        "matched_classes": matched,
        "skipped": skipped,
        "mismatched": mismatched,
        "classes": class_names,
        "checkpoint_classes": old_classes,
        "total": len(own),
        "checkpoint_total": len(weights),
        "notes": notes,
    }


def match_classes(old: list[str], new: list[str]) -> list[tuple[str, str, int, int]]:
    """(new_name, old_name, new_label, old_label) for each new class whose name is in `old`,
    compared case-insensitively and ignoring surrounding whitespace, in new-label order.

    A name listed twice in `old` matches its first occurrence.
    """
    index: dict[str, int] = {}
    for j, name in enumerate(old):
        index.setdefault(_key(name), j)
    return [
        (n, old[index[_key(n)]], k, index[_key(n)]) for k, n in enumerate(new) if _key(n) in index
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report of `init_from_checkpoint` as log lines: a header, per category its count
    and first names (with both shapes where a shape differs), every class matched by name,
    notes, and the one-line summary of `summary_line` last. E.g. COCO -> 6 classes:

        init_from gfl_r50_coco.pth (mmdetection checkpoint, model weights)
          loaded          365 of 367 model tensors: backbone.conv1.weight, ... (+362)
          re-initialised    2 of 367 model tensors: head.gfl_cls.weight [6, 256, 3, 3] vs
            checkpoint [80, 256, 3, 3], head.gfl_cls.bias [6] vs checkpoint [80]
          unused            0 of 367 checkpoint tensors
          classes         80 -> 6, 1 matched by name (new label <- checkpoint label):
                          Person (0) <- person (0)
        loaded 365 of 367 tensors; re-initialised head.gfl_cls (80 -> 6 classes, 1 matched by
          name: person -> Person)

    (each row is one line; wrapped here).
    """
    r = report
    mism = r.get("mismatched", {})

    def names(keys: list[str], model_side: bool) -> str:
        shown = []
        for k in keys[:_SHOW]:
            if k in mism and model_side:  # why it was not loaded: the two shapes
                k += f" {list(mism[k][0])} vs checkpoint {list(mism[k][1])}"
            elif k in mism:
                k += " (another shape)"
            shown.append(k)
        more = f" (+{len(keys) - _SHOW})" if len(keys) > _SHOW else ""
        return ", ".join(shown) + more

    total, theirs = r["total"], r["checkpoint_total"]
    lines = [f"init_from {r['source']} ({r['kind']} checkpoint, {r['weights']} weights)"]
    rows = [
        ("loaded", r["loaded"], total, "model tensors", True),
        ("re-initialised", r["reinitialised"], total, "model tensors", True),
        ("unused", r["skipped"], theirs, "checkpoint tensors", False),
    ]
    w = len(str(max(total, theirs)))
    for label, keys, of, what, model_side in rows:
        shown = f": {names(keys, model_side)}" if keys else ""
        lines.append(f"  {label:<15} {len(keys):>{w}} of {of:<{w}} {what}{shown}")
    old, new, matched = r["checkpoint_classes"], r["classes"], r["matched_classes"]
    n_old = "?" if old is None else str(len(old))
    if old is not None and old == new:
        lines.append(f"  {'classes':<15} the checkpoint's {len(new)}, in the same order")
    else:
        head = f"{n_old} -> {len(new)}, {len(matched) or 'none'} matched by name"
        lines.append(
            f"  {'classes':<15} {head}" + (" (new label <- checkpoint label):" if matched else "")
        )
        lines += [f"{'':<18}{_show(a)} ({k}) <- {_show(b)} ({j})" for a, b, k, j in matched]
    lines += [f"  note: {n}" for n in r["notes"]]
    lines.append(summary_line(r))
    return "\n".join(lines)


def summary_line(report: dict[str, Any]) -> str:
    """One line, e.g. "loaded 365 of 367 tensors; re-initialised head.gfl_cls (80 -> 6
    classes, 1 matched by name: person -> Person)"."""
    r = report
    parts = [f"loaded {len(r['loaded'])} of {r['total']} tensors"]
    old, new, matched = r["checkpoint_classes"], r["classes"], r["matched_classes"]
    if CLS_WEIGHT in r["loaded"]:
        parts.append(f"head.gfl_cls loaded (the same {len(new)} classes)")
    elif CLS_WEIGHT in r["reinitialised"]:
        why = f"{'?' if old is None else len(old)} -> {len(new)} classes"
        shapes = r.get("mismatched", {}).get(CLS_WEIGHT)
        if shapes and shapes[0][1:] != shapes[1][1:]:
            why += f", input width {shapes[1][1]} -> {shapes[0][1]}: nothing copied"
        elif old is None:
            why += ", no class names in the checkpoint: nothing copied"
        elif matched:
            pairs = ", ".join(f"{_show(b)} -> {_show(a)}" for a, b, _, _ in matched[:_SHOW])
            more = f", +{len(matched) - _SHOW} more" if len(matched) > _SHOW else ""
            why += f", {len(matched)} matched by name: {pairs}{more}"
        else:
            why += ", none matched by name"
        parts.append(f"re-initialised head.gfl_cls ({why})")
    others = [k for k in r["reinitialised"] if k not in CLS_KEYS]
    if others:
        parts.append(f"{len(others)} other tensors kept their initialisation")
    if r["skipped"]:
        parts.append(f"{len(r['skipped'])} checkpoint tensors unused")
    return "; ".join(parts)


# -- reading the checkpoint ---------------------------------------------------------------------


def _read_source(path: Path) -> dict[str, Any]:
    """{"weights": gfldet-named state dict, "classes": names or None, "kind", "key", "notes",
    "bin_width": the Δ of the edge distributions' bins, or None when the file does not say}."""
    gfl_error: ValueError | None = None
    try:
        state = load_checkpoint(path)
    except ValueError as e:  # maybe an MMDetection file: {"state_dict", "meta"}, tried below
        state, gfl_error = None, e
    bare = state["model"] if state is not None else {}
    if state is not None and not any(
        k.removeprefix("module.").startswith("bbox_head.") for k in bare
    ):
        key = "ema" if isinstance(state.get("ema"), dict) else "model"
        classes = state.get("classes")
        notes = [] if classes else ["the checkpoint has no class list: no class matched by name"]
        return {
            "weights": rename_legacy_keys(state[key]),
            "classes": [str(c) for c in classes] if classes else None,
            "kind": "gfldet",
            "key": key,
            "notes": notes,
            "bin_width": _gfldet_bin_width(state),
        }
    try:
        mm_state, meta = load_mmdet_checkpoint(path)
    except ValueError as e:
        if gfl_error is None or str(e) == str(gfl_error):
            raise e from None  # e.g. a text file: both readers say "not a checkpoint"
        prefix = f"{path}: "
        raise ValueError(
            f"{path}: not a gfldet or MMDetection GFL checkpoint "
            f"(gfldet: {str(gfl_error).removeprefix(prefix)}; "
            f"MMDetection: {str(e).removeprefix(prefix)})"
        ) from None
    bin_width = checked_bin_width(mm_state, meta, str(path))
    weights, classes, notes = _convert_mmdet(mm_state, meta, path)
    return {
        "weights": weights,
        "classes": classes,
        "kind": "mmdetection",
        "key": "model",
        "notes": notes,
        "bin_width": bin_width,
    }


def _gfldet_bin_width(state: dict[str, Any]) -> float | None:
    """The bin width Δ a gfldet checkpoint was trained (or converted) with; None if unknown."""
    meta, cfg = state.get("meta"), state.get("config")
    if isinstance(meta, dict) and isinstance(meta.get("bin_width"), (int, float)):
        return float(meta["bin_width"])
    head = cfg.get("model", {}).get("head", {}) if isinstance(cfg, dict) else {}
    width = head.get("bin_width") if isinstance(head, dict) else None
    return float(width) if isinstance(width, (int, float)) else None


def _convert_mmdet(
    state: dict[str, Tensor], meta: dict[str, Any], path: Path
) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
    """MMDetection names -> gfldet names (`rename_keys`); returns (weights, class names of the
    class conv's rows or None, notes).

    The rows stay in MMDetection's order, which is that of meta CLASSES (its label order when
    its annotation file lists the categories in that order, always so for COCO); fine-tuning
    needs only each row's name, not the category ids that `convert_state` matches up.
    """
    weights = _named_errors(path, rename_keys, state)
    channels = int(weights[CLS_WEIGHT].shape[0])
    classes = meta.get("CLASSES")
    classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    if classes is None and channels == len(COCO_CLASSES):
        note = "no CLASSES in the checkpoint's meta: 80 classes, taken as COCO's"
        return weights, list(COCO_CLASSES), [note]
    if classes is None:
        note = f"no CLASSES in the checkpoint's meta ({channels} classes, not COCO's 80)"
        return weights, None, [note + ": no class matched by name"]
    if len(classes) != channels:
        note = f"meta CLASSES has {len(classes)} names but gfl_cls has {channels} channels"
        return weights, None, [note + ": no class matched by name"]
    if classes == list(COCO_CLASSES):
        return weights, classes, []
    return weights, classes, ["class rows taken in the order of the checkpoint's meta CLASSES"]


def _named_errors(path: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), its ValueErrors prefixed with `path` where they do not name it
    (convert_state's messages about keys, e.g. DCN layers, do not)."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        if str(e).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: {e}") from None


# -- the class conv -------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name.strip().casefold()


def _show(name: str) -> str:
    """A class name for the log, quoted when spaces around it would be invisible."""
    return repr(name) if name != name.strip() or not name else name


def _copy_rows_by_name(
    own: dict[str, Tensor],
    weights: dict[str, Tensor],
    old_classes: list[str] | None,
    class_names: list[str],
    notes: list[str],
) -> tuple[list[tuple[str, str, int, int]], dict[str, Tensor]]:
    """The model's gfl_cls weight and bias with the rows of classes matched by name replaced
    by the checkpoint's; ([], {}) when nothing is copied (the reason goes to `notes`)."""
    w_own, w_old = own[CLS_WEIGHT], weights[CLS_WEIGHT]
    b_own, b_old = own.get(CLS_BIAS), weights.get(CLS_BIAS)
    if old_classes is None:
        return [], {}
    if tuple(w_old.shape[1:]) != tuple(w_own.shape[1:]) or (b_own is None) != (b_old is None):
        # Another head width: a row is a filter over other features, meaningless here.
        notes.append(
            f"head.gfl_cls not copied: the checkpoint's is {list(w_old.shape)}, the model's "
            f"{list(w_own.shape)} (another head width)"
        )
        return [], {}
    if len(old_classes) != w_old.shape[0]:
        notes.append(
            f"the checkpoint lists {len(old_classes)} classes but its gfl_cls has "
            f"{w_old.shape[0]} rows: no class matched by name"
        )
        return [], {}
    matched = match_classes(old_classes, class_names)
    if not matched:
        return [], {}
    new = torch.tensor([k for _, _, k, _ in matched], device=w_own.device)
    old = torch.tensor([j for _, _, _, j in matched], device=w_old.device)
    # Unmatched rows keep the fresh initialisation: weights N(0, 0.01), bias at the prior.
    rows = {CLS_WEIGHT: w_own.clone()}
    rows[CLS_WEIGHT][new] = w_old[old].to(w_own)
    if b_own is not None and b_old is not None:
        rows[CLS_BIAS] = b_own.clone()
        rows[CLS_BIAS][new] = b_old[old].to(b_own)
    return matched, rows


def _too_little_fits(
    own: dict[str, Tensor], weights: dict[str, Tensor], loaded: list[str]
) -> str | None:
    """The error text when fewer than MIN_FIT of the model's weight tensors fit (see MIN_FIT):
    how many fit per part, and what tells the two models apart; None when enough fit."""
    counted = [k for k, v in own.items() if v.numel() > 1 and k not in CLS_KEYS]
    fit = set(loaded) & set(counted)
    if len(fit) >= MIN_FIT * len(counted):
        return None
    per_part = ", ".join(
        f"{part} {sum(k in fit for k in keys)}/{len(keys)}"
        for part in PARTS
        if (keys := [k for k in counted if k.startswith(part + ".")])
    )
    theirs, ours = _architecture(weights), _architecture(own)
    differ = [k for k in ours if k in theirs and ours[k] != theirs[k]] or list(ours)
    show = ", ".join  # the keys that tell them apart (all of them when none does)
    return (
        f"another architecture: only {len(fit)} of {len(counted)} weight tensors of the model "
        f"(more than one number each, the class conv aside) fit, fewer than half ({per_part}); "
        f"the checkpoint's model has {show(f'{k} {theirs[k]}' for k in differ if k in theirs)}"
        f", this config's {show(f'{k} {ours[k]}' for k in differ)}: set the config's model to "
        "the checkpoint's, or start from a checkpoint of this model"
    )


def _architecture(sd: dict[str, Tensor]) -> dict[str, Any]:
    """What a state dict says of its model: the config keys of a ResNet + FPN + GFL head that
    its shapes imply (as convert-mmdet reads them), else its tensor and parameter counts."""
    try:
        arch: dict[str, Any] = dict(describe(sd))
    except (KeyError, IndexError):  # not a ResNet + FPN + GFL head
        arch = {}
    arch.pop("num_classes", None)  # the class conv is matched by names, not refused
    for part in PARTS:
        keys = [k for k in sd if k.startswith(part + ".")]
        arch.setdefault(f"{part} tensors", len(keys))
    return arch


def _nothing_fits(own: dict[str, Tensor], weights: dict[str, Tensor]) -> str:
    """The error text when no checkpoint tensor fits the model: a few names of each side."""

    def few(sd: dict[str, Tensor]) -> str:
        shown = ", ".join(f"{k} {list(v.shape)}" for k, v in list(sd.items())[:_SHOW])
        return shown + (f" (+{len(sd) - _SHOW} more)" if len(sd) > _SHOW else "")

    return (
        "no tensor of the checkpoint has the name and shape of a model tensor: probably another "
        f"architecture; the model expects e.g. {few(own)}; the checkpoint has "
        f"{few(weights) if weights else 'no tensors'}"
    )
