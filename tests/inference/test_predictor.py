"""gfldet.inference.predictor.Predictor: what it accepts as an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gfldet
from gfldet.config import load_config
from tests.helpers import DEMO

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: np.zeros((32, 32, 3), np.float32), "float32"),
        (lambda: np.zeros((32, 32), np.uint8), "[32, 32]"),
        (lambda: np.zeros((32, 32, 4), np.uint8), "[32, 32, 4]"),
        (lambda: np.zeros((3, 32, 32), np.uint8), "[3, 32, 32]"),
        (lambda: torch.zeros(32, 32, 3, dtype=torch.uint8), "Tensor"),
    ],
)
def test_predictor_refuses_what_is_not_a_uint8_rgb_image(tiny_trained, make, words):
    ckpt, sets, _ = tiny_trained
    predictor = gfldet.Predictor(load_config(DEMO, sets), ckpt, device="cpu")
    with pytest.raises(ValueError, match="uint8") as info:
        predictor([make()])
    assert words in str(info.value)
