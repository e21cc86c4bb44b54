"""Inference preparation: BatchNorm folded into the convolutions, channels_last memory format.

A BatchNorm in eval mode is an affine map per channel, y = (x - mean) / sqrt(var + eps) * w + b,
so when it directly follows a convolution it can be folded into that convolution's weight and
bias (torch.nn.utils.fusion.fuse_conv_bn_eval): same outputs up to float rounding, one pass over
the feature map less per BatchNorm. channels_last (NHWC) is the layout the CPU's oneDNN kernels
and the GPU's tensor cores run fastest in.

    fast = prepare_for_inference(model)     # a copy; `model` is left as it was
    detections = fast.predict(images.contiguous(memory_format=torch.channels_last), targets)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .detector import GFL


def fold_batchnorms(module: nn.Module) -> int:
    """Folds, in place, every eval-mode BatchNorm that directly follows a conv into that conv.

    The pairs come from `conv_bn_pairs()` of every submodule that defines it (the backbones and
    the head's towers; see gfldet.model.interfaces). A folded BatchNorm becomes nn.Identity and
    its conv gets the folded weight and a bias. When the norm is a ModuleList of per-level
    BatchNorms after one shared conv (the head's per_level_norm), the conv becomes a
    ModuleList of per-level folded convs. BatchNorms still in training mode are left as they
    are (their output depends on the batch). Returns the number of BatchNorms folded.
    """
    folded = 0
    for owner in list(module.modules()):
        pairs = getattr(owner, "conv_bn_pairs", None)
        if pairs is None:
            continue
        for parent, conv_name, bn_name in pairs():
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            norms = list(bn) if isinstance(bn, nn.ModuleList) else [bn]
            if not all(
                isinstance(n, nn.modules.batchnorm._BatchNorm) and not n.training for n in norms
            ):
                continue
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(
                    f"{type(owner).__name__}.conv_bn_pairs(): '{conv_name}' is a "
                    f"{type(conv).__name__}, not an nn.Conv2d"
                )
            # fuse_conv_bn_eval asks for both modules in eval mode; the conv's mode is moot.
            was_training = conv.training
            conv.eval()
            fused = [fuse_conv_bn_eval(conv, n).train(was_training) for n in norms]
            if isinstance(bn, nn.ModuleList):
                setattr(parent, conv_name, nn.ModuleList(fused))
                setattr(parent, bn_name, nn.ModuleList(nn.Identity() for _ in norms))
            else:
                setattr(parent, conv_name, fused[0])
                setattr(parent, bn_name, nn.Identity())
            folded += len(norms)
    return folded


def _refuse_training(model: nn.Module, args: Any) -> None:
    if model.training:
        raise RuntimeError(
            "this model was made by prepare_for_inference (BatchNorm folded into the convs): "
            "it is for inference only; train the original model instead"
        )


def prepare_for_inference(model: GFL, channels_last: bool = True) -> GFL:
    """A copy of `model` for inference: eval mode, BatchNorms of the backbone, neck and head
    (where they have any) folded into their convs, and the weights in NHWC layout
    (`channels_last`) or else in NCHW.

    Detections equal the original's up to float rounding (about 1e-5 relative). Feed the images
    in channels_last too (`images.contiguous(memory_format=torch.channels_last)`); NCHW input
    works as well, the first conv then converts. The copy is for inference only: its forward
    raises in training mode, and its state dict (conv biases, no BatchNorm entries) is not a
    gfldet checkpoint, so save the original.
    """
    fast = copy.deepcopy(model).eval()
    fold_batchnorms(fast)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    fast = fast.to(memory_format=layout)
    fast.register_forward_pre_hook(_refuse_training)
    return fast
