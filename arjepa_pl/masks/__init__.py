"""Mask generators for JEPA-style training."""

from .collator import MaskCollator
from .multiblock3d import (
    LONG_RANGE,
    SHORT_RANGE,
    VJEPA_DEFAULT_MASKS,
    MaskConfig,
    mask_rng,
    masks_to_indices,
    sample_multiblock3d,
    sample_target_masks,
)

__all__ = [
    "MaskConfig",
    "SHORT_RANGE",
    "LONG_RANGE",
    "VJEPA_DEFAULT_MASKS",
    "sample_multiblock3d",
    "sample_target_masks",
    "masks_to_indices",
    "mask_rng",
    "MaskCollator",
]
