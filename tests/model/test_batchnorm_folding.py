"""gfldet.model.fuse: BatchNorm folded into the convs, channels_last, for inference only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gfldet.config import Config
from gfldet.model.backbones import ResNet
from gfldet.model.build import build_model
from gfldet.model.fuse import fold_batchnorms, prepare_for_inference

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_batchnorms(module: nn.Module, seed: int = 0) -> None:
    """Statistics and affine parameters far from the identity, so that a wrong fold shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.2)


def tiny_model(depth: int = 18, seed: int = 0):
    cfg = Config()
    m = cfg.model
    m.num_classes = 3
    vars(m.backbone).update(depth=depth, base_width=8, frozen_stages=-1, norm_eval=False)
    m.neck.out_channels = 16
    vars(m.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    m.test.score_thr = 0.005  # an untrained model scores ~0.01: keep its detections
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    randomise_batchnorms(model, seed)
    return model


def batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=gen)
    images[1, :, 48:] = 0  # the second image is 48 x 80, padded
    images[1, :, :, 80:] = 0
    targets = [
        {"img_size": (64, 96), "scale_factor": (1.0, 1.0)},
        {"img_size": (48, 80), "scale_factor": (0.5, 0.5)},
    ]
    return images, targets


def head_outputs(model, images, targets):
    seen = {}
    handle = model.head.register_forward_hook(lambda m, args, out: seen.update(out=out))
    try:
        dets = model.predict(images, targets)
    finally:
        handle.remove()
    return seen["out"], dets


def bn_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("channels_last", [True, False])
def test_prepared_model_gives_the_same_outputs(channels_last):
    model = tiny_model().eval()
    images, targets = batch()
    (cls, reg, _), dets = head_outputs(model, images, targets)
    fast = prepare_for_inference(model, channels_last=channels_last)
    fast_images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    (cls2, reg2, _), dets2 = head_outputs(fast, fast_images, targets)
    torch.testing.assert_close(cls2, cls, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reg2, reg, atol=1e-4, rtol=1e-4)
    assert sum(len(d["scores"]) for d in dets) > 0  # the comparison below compares something
    for d, d2 in zip(dets, dets2, strict=True):
        assert torch.equal(d["labels"], d2["labels"])
        torch.testing.assert_close(d2["boxes"], d["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(d2["scores"], d["scores"], atol=1e-4, rtol=1e-4)


def test_prepare_folds_every_batchnorm_and_leaves_the_original_alone():
    model = tiny_model().train()  # prepare_for_inference must not depend on the mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = prepare_for_inference(model)
    assert bn_count(model) == 20 and bn_count(fast) == 0  # stem, 8 blocks x 2, 3 downs
    assert model.training and not fast.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    plain = prepare_for_inference(model, channels_last=False)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_bottleneck_resnet_is_folded_exactly():
    net = ResNet(50, 8, frozen_stages=1, norm_eval=True)
    randomise_batchnorms(net, 3)
    net.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expect = net(x)
        fused = copy.deepcopy(net)
        assert fold_batchnorms(fused) == 53  # stem, 16 blocks x 3, 4 downsamples
        got = fused(x)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_batchnorms_in_training_mode_are_left_alone():
    net = ResNet(18, 8, frozen_stages=-1, norm_eval=False).train()
    assert fold_batchnorms(net) == 0 and bn_count(net) == 20
    net.train()  # norm_eval: every BatchNorm is in eval mode even while training
    net.norm_eval = True
    net.train()
    assert fold_batchnorms(net) == 20 and bn_count(net) == 0


def test_prepared_model_refuses_to_train():
    fast = prepare_for_inference(tiny_model())
    images, targets = batch()
    fast.train()
    with pytest.raises(RuntimeError, match="inference only"):
        fast(images, targets)
    fast.predict(images, targets)  # predict switches to eval mode itself
