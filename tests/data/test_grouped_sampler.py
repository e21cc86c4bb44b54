"""gfldet.data.sampler.GroupedBatchSampler: batches of one aspect group, shared between ranks,
resumable mid-epoch with a seed per sample."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from gfldet.data.sampler import GroupedBatchSampler


def _flat(batches: list[list[int]]) -> list[int]:
    return list(itertools.chain.from_iterable(batches))


def _check_batches(batches, groups, batch_size):
    for b in batches:
        assert len(b) == batch_size and len({int(groups[i]) for i in b}) == 1


def test_batches_hold_one_aspect_group_and_ranks_share_the_epoch():
    groups = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1])  # 5 portrait, 6 landscape
    s = GroupedBatchSampler(groups, batch_size=2, seed=3)
    e0 = list(s)
    assert len(e0) == len(s) == 6  # ceil(5/2) + ceil(6/2)
    _check_batches(e0, groups, 2)
    assert set(_flat(e0)) == set(range(11))
    assert list(s) == e0  # deterministic for (seed, epoch)
    s.set_epoch(1)
    assert list(s) != e0
    assert list(GroupedBatchSampler(groups, 2, seed=3)) == e0

    ordered = list(GroupedBatchSampler(groups, 2, shuffle=False))
    assert ordered[:3] == [[0, 3], [1, 2], [4, 5]]
    assert all(b[0] <= c[0] for b, c in itertools.pairwise(ordered))
    assert len(GroupedBatchSampler(groups, 2, drop_last=True)) == 5

    # 8 + 12 items, 2 ranks x 2 per batch: no padding needed -> disjoint exact cover.
    groups = np.array([0] * 8 + [1] * 12)
    random.Random(0).shuffle(groups)
    shares = [list(GroupedBatchSampler(groups, 2, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 5
    flat = [_flat(sh) for sh in shares]
    assert not set(flat[0]) & set(flat[1]) and sorted(flat[0] + flat[1]) == list(range(20))
    # 5 + 6 items over 3 ranks: padded, equal length, still covering everything.
    groups = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1])
    shares = [list(GroupedBatchSampler(groups, 2, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(sh) for sh in shares}) == 1 and len(shares[0]) == 2
    for sh in shares:
        _check_batches(sh, groups, 2)
    assert set(_flat(_flat(shares))) == set(range(11))


def test_sampler_resumes_mid_epoch_and_seeds_every_sample():
    groups = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0])
    for replicas in (1, 2):
        for rank in range(replicas):
            s = GroupedBatchSampler(
                groups, 2, seed=5, num_replicas=replicas, rank=rank, with_seeds=True
            )
            s.set_epoch(3)
            full = list(s)
            assert all(isinstance(i, int) and isinstance(seed, int) for b in full for i, seed in b)
            s.set_epoch(3, start=2)  # continue after two batches: the same batches and seeds
            assert len(s) == len(full) - 2 and list(s) == full[2:]
            plain = GroupedBatchSampler(groups, 2, seed=5, num_replicas=replicas, rank=rank)
            plain.set_epoch(3)
            assert [[i for i, _ in b] for b in full] == list(plain)
    both = [
        GroupedBatchSampler(groups, 2, seed=5, num_replicas=2, rank=r, with_seeds=True)
        for r in (0, 1)
    ]
    seeds = [seed for s in both for b in s for _, seed in b]
    assert len(set(seeds)) == len(seeds)  # every sample of the epoch has its own
    s = both[0]
    s.set_epoch(4)
    assert not {seed for b in s for _, seed in b} & set(seeds)  # and every epoch
    with pytest.raises(ValueError, match="start"):
        s.set_epoch(0, start=len(s) + 1)
