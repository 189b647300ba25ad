"""V-JEPA multiblock-3D masks.

A mask configuration hides `num_blocks` spatio-temporal boxes of the token grid. Everything hidden
is the *target* the predictor must fill in; what is left is the *context* the encoder sees.

Per batch (V-JEPA, Bardes et al., 2024, and its public code):
  1. one block size (t, h, w) is drawn for the whole batch, so every row masks a similar amount;
  2. each sample places its `num_blocks` boxes at its own random positions (inclusive bounds, so
     boxes can touch the last row / column / frame);
  3. a sample whose context came out empty is re-drawn;
  4. every row is cut to the batch's shortest context and shortest target (keeping the lowest
     indices), so the batch stacks into rectangular [B, K] index tensors.

Masks are drawn from an explicit numpy Generator, never from global RNG state; see `mask_rng`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

# A sample is re-drawn while its context is empty. For any sane configuration that is rare (long
# range at 8x14x14: a few % of samples need one retry), so hitting this bound means the
# configuration (almost) always covers the whole grid; fail loudly instead of spinning forever.
MAX_RETRIES = 1000


def _as_range(
    name: str, value, lo_open: float = 0.0, hi: float | None = 1.0, owner: str = "MaskConfig"
) -> tuple[float, float]:
    """Validate a (min, max) pair; YAML hands us lists, so accept any 2-sequence."""
    try:
        lo_v, hi_v = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{name} must be a pair (min, max) of numbers, got {value!r}") from None
    if not (lo_v > lo_open and (hi is None or hi_v <= hi)):
        bound = f"({lo_open:g}, {hi:g}]" if hi is not None else f"> {lo_open:g}"
        raise ValueError(f"{owner}.{name} values must lie in {bound}, got {value!r}")
    if lo_v > hi_v:
        raise ValueError(f"{owner}.{name} must have min <= max, got {value!r}")
    return (lo_v, hi_v)


def _as_count(name: str, value, minimum: int = 1, owner: str = "MaskConfig") -> int:
    """Validate an integer count (bools are not counts, though Python says they are ints)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class MaskConfig:
    """One mask configuration: `num_blocks` boxes whose size is drawn from these ranges.

    spatial_scale:     fraction of the H*W frame one box covers (before the aspect ratio rounding).
    temporal_scale:    fraction of the T time steps one box spans.
    aspect_ratio:      box height / width.
    max_temporal_keep: fraction of the time steps that may be context; later ones are always target
                       (1.0 = no restriction).
    """

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    max_temporal_keep: float = 1.0

    def __post_init__(self):
        # frozen=True forbids plain assignment; object.__setattr__ is the documented way round it.
        object.__setattr__(self, "num_blocks", _as_count("num_blocks", self.num_blocks))
        object.__setattr__(self, "spatial_scale", _as_range("spatial_scale", self.spatial_scale))
        object.__setattr__(self, "temporal_scale", _as_range("temporal_scale", self.temporal_scale))
        object.__setattr__(self, "aspect_ratio", _as_range("aspect_ratio", self.aspect_ratio, hi=None))
        try:
            keep = float(self.max_temporal_keep)
        except (TypeError, ValueError):
            keep = float("nan")  # falls through to the range error below
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"MaskConfig.max_temporal_keep must lie in (0, 1], got {self.max_temporal_keep!r}")
        object.__setattr__(self, "max_temporal_keep", keep)

    def sample(self, rng: np.random.Generator, batch_size: int,
               grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of masks on a (T, H, W) grid, or an image's (H, W) grid taken as one time step."""
        T, H, W = grid if len(grid) == 3 else (1, *grid)
        return sample_multiblock3d(rng, batch_size, (T, H, W), self)


SHORT_RANGE = MaskConfig(8, (0.15, 0.15))
LONG_RANGE = MaskConfig(2, (0.7, 0.7))
VJEPA_DEFAULT_MASKS = (SHORT_RANGE, LONG_RANGE)


def mask_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator for one batch's masks.

    Masks are seeded from (seed, rank, epoch, position-of-batch[, config]) and never from global
    RNG state, so a batch's masks depend only on *which* batch it is: the same on every rerun,
    the same after resuming from a checkpoint, and unaffected by worker count or call order.
    (V-JEPA's public collator keeps a shared counter that is not checkpointed, so resumed runs diverge.)
    All parts must be non-negative integers.
    """
    return np.random.default_rng([int(seed), *(int(k) for k in key)])


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return lo + rng.random() * (hi - lo)


def sample_block_hw(
    rng: np.random.Generator, H: int, W: int, scale: tuple[float, float], aspect_ratio: tuple[float, float]
) -> tuple[int, int]:
    """(h, w) of a box covering ~ U(scale) of an H x W frame with height / width ~ U(aspect_ratio).

    Scale and aspect are drawn independently (the I-JEPA reference draws both from one number, so its
    large blocks are always the tall ones).
    """
    n = int(H * W * _uniform(rng, scale))  # tokens the box should cover
    a = _uniform(rng, aspect_ratio)
    # Clamp to [1, size]: on a tiny grid n can round to 0, and a wide aspect can overflow the frame.
    h = max(1, min(round(math.sqrt(n * a)), H))
    w = max(1, min(round(math.sqrt(n / a)), W))
    return h, w


def sample_block_size(rng: np.random.Generator, grid: tuple[int, int, int], cfg: MaskConfig) -> tuple[int, int, int]:
    """Steps 1-2 above: one (t, h, w) box size, shared by the whole batch."""
    T, H, W = grid
    t = max(1, int(T * _uniform(rng, cfg.temporal_scale)))
    h, w = sample_block_hw(rng, H, W, cfg.spatial_scale, cfg.aspect_ratio)
    return min(t, T), h, w


def place_boxes(rng: np.random.Generator, n: int, grid, size, num_blocks: int) -> np.ndarray:
    """`num_blocks` boxes of `size` at random positions, for n samples: bool [n, num_blocks, T, H, W]."""
    T, H, W = grid
    t, h, w = size
    # Inclusive upper bounds: a box may end exactly at the last frame / row / column.
    start = rng.integers(0, T - t, size=(n, num_blocks), endpoint=True)
    top = rng.integers(0, H - h, size=(n, num_blocks), endpoint=True)
    left = rng.integers(0, W - w, size=(n, num_blocks), endpoint=True)

    # Per axis, which coordinates each box covers: [n, blocks, axis_len]. A box is the outer
    # product of its three interval masks.
    def cover(lo, length, size_):
        r = np.arange(size_)
        return (r >= lo[..., None]) & (r < lo[..., None] + length)

    ct, ch, cw = cover(start, t, T), cover(top, h, H), cover(left, w, W)
    return ct[:, :, :, None, None] & ch[:, :, None, :, None] & cw[:, :, None, None, :]


def sample_target_masks(
    rng: np.random.Generator, batch_size: int, grid: tuple[int, int, int], cfg: MaskConfig
) -> np.ndarray:
    """Boolean target masks before truncation: [B, T, H, W], True = target, False = context.

    This is the whole sampling process except the final truncation; `sample_multiblock3d` is this
    plus `masks_to_indices`, so statistics measured here are those of the real masks.
    """
    T, H, W = (int(g) for g in grid)
    if min(T, H, W) < 1:
        raise ValueError(f"grid must be three positive sizes (T, H, W), got {grid!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    grid = (T, H, W)
    size = sample_block_size(rng, grid, cfg)
    # Frames from `cutoff` on are never context, so they count as target (as in V-JEPA's public code).
    cutoff = max(1, int(T * cfg.max_temporal_keep))

    def draw(n: int) -> np.ndarray:
        m = np.any(place_boxes(rng, n, grid, size, cfg.num_blocks), axis=1)  # union of the boxes
        m[:, cutoff:] = True
        return m

    def no_context(why: str) -> RuntimeError:
        return RuntimeError(
            f"multiblock3d: context is empty {why}: block size (t, h, w)={size} x {cfg.num_blocks} "
            f"blocks (max_temporal_keep {cfg.max_temporal_keep}) on grid {grid}. "
            f"Use smaller scales or fewer blocks: {cfg}"
        )

    if size == grid:  # one box is the whole grid: retrying cannot help
        raise no_context("whatever the positions")
    masks = draw(batch_size)
    for _ in range(MAX_RETRIES):
        empty = masks.reshape(batch_size, -1).all(axis=1)  # no context token left
        if not empty.any():
            return masks
        masks[empty] = draw(int(empty.sum()))  # re-draw only the failed samples' positions
    raise no_context(f"after {MAX_RETRIES} retries")


def first_k_indices(keep: np.ndarray, k: int) -> np.ndarray:
    """Per row of bool [B, N], the k lowest indices where keep is True: int64 [B, k], ascending."""
    keep = keep & (np.cumsum(keep, axis=1) <= k)  # drop every True after the k-th in its row
    # nonzero walks row-major, so each row's k column indices come out in ascending order.
    return np.nonzero(keep)[1].reshape(keep.shape[0], k).astype(np.int64)


def masks_to_indices(masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """bool target masks [B, T, H, W] -> (context [B, Kc], target [B, Kt]) flat (t, h, w) indices.

    Rows differ in length, so each list is cut to the batch minimum, keeping the lowest indices
    (V-JEPA's collator truncates the same way). Context and target stay disjoint because they were complements.
    """
    flat = masks.reshape(masks.shape[0], -1)
    kc = int((~flat).sum(axis=1).min())
    kt = int(flat.sum(axis=1).min())
    return torch.from_numpy(first_k_indices(~flat, kc)), torch.from_numpy(first_k_indices(flat, kt))


def sample_multiblock3d(
    rng: np.random.Generator, batch_size: int, grid: tuple[int, int, int], cfg: MaskConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of multiblock-3D masks: (context, target) LongTensors [B, Kc], [B, Kt].

    Indices are flat positions in the (t, h, w)-ordered token grid, ascending within each row;
    context and target are disjoint per sample and together cover at most T*H*W tokens.
    """
    return masks_to_indices(sample_target_masks(rng, batch_size, grid, cfg))
