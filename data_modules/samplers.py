"""Distributed samplers that tell the dataset which epoch and position it is serving, and can
start an epoch part-way (exact mid-epoch resume)."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence, Sized
from typing import cast

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

MIX = 0x313  # seed word of the mixture draws


def sample_key(key: int | tuple[int, int, int] | list[int], size: int, where: str) -> tuple[int, int, int]:
    """(index, epoch, position) of a dataset key: a plain index (epoch 0, position = index) or the
    (index, epoch, position) tuple ClipSampler yields. `where` names the data in the out-of-range error."""
    if isinstance(key, numbers.Integral):
        index, epoch, position = int(key), 0, int(key)
    elif isinstance(key, (tuple, list)) and len(key) == 3:
        index, epoch, position = (int(k) for k in key)
    else:
        raise TypeError(f"key must be an index or an (index, epoch, position) tuple, got {key!r}")
    if not 0 <= index < size:
        raise IndexError(f"index {index} out of range for {size} clips in {where}")
    return index, epoch, position


class ClipSampler(DistributedSampler):
    """DistributedSampler that yields (index, epoch, position) instead of index.

    The dataset seeds its augmentation from (seed, epoch, index), which makes every sample
    reproducible whatever the number of workers, and lets a resumed run replay exactly.
    `position` is the item's 0-based place in this rank's sequence for this epoch; `resume(epoch,
    position)` makes the next iteration start there (once), with the same positions.

    The order is DistributedSampler's: a permutation from torch.Generator seeded with seed + epoch
    (the same on every rank), padded by wrapping unless drop_last, then split by rank with stride
    num_replicas. num_replicas and rank are required, so torch.distributed is never touched and no
    process group is needed. Being a DistributedSampler subclass also stops Lightning from
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
        self._start = 0

    def order(self) -> list[int]:
        """This rank's dataset indices for the current epoch, in order."""
        return list(super().__iter__())

    def resume(self, epoch: int, position: int) -> None:
        """Make the next iteration serve `epoch` from `position` on (later ones start at 0)."""
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"resume position {position} is outside this rank's {self.num_samples} samples")
        self.set_epoch(epoch)
        self._start = position

    def resume_signature(self) -> dict:
        """What must not change for a mid-epoch position to mean the same samples."""
        # Map-style datasets have a length; torch's Dataset type does not declare one.
        dataset_size = len(cast(Sized, self.dataset))
        return {"world_size": self.num_replicas, "dataset_size": dataset_size, "sampler": type(self).__name__}

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, start = self.epoch, self._start  # fixed now, even if set_epoch is called while iterating
        self._start = 0
        order = self.order()
        for position in range(start, len(order)):
            yield order[position], epoch, position


class WeightedClipSampler(ClipSampler):
    """Mixes several data sets (concatenated in one dataset) with weights, V-JEPA style.

    Each epoch draws num_replicas * num_samples indices with replacement, each sample with
    probability proportional to its data set's weight / the data set's size: first a data set
    with probability weight / sum(weights), then a sample uniformly in it (the same distribution,
    without a per-sample weight vector, so it scales to any size). Draws come from
    np.random.default_rng([seed, epoch, MIX]) and are split by rank with stride num_replicas.

    Args:
        source_sizes: Size of each data set, in the order they are concatenated in `dataset`.
        weights: One non-negative weight per data set.
        num_samples: Samples per rank per epoch (iterations per epoch x batch size); None: the
            dataset's size / num_replicas.
    """

    def __init__(
        self,
        dataset: Dataset,
        source_sizes: Sequence[int],
        weights: Sequence[float],
        *,
        num_replicas: int,
        rank: int,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.source_sizes = np.asarray(source_sizes, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float64)
        check_mixture(self.source_sizes, self.weights)
        dataset_size = len(cast(Sized, dataset))
        if self.source_sizes.sum() != dataset_size:
            raise ValueError(f"source sizes {list(source_sizes)} do not add up to the dataset's {dataset_size} samples")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples or max(dataset_size // num_replicas, 1)
        self.total_size = self.num_samples * num_replicas
        self._starts = np.concatenate([[0], np.cumsum(self.source_sizes)[:-1]])

    def order(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch, MIX])
        sources = rng.choice(len(self.weights), size=self.total_size, p=self.weights / self.weights.sum())
        local = (rng.random(self.total_size) * self.source_sizes[sources]).astype(np.int64)
        return (self._starts[sources] + local)[self.rank :: self.num_replicas].tolist()

    def resume_signature(self) -> dict:
        return {**super().resume_signature(), "weights": self.weights.tolist(),
                "source_sizes": self.source_sizes.tolist()}


def check_mixture(sizes: np.ndarray, weights: np.ndarray) -> None:
    if len(weights) != len(sizes):
        raise ValueError(f"mix_weights needs one weight per data set: {len(weights)} weights for "
                         f"{len(sizes)} data sets")
    if (weights < 0).any() or not weights.sum() > 0:
        raise ValueError(f"mix_weights must be >= 0 and not all 0, got {weights.tolist()}")
    if ((sizes == 0) & (weights > 0)).any():
        raise ValueError(f"a data set with a weight > 0 is empty (sizes {sizes.tolist()})")
