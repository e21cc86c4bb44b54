"""Images without boxes (background images kept as negatives): every location of such an image
is a negative; the losses of a batch holding one, or made only of them, are finite, the box
losses 0, and the images with boxes keep their own box losses."""

from __future__ import annotations

import pytest
import torch

from gfldet.config import Config
from gfldet.data.transforms import collate_batch
from gfldet.model.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {
    "gfl": {},
    "gflv2": {"head.quality": "dgqp"},
    "centerness-branch": {"head.quality": "centerness", "loss.cls": "focal"},
    "iou-guided-gaussian": {
        "head.quality": "iou_guided",
        "head.box": "gaussian",
        "loss.cls": "focal",
    },
    "vfl": {"loss.cls": "vfl"},
}
BOX_LOSSES = {"loss_giou", "loss_dfl", "loss_nll", "loss_quality"}


def tiny_model(switches: dict):
    torch.manual_seed(0)
    m = Config().model
    m.num_classes = 3
    m.backbone.depth, m.backbone.base_width = 18, 8  # norm_eval: each image on its own
    m.neck.out_channels, m.head.feat_channels, m.head.stacked_convs = 16, 16, 1
    m.head.num_groups = 4
    for key, value in switches.items():
        section, name = key.split(".")
        setattr(getattr(m, section), name, value)
    return build_model(m).train()


def sample(h: int, w: int, boxes: list, labels: list, seed: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    target = {
        "img_size": (h, w),
        "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    return image, target


def with_boxes() -> tuple[torch.Tensor, dict]:
    return sample(64, 96, [[10, 8, 50, 40], [60, 20, 90, 60]], [1, 2], seed=1)


def background(seed: int = 2) -> tuple[torch.Tensor, dict]:
    return sample(48, 80, [], [], seed)


def check_finite(model, losses: dict) -> None:
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    model.zero_grad()
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("switches", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_batch_of_background_images_only_trains_the_negatives(switches):
    model = tiny_model(switches)
    images, targets = collate_batch([background(2), background(3)])
    losses = model(images, targets)
    check_finite(model, losses)
    assert all(losses[k].item() == 0.0 for k in BOX_LOSSES & set(losses)), losses
    cls_loss = next(v for k, v in losses.items() if k not in BOX_LOSSES)
    assert cls_loss.item() > 0  # every location is a negative, and is trained as one
    # Only the classification path gets a gradient from negatives.
    assert model.head.gfl_cls.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("switches", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_background_image_beside_one_with_boxes(switches):
    model = tiny_model(switches)
    alone = model(*collate_batch([with_boxes()]))
    mixed = model(*collate_batch([with_boxes(), background()]))
    check_finite(model, mixed)
    # The box losses come from the positives only, all in the image with boxes, and are
    # normalised by their weights: unchanged.
    for k in ("loss_giou", "loss_dfl", "loss_nll"):
        if k in alone:
            torch.testing.assert_close(mixed[k], alone[k], rtol=1e-4, atol=1e-6)
    if "loss_quality" in alone:  # normalised by the positives, each image counting >= 1
        ratio = (mixed["loss_quality"] / alone["loss_quality"]).item()
        n = ratio / (1 - ratio)  # n positives: n / (n + 1)
        assert n > 1 and abs(n - round(n)) < 1e-2
    # The background image adds negatives (and 1 to the normaliser) to the class loss.
    cls = next(k for k in alone if k not in BOX_LOSSES)
    assert mixed[cls].item() != alone[cls].item()
