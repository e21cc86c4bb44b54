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

    The pairs come from `conv_bn_pairs()` of every submodule that defines it (gfldet's ResNet;
    the FPN and the head have no BatchNorm). A folded BatchNorm becomes nn.Identity and its
    conv gets the folded weight and a bias. BatchNorms still in training mode are left as they
    are (their output depends on the batch). Returns the number folded.
    """
    folded = 0
    for owner in list(module.modules()):
        pairs = getattr(owner, "conv_bn_pairs", None)
        if pairs is None:
            continue
        for parent, conv_name, bn_name in pairs():
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training:
                continue
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(
                    f"{type(owner).__name__}.conv_bn_pairs(): '{conv_name}' is a "
                    f"{type(conv).__name__}, not an nn.Conv2d"
                )
            # fuse_conv_bn_eval asks for both modules in eval mode; the conv's mode is moot.
            was_training = conv.training
            conv.eval()
            fused = fuse_conv_bn_eval(conv, bn)
            fused.train(was_training)
            setattr(parent, conv_name, fused)
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def _refuse_training(model: nn.Module, args: Any) -> None:
    if model.training:
        raise RuntimeError(
            "this model was made by prepare_for_inference (BatchNorm folded into the convs): "
            "it is for inference only; train the original model instead"
        )


def prepare_for_inference(model: GFL, channels_last: bool = True) -> GFL:
    """A copy of `model` for inference: eval mode, BatchNorms of the backbone (and FPN, where it
    has any) folded into their convs, and the weights in NHWC layout (`channels_last`) or else
    in NCHW.

    Detections equal the original's up to float rounding (about 1e-5 relative). Feed the images
    in channels_last too (`images.contiguous(memory_format=torch.channels_last)`); NCHW input
    works as well, the first conv then converts. The copy is for inference only: its forward
    raises in training mode, and its state dict (conv biases, no BatchNorm entries) is not a
    gfldet checkpoint, so save the original.
    """
    fast = copy.deepcopy(model).eval()
    fold_batchnorms(fast.backbone)
    fold_batchnorms(fast.fpn)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    fast = fast.to(memory_format=layout)
    fast.register_forward_pre_hook(_refuse_training)
    return fast
