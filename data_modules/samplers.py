"""A distributed sampler that tells the dataset which epoch and position it is serving."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class ClipSampler(DistributedSampler):
    """DistributedSampler that yields (index, epoch, position) instead of index.

    The dataset seeds its augmentation from (seed, epoch, index), which makes
    every sample reproducible whatever the number of workers, and lets a resumed
    run replay exactly. `position` is the item's 0-based place in this rank's
    sequence for this epoch (where to resume mid-epoch).

    The order is DistributedSampler's: a permutation from torch.Generator seeded
    with seed + epoch (the same on every rank), padded by wrapping unless
    drop_last, then split by rank with stride num_replicas. num_replicas and rank
    are required, so torch.distributed is never touched and no process group is
    needed. Being a DistributedSampler subclass also stops Lightning from
    swapping it out for its own; Lightning calls set_epoch every epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch  # fixed now, even if set_epoch is called while iterating
        for position, index in enumerate(super().__iter__()):
            yield index, epoch, position
