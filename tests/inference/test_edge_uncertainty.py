"""gfldet.inference.uncertainty: the spread of each edge's distribution in pixels, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gfldet.inference.uncertainty import edge_uncertainty

pytestmark = pytest.mark.usefixtures("one_thread")


def _dist(*mass: tuple[int, float], n: int = 4) -> list[float]:
    p = [0.0] * (n + 1)
    for i, m in mass:
        p[i] = m
    return p


def test_edge_uncertainty_by_hand():
    dists = torch.tensor(
        [
            # left: all mass on bin 3 -> std 0, top-2 mass 1
            # top: half on bins 2 and 3 -> mean 2.5, var 0.25, std 0.5 bins
            # right: uniform over 0..4 -> var ((n+1)^2 - 1) / 12 = 2, top-2 mass 0.4
            # bottom: 0.5 at bins 0 and 4 -> mean 2, var 4, std 2 bins, top-2 mass 1
            [_dist((3, 1.0)), _dist((2, 0.5), (3, 0.5)), [0.2] * 5, _dist((0, 0.5), (4, 0.5))],
        ]
    )
    out = edge_uncertainty(dists, torch.tensor([8.0]))
    torch.testing.assert_close(out["edge_std"], torch.tensor([[0.0, 4.0, 8 * math.sqrt(2), 16.0]]))
    torch.testing.assert_close(out["edge_top2"], torch.tensor([[1.0, 1.0, 0.4, 1.0]]))
    # Bins of width 0.5 halve every spread; the resize scale (w 2, h 4) maps to original pixels.
    half = edge_uncertainty(dists, torch.tensor([8.0]), bin_width=0.5)["edge_std"]
    torch.testing.assert_close(half, out["edge_std"] / 2)
    orig = edge_uncertainty(dists, torch.tensor([8.0]), scale=(2.0, 4.0))["edge_std"]
    torch.testing.assert_close(orig, out["edge_std"] / torch.tensor([2.0, 4.0, 2.0, 4.0]))
    assert edge_uncertainty(torch.zeros(0, 4, 17), torch.zeros(0))["edge_std"].shape == (0, 4)
    with pytest.raises(ValueError, match="strides"):
        edge_uncertainty(dists, torch.tensor([8.0, 16.0]))
    with pytest.raises(ValueError, match="dists"):
        edge_uncertainty(dists[0], torch.tensor([8.0]))
