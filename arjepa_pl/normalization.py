"""Pixel normalisation shared by the data (which normalises clips) and the objectives and callbacks
(which turn predictions and inputs back into pictures). A leaf module: it knows neither side."""

from collections.abc import Sequence

import numpy as np
import torch

# ImageNet statistics on the 0-1 scale, the normalisation V-JEPA and every ViT recipe here use.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8_pixels(video: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Normalised clips [B, C, ...] -> uint8 RGB values in the same layout, on the same device."""
    shape = (1, -1) + (1,) * (video.ndim - 2)
    x = video.detach().float() * video.new_tensor(std, dtype=torch.float32).view(shape) \
        + video.new_tensor(mean, dtype=torch.float32).view(shape)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def unnormalise(video: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Normalised clips [B, C, T, H, W] -> uint8 RGB frames [B, T, H, W, C]."""
    return to_uint8_pixels(video, mean, std).cpu().permute(0, 2, 3, 4, 1).numpy()
