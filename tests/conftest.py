"""Fixtures shared by the training-level tests."""

from __future__ import annotations

import pytest
import torch

from gfldet.data.synth import write_shapes_dataset


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> dict:
    """A tiny shapes dataset (8 train / 3 val images of 64x64): its paths, as
    write_shapes_dataset returns them. Tests that need other sizes define their own."""
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(root, num_train=8, num_val=3, img_size=64, max_size=40,
                                max_objects=3)  # fmt: skip


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
