"""DataLoader collate_fn that stacks clips and draws one set of masks per mask configuration.

Masks are made here, in the DataLoader workers, so their cost overlaps with the GPU step. They are
seeded from the batch's identity, (seed, rank, epoch, position of its first sample), and never
from global or per-worker RNG state: the same batch gets the same masks whatever the worker
count, prefetching order or resume point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import default_collate

from .multiblock3d import MaskConfig, mask_rng, sample_multiblock3d


class MaskCollator:
    """collate_fn: list of sample dicts -> batch dict with `masks`, one {context, target} per config.

    Each sample is a dict with `video` (FloatTensor [C, T, H, W]), `label`, `index`, and the
    sampler's `epoch` and `position` (0-based position in this rank's epoch). The first sample's
    (epoch, position) names the batch. A plain object with plain attributes, so it pickles into
    spawned workers.
    """

    def __init__(
        self,
        mask_configs: Sequence[MaskConfig],
        tubelet_size: int,
        patch_size: int,
        seed: int = 0,
        rank: int = 0,
    ):
        # Plain dicts are accepted too, for configs written by hand rather than built by jsonargparse.
        self.mask_configs = tuple(MaskConfig(**c) if isinstance(c, Mapping) else c for c in mask_configs)
        if not self.mask_configs:
            raise ValueError("MaskCollator needs at least one mask configuration")
        if not all(isinstance(c, MaskConfig) for c in self.mask_configs):
            raise TypeError(f"mask_configs must be MaskConfig objects, got {mask_configs!r}")
        if tubelet_size < 1 or patch_size < 1:
            raise ValueError(f"tubelet_size and patch_size must be >= 1, got {tubelet_size}, {patch_size}")
        self.tubelet_size = int(tubelet_size)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.rank = int(rank)

    def grid(self, video_shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a clip shaped [..., T, H, W]."""
        T, H, W = (int(s) for s in video_shape[-3:])
        if T % self.tubelet_size or H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"video of T={T}, H={H}, W={W} does not divide into tubelets of {self.tubelet_size} "
                f"frames and {self.patch_size}x{self.patch_size} patches: T must be a multiple of "
                f"{self.tubelet_size} and H, W multiples of {self.patch_size}"
            )
        return T // self.tubelet_size, H // self.patch_size, W // self.patch_size

    def __call__(self, samples: list[dict]) -> dict:
        batch = default_collate(samples)
        grid = self.grid(batch["video"].shape)
        epoch, position = int(samples[0]["epoch"]), int(samples[0]["position"])
        batch["masks"] = []
        for i, cfg in enumerate(self.mask_configs):
            # One generator per config, so adding a config does not change the others' masks.
            rng = mask_rng(self.seed, self.rank, epoch, position, i)
            context, target = sample_multiblock3d(rng, len(samples), grid, cfg)
            batch["masks"].append({"context": context, "target": target})
        return batch

    def __repr__(self) -> str:
        return (
            f"MaskCollator(mask_configs={list(self.mask_configs)}, tubelet_size={self.tubelet_size}, "
            f"patch_size={self.patch_size}, seed={self.seed}, rank={self.rank})"
        )
