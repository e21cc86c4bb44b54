"""gfldet.model.necks: FPN's shapes, strides and P6 input, PAFPN's bottom-up path, and finite
gradients under CPU bfloat16 on one-pixel maps."""

from __future__ import annotations

import math

import pytest
import torch

from gfldet.model.backbones import (
    ResNet,
)
from gfldet.model.necks import FPN, PAFPN

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pafpn_adds_a_bottom_up_path():
    torch.manual_seed(0)
    feats = [torch.randn(1, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    fpn, pafpn = FPN([8, 16, 32], 16, 1), PAFPN([8, 16, 32], 16, 1)
    assert pafpn.strides == fpn.strides == [8, 16, 32, 64]
    outs = pafpn(feats)
    assert [tuple(o.shape) for o in outs] == [
        (1, 16, 16, 16),
        (1, 16, 8, 8),
        (1, 16, 4, 4),
        (1, 16, 2, 2),
    ]
    # A change in C3 reaches P5 through PAFPN's bottom-up path; in the FPN it cannot.
    bumped = [feats[0] + 1, feats[1], feats[2]]
    assert not torch.allclose(pafpn(bumped)[2], outs[2])
    torch.testing.assert_close(fpn(bumped)[2], fpn(feats)[2])
    # MMDetection's PAFPN names.
    names = {k.split(".")[0] for k in pafpn.state_dict()}
    assert names == {"lateral_convs", "fpn_convs", "downsample_convs", "pafpn_convs"}


def test_fpn_shapes_strides_and_p6_from_p5_output():
    torch.manual_seed(0)
    backbone = ResNet(18, 8).eval()
    fpn = FPN(backbone.out_channels, 16, extra_levels=2)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 96, 128))
        outs = fpn(feats)
    assert len(outs) == 5
    h, w = 96, 128
    for o, s in zip(outs, [8, 16, 32, 64, 128]):
        assert o.shape == (1, 16, math.ceil(h / s), math.ceil(w / s))
    with torch.no_grad():
        lat = [conv(f) for conv, f in zip(fpn.lateral_convs, feats)]
        p5 = fpn.fpn_convs[2](lat[2])
        lat4 = lat[1] + lat[2].repeat_interleave(2, -1).repeat_interleave(2, -2)  # nearest x2
        p4 = fpn.fpn_convs[1](lat4)
        p6 = fpn.fpn_convs[3](p5)  # from the P5 output, not from C5 or the lateral
        p7 = fpn.fpn_convs[4](p6)  # no ReLU in between
    torch.testing.assert_close(outs[2], p5)
    torch.testing.assert_close(outs[1], p4)
    torch.testing.assert_close(outs[3], p6)
    torch.testing.assert_close(outs[4], p7)


def test_fpn_p6_input_is_p5_by_hook():
    fpn = FPN([16, 32, 64], 16)
    seen = {}
    fpn.fpn_convs[2].register_forward_hook(lambda m, i, o: seen.__setitem__("p5", o))
    fpn.fpn_convs[3].register_forward_hook(lambda m, i, o: seen.__setitem__("p6_in", i[0]))
    feats = [torch.randn(1, c, s, s) for c, s in ((16, 8), (32, 4), (64, 2))]
    fpn(feats)
    assert seen["p6_in"] is seen["p5"]


def test_fpn_gradients_are_finite_under_cpu_bfloat16_on_one_pixel_wide_maps(one_thread):
    # torch's oneDNN bfloat16 backward of a strided conv over a map 1 pixel wide returns NaN
    # weight gradients (uninitialised memory, so not on every call): P6/P7 of images <= 64 px.
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], 16)
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    for _ in range(20):
        garbage = [torch.full((1 << 12,), float("nan"), dtype=torch.bfloat16) for _ in range(64)]
        del garbage
        fpn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = fpn(feats)
        assert [o.shape[-1] for o in outs] == [8, 4, 2, 1, 1]
        # The wide maps stay in bfloat16; the one-pixel P7 comes from the float32 fallback.
        assert outs[0].dtype == torch.bfloat16 and outs[4].dtype == torch.float32
        sum(o.float().sum() for o in outs).backward()
        assert all(torch.isfinite(p.grad).all() for p in fpn.parameters())
