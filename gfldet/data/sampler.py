"""Aspect-ratio grouped batch sampler (MMDetection v2 GroupSampler / DistributedGroupSampler)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class GroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields batches of dataset indices whose items all share one group id.

    Grouping landscape and portrait images keeps padding small. The algorithm is MMDetection's
    `DistributedGroupSampler`: each group is shuffled, then padded by cyclically repeating its
    own indices up to a multiple of `batch_size * num_replicas`, cut into batches, the batches
    of all groups are shuffled together, and rank r takes the r-th contiguous block of batches.
    Every rank therefore gets the same number of full batches (padding repeats a few images in
    an epoch, as MMDetection does). With `drop_last=True` the remainder of each group is dropped
    instead of padded. Shuffling uses a torch generator seeded with `seed + epoch`, so the order
    is the same on every rank and reproducible; call `set_epoch` before each epoch.

    With `shuffle=False` nothing is shuffled: each group's indices stay in order and batches
    are emitted sorted by their first index.

    `set_epoch(epoch, start)` with `start > 0` skips the epoch's first `start` batches, which is
    how a run resumed mid-epoch continues exactly where it stopped. With `with_seeds=True` every
    index comes as `(index, augmentation seed)`: the seed depends only on (seed, epoch, position
    of the sample in the epoch), so random augmentation is the same whatever the number of
    DataLoader workers and whether or not the run was resumed (see `CocoDetection.__getitem__`).
    With `with_epoch=True` as well, it comes as `(index, augmentation seed, epoch)`: the epoch
    reaches the dataset in every worker process (persistent workers never see attributes set
    on the dataset in the main process), for augmentation that changes with the epoch
    (`gfldet.data.loader.TrainDataset`: mosaic switched off for the last epochs).

    group_ids: `[N]` integer group of each dataset item (e.g. `CocoDetection.group_ids()`).
    """

    def __init__(
        self,
        group_ids: Sequence[int] | np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        with_seeds: bool = False,
        with_epoch: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.group_ids = np.asarray(group_ids, dtype=np.int64).reshape(-1)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.with_seeds, self.with_epoch = with_seeds, with_seeds and with_epoch
        self.epoch, self.start = 0, 0
        self._groups = [np.flatnonzero(self.group_ids == g) for g in np.unique(self.group_ids)]
        self._num_batches = sum(self._group_len(len(g)) for g in self._groups) // (
            batch_size * num_replicas
        )

    def _group_len(self, size: int) -> int:
        """Number of indices a group of `size` contributes after padding / dropping."""
        chunk = self.batch_size * self.num_replicas
        return size // chunk * chunk if self.drop_last else -(-size // chunk) * chunk

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the shuffle of this epoch (all ranks must pass the same values) and skips its
        first `start` batches (0 <= start <= batches per rank)."""
        if not 0 <= start <= self._num_batches:
            raise ValueError(f"start must be in [0, {self._num_batches}], got {start}")
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, ...]]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches: list[np.ndarray] = []
        for idx in self._groups:
            if self.shuffle:
                idx = idx[torch.randperm(len(idx), generator=g).numpy()]
            n = self._group_len(len(idx))
            if n > 0:
                # np.resize repeats cyclically when growing and truncates when shrinking.
                batches += np.split(np.resize(idx, n), n // self.batch_size)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        else:
            batches.sort(key=lambda b: int(b[0]))
        first = self.rank * self._num_batches  # this rank's block of batches
        for b in range(first + self.start, first + self._num_batches):
            if not self.with_seeds:
                yield batches[b].tolist()
                continue
            pos = b * self.batch_size  # position of the batch's first sample in the epoch
            keys = [
                (int(i), augmentation_seed(self.seed, self.epoch, pos + j))
                for j, i in enumerate(batches[b])
            ]
            yield [(*k, self.epoch) for k in keys] if self.with_epoch else keys

    def __len__(self) -> int:
        """Batches per rank left in this epoch (all of them unless `set_epoch` got a start)."""
        return self._num_batches - self.start


def augmentation_seed(seed: int, epoch: int, position: int) -> int:
    """Seed for the augmentation of the sample at `position` of `epoch` (all ranks together).

    Distinct for distinct (epoch < 10**6, position < 10**9) under one seed.
    """
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + position
