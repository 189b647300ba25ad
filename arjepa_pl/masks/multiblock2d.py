"""I-JEPA multi-block masks on a 2-D (H, W) token grid.

Per batch (I-JEPA, Assran et al., 2023, and its public code):
  1. one target block size (h, w) ~ scale U(0.15, 0.2) of the grid, aspect U(0.75, 1.5), and one
     context block size ~ scale U(0.85, 1.0), aspect 1, both shared by the whole batch;
  2. each sample places `num_targets` target blocks and one context block at its own random positions,
     over the *full* grid (inclusive upper bounds: blocks can touch the last row and column; the
     reference's exclusive bound never covers them, ijepa #60);
  3. the context is the context block minus every target block, so the encoder never sees a token it
     must predict; a sample whose context has fewer than `min_keep` tokens is re-drawn;
  4. the context is cut to the batch's shortest (keeping the lowest indices).

Unlike V-JEPA's union of blocks, each target block is predicted on its own, so targets come out as
[B, num_targets, K]: the objective folds the blocks into the batch for the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import multiblock3d
from .multiblock3d import _as_count, _as_range, first_k_indices, place_boxes, sample_block_hw

_OWNER = "MultiBlock2DConfig"


@dataclass(frozen=True)
class MultiBlock2DConfig:
    """One I-JEPA mask configuration (defaults: the I-JEPA paper's).

    num_targets:          target blocks per sample, each predicted separately.
    target_scale:         fraction of the H*W grid one target block covers.
    target_aspect_ratio:  target block height / width.
    context_scale:        fraction of the grid the context block covers (before the targets are removed).
    context_aspect_ratio: context block height / width.
    min_keep:             fewest context tokens a sample may have; fewer and its blocks are re-drawn.
    """

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect_ratio: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 10

    def __post_init__(self):
        set_ = object.__setattr__  # frozen dataclass: the documented way to normalise fields
        set_(self, "num_targets", _as_count("num_targets", self.num_targets, owner=_OWNER))
        set_(self, "min_keep", _as_count("min_keep", self.min_keep, owner=_OWNER))
        for name in ("target_scale", "context_scale"):
            set_(self, name, _as_range(name, getattr(self, name), owner=_OWNER))
        for name in ("target_aspect_ratio", "context_aspect_ratio"):
            set_(self, name, _as_range(name, getattr(self, name), hi=None, owner=_OWNER))

    def sample(self, rng: np.random.Generator, batch_size: int,
               grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of masks on an (H, W) grid (or a (1, H, W) one)."""
        if len(grid) == 3:
            if grid[0] != 1:
                raise ValueError(f"I-JEPA multi-block masks are 2-D, but the token grid is {tuple(grid)} (video): "
                                 "use an image encoder (video: false), or MaskConfig masks for video")
            grid = grid[1:]
        H, W = grid
        return sample_multiblock2d(rng, batch_size, (H, W), self)


IJEPA_DEFAULT_MASKS = (MultiBlock2DConfig(),)


def sample_block_masks(
    rng: np.random.Generator, batch_size: int, grid: tuple[int, int], cfg: MultiBlock2DConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Masks before truncation: (targets bool [B, num_targets, H, W], context bool [B, H, W]).

    This is the whole sampling process except the truncation; `sample_multiblock2d` is this plus
    `block_masks_to_indices`, so statistics measured here are those of the real masks.
    """
    H, W = (int(g) for g in grid)
    if min(H, W) < 1 or len(grid) != 2:
        raise ValueError(f"grid must be two positive sizes (H, W), got {grid!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target_hw = sample_block_hw(rng, H, W, cfg.target_scale, cfg.target_aspect_ratio)
    context_hw = sample_block_hw(rng, H, W, cfg.context_scale, cfg.context_aspect_ratio)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        # place_boxes works on (T, H, W) grids: an image is one time step.
        targets = place_boxes(rng, n, (1, H, W), (1, *target_hw), cfg.num_targets)[:, :, 0]
        context = place_boxes(rng, n, (1, H, W), (1, *context_hw), 1)[:, 0, 0]
        return targets, context & ~targets.any(axis=1)

    def too_small(why: str) -> RuntimeError:
        return RuntimeError(
            f"multiblock2d: fewer than min_keep={cfg.min_keep} context tokens {why}: context block "
            f"{context_hw}, {cfg.num_targets} target blocks {target_hw} on grid {(H, W)}. Use a larger "
            f"grid, fewer or smaller targets, or a smaller min_keep: {cfg}"
        )

    if context_hw[0] * context_hw[1] < cfg.min_keep:  # even with no target inside it
        raise too_small("whatever the positions")
    targets, context = draw(batch_size)
    for _ in range(multiblock3d.MAX_RETRIES):
        short = context.reshape(batch_size, -1).sum(axis=1) < cfg.min_keep
        if not short.any():
            return targets, context
        targets[short], context[short] = draw(int(short.sum()))  # re-draw only those samples
    raise too_small(f"after {multiblock3d.MAX_RETRIES} retries")


def block_masks_to_indices(targets: np.ndarray, context: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, P, H, W], context [B, H, W]) -> (context [B, Kc], target [B, P, Kt]) flat indices.

    Each row keeps its lowest indices, cut to the batch minimum: the context because samples differ
    in how much of it the targets removed; the target blocks all have the batch's block size, so
    for them the cut never removes anything.
    """
    B, P = targets.shape[:2]
    context = context.reshape(B, -1)
    targets = targets.reshape(B * P, -1)
    kc, kt = int(context.sum(axis=1).min()), int(targets.sum(axis=1).min())
    target_index = first_k_indices(targets, kt).reshape(B, P, kt)
    return torch.from_numpy(first_k_indices(context, kc)), torch.from_numpy(target_index)


def sample_multiblock2d(
    rng: np.random.Generator, batch_size: int, grid: tuple[int, int], cfg: MultiBlock2DConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of I-JEPA masks: (context [B, Kc], target [B, num_targets, Kt]) LongTensors.

    Indices are flat row-major positions in the (H, W) grid, ascending within each row; the context
    is disjoint from every target block of its sample.
    """
    return block_masks_to_indices(*sample_block_masks(rng, batch_size, grid, cfg))
