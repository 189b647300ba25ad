"""Mask generators for JEPA-style training."""

from .collator import MASK_CONFIG_TYPES, AnyMaskConfig, MaskCollator, as_mask_config
from .multiblock2d import (
    IJEPA_DEFAULT_MASKS,
    MultiBlock2DConfig,
    block_masks_to_indices,
    sample_block_masks,
    sample_multiblock2d,
)
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
    "MultiBlock2DConfig",
    "IJEPA_DEFAULT_MASKS",
    "sample_multiblock2d",
    "sample_block_masks",
    "block_masks_to_indices",
    "MaskCollator",
    "MASK_CONFIG_TYPES",
    "AnyMaskConfig",
    "as_mask_config",
]
