"""Clip transforms: one crop box and one flip decision shared by every frame.

Pure numpy/torch, no decoding. Randomness always comes from a caller-supplied
numpy Generator, so a sample's augmentation is a function of its seed alone.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 1.35),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop, with torchvision's RandomResizedCrop rules.

    Area fraction ~ U(scale), aspect ratio w/h log-uniform in `ratio`; 10 tries to
    fit inside the frame, then a centre crop of the whole frame clamped to `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w

    # Fallback: the whole frame, trimmed to the nearest allowed aspect ratio.
    frame_ratio = width / height
    if frame_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif frame_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred square.

    Resized to the output size afterwards, this equals the usual eval transform
    'resize the short side, then centre crop'.
    """
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def spatial_crop_boxes(height: int, width: int, num_views: int) -> list[tuple[int, int, int, int]]:
    """num_views largest squares spread evenly along the long side (left, centre, right for 3).

    The multi-view evaluation of video probes: each view is resized to the output size, so
    together they cover the whole frame. One view is the centre crop.
    """
    if num_views == 1:
        return [center_crop_box(height, width)]
    side = min(height, width)
    slack_h, slack_w = height - side, width - side
    return [(round(slack_h * i / (num_views - 1)), round(slack_w * i / (num_views - 1)), side, side)
            for i in range(num_views)]


def clip_to_tensor(
    frames_uint8: np.ndarray,
    box: tuple[int, int, int, int],
    out_size: int,
    hflip: bool,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> normalised float32 [3, T, out_size, out_size].

    Ordered for speed: crop and resize the uint8 frames, which are already laid out as a
    channels-last [T, 3, h, w] batch for torch's vectorised uint8 bilinear kernel (3-4x faster
    than on floats; it rounds to the nearest grey level), then convert and normalise only the
    out_size x out_size result, straight into the [3, T, S, S] layout the model wants.
    """
    if frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
        raise ValueError(f"expected frames of shape [T, H, W, 3], got {tuple(frames_uint8.shape)}")
    top, left, h, w = box
    crop = torch.from_numpy(frames_uint8[:, top : top + h, left : left + w]).permute(0, 3, 1, 2)
    if (h, w) != (out_size, out_size):
        crop = F.interpolate(crop, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=False)
    if hflip:
        # After the resize, so a flipped sample is the exact mirror of the unflipped one.
        crop = crop.flip(-1)
    x = torch.empty((3, crop.shape[0], out_size, out_size), dtype=torch.float32)
    x.copy_(crop.permute(1, 0, 2, 3))  # layout change and uint8 -> float in one pass
    # (x / 255 - mean) / std as one multiply and one subtract.
    scale, shift = _normalisation(tuple(mean), tuple(std))
    return x.mul_(scale).sub_(shift)


@functools.lru_cache(maxsize=8)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    return 1.0 / (255.0 * std_t), mean_t / std_t
