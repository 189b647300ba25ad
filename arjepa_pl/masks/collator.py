"""DataLoader collate_fn that stacks clips (or images) and draws one set of masks per mask configuration.

Masks are made here, in the DataLoader workers, so their cost overlaps with the GPU step. They are
seeded from the batch's identity, (seed, rank, epoch, position of its first sample), and never
from global or per-worker RNG state: the same batch gets the same masks whatever the worker
count, prefetching order or resume point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Union

from torch.utils.data import default_collate

from arjepa_pl.models.patches import token_grid

from .multiblock2d import MultiBlock2DConfig
from .multiblock3d import MaskConfig, mask_rng

# Every mask configuration type: a frozen dataclass with `sample(rng, batch_size, grid) -> (context, target)`.
MASK_CONFIG_TYPES = (MaskConfig, MultiBlock2DConfig)
AnyMaskConfig = Union[MaskConfig, MultiBlock2DConfig]


def as_mask_config(config) -> AnyMaskConfig:
    """A mask configuration object, or the one a plain dict's keys name (for configs written by hand
    rather than built by jsonargparse): {num_blocks, spatial_scale, ...} is V-JEPA's multiblock3d,
    {num_targets, target_scale, ...} I-JEPA's multiblock2d; an empty dict is multiblock3d."""
    if isinstance(config, MASK_CONFIG_TYPES):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"a mask configuration must be one of {[t.__name__ for t in MASK_CONFIG_TYPES]} "
                        f"or a dict of its fields, got {config!r}")
    for cls in MASK_CONFIG_TYPES:
        if set(config) <= {f.name for f in dataclasses.fields(cls)}:
            return cls(**config)
    fields = {cls.__name__: sorted(f.name for f in dataclasses.fields(cls)) for cls in MASK_CONFIG_TYPES}
    raise ValueError(f"mask configuration {dict(config)!r} matches no mask type; fields are {fields}")


class MaskCollator:
    """collate_fn: list of sample dicts -> batch dict with `masks`, one {context, target} per config.

    Each sample is a dict with the input under `input_key` (`video`: FloatTensor [C, T, H, W], or
    `image`: [C, H, W]), `label`, `index`, and the sampler's `epoch` and `position` (0-based position
    in this rank's epoch). The first sample's (epoch, position) names the batch. A plain object with
    plain attributes, so it pickles into spawned workers.
    """

    def __init__(
        self,
        mask_configs: Sequence[AnyMaskConfig],
        tubelet_size: int,
        patch_size: int,
        seed: int = 0,
        rank: int = 0,
        input_key: str = "video",
    ):
        self.mask_configs = tuple(as_mask_config(c) for c in mask_configs)
        if not self.mask_configs:
            raise ValueError("MaskCollator needs at least one mask configuration")
        if tubelet_size < 1 or patch_size < 1:
            raise ValueError(f"tubelet_size and patch_size must be >= 1, got {tubelet_size}, {patch_size}")
        self.tubelet_size = int(tubelet_size)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.input_key = input_key

    def grid(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid of a batch: (T', H', W') for clips [B, C, T, H, W], (H', W') for images [B, C, H, W]."""
        return token_grid(shape, self.tubelet_size, self.patch_size, video=len(shape) == 5)

    def __call__(self, samples: list[dict]) -> dict:
        batch = default_collate(samples)
        if self.input_key not in batch:
            raise ValueError(f"MaskCollator expects samples with a {self.input_key!r} tensor, got keys {sorted(batch)}")
        grid = self.grid(batch[self.input_key].shape)
        epoch, position = int(samples[0]["epoch"]), int(samples[0]["position"])
        batch["masks"] = []
        for i, cfg in enumerate(self.mask_configs):
            # One generator per config, so adding a config does not change the others' masks.
            rng = mask_rng(self.seed, self.rank, epoch, position, i)
            context, target = cfg.sample(rng, len(samples), grid)
            batch["masks"].append({"context": context, "target": target})
        return batch

    def __repr__(self) -> str:
        return (
            f"MaskCollator(mask_configs={list(self.mask_configs)}, tubelet_size={self.tubelet_size}, "
            f"patch_size={self.patch_size}, seed={self.seed}, rank={self.rank}, input_key={self.input_key!r})"
        )
