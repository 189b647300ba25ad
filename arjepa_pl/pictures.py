"""Pictures that explain a run: where the JEPA masks fall on the clips, and AR rollouts beside the
truth. Pure functions from tensors to uint8 arrays; the callbacks and writers save and log them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD, unnormalise
from arjepa_pl.video_io import to_uint8

STRIPE_RGB = np.array([40.0, 110.0, 255.0], dtype=np.float32)
MASK_CAPTION = "context tokens as the encoder sees them; target tokens grey with blue stripes; the rest dark"


def tile(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """[rows, cols, H, W, 3] -> one [rows*(H+gap)-gap, cols*(W+gap)-gap, 3] picture on white."""
    rows, cols, h, w, c = frames.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            out[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = frames[r, k]
    return out


def mask_pictures(
    video: torch.Tensor,
    masks: Sequence[dict],
    tubelet_size: int,
    patch_size: int,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_frames: int = 4,
    min_size: int = 128,
) -> dict[str, np.ndarray]:
    """One picture per mask configuration, `masks<i>`: a row per clip, `num_frames` frames spread over
    the clip: context tokens as they are, target tokens grey with blue stripes (visible on any colour),
    tokens in neither (dropped to give every clip of the batch the same count) dark.

    Args:
        video: normalised clips [B, C, T, H, W].
        masks: per configuration {"context": [B, Kc], "target": [B, Kt]} flat indices into the
            (T / tubelet_size, H / patch_size, W / patch_size) token grid.
        mean, std: the data's normalisation (default ImageNet's).
        min_size: frames are enlarged (nearest neighbour) to at least this many pixels high.
    """
    rgb = unnormalise(video, mean or IMAGENET_MEAN, std or IMAGENET_STD)  # [B, T, H, W, 3]
    B, T, H, W, _ = rgb.shape
    grid = (T // tubelet_size, H // patch_size, W // patch_size)
    times = np.unique(np.linspace(0, T - 1, min(num_frames, T)).round().astype(int))
    scale = max(1, math.ceil(min_size / H))
    stripes = (np.arange(H)[:, None] + np.arange(W)[None, :]) % 6 < 2  # [H, W] diagonal hatching
    pictures = {}
    for i, mask in enumerate(masks):
        frames = rgb[:, times].astype(np.float32)  # [B, F, H, W, 3]
        for b in range(B):
            labels = np.zeros(math.prod(grid), dtype=np.uint8)  # 0 neither, 1 context, 2 target
            labels[mask["context"][b].cpu().numpy()] = 1
            labels[mask["target"][b].cpu().numpy()] = 2
            labels = labels.reshape(grid)[times // tubelet_size]  # [F, H', W'] tokens of the shown frames
            pixels = labels.repeat(patch_size, axis=1).repeat(patch_size, axis=2)[:, :H, :W]
            f = frames[b]  # a view: edited in place
            target = pixels == 2
            f[target] = 0.7 * f[target].mean(-1, keepdims=True)
            f[target & stripes] = STRIPE_RGB
            f[pixels == 0] *= 0.25
        frames = frames.round().astype(np.uint8).repeat(scale, axis=2).repeat(scale, axis=3)
        pictures[f"masks{i}"] = tile(frames)
    return pictures


CONTEXT_COLOUR, PREDICTION_COLOUR, GAP_COLOUR = (40, 170, 60), (210, 40, 40), (255, 255, 255)


def rollout_strip(context: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor, gap: int = 2) -> np.ndarray:
    """One clip's picture: two rows of frames, context | truth above context | prediction, with white
    gaps between the context and future columns and between the rows. Inputs [C, T, H, W] in [0, 1]."""
    ctx, pred, true = to_uint8(context), to_uint8(prediction), to_uint8(truth)
    _, H, W, C = ctx.shape

    def row(future: np.ndarray) -> np.ndarray:
        blank = np.full((H, gap, C), GAP_COLOUR, np.uint8)
        return np.concatenate([*ctx, blank, *future], axis=1)

    top, bottom = row(true), row(pred)
    return np.concatenate([top, np.full((gap, top.shape[1], C), GAP_COLOUR, np.uint8), bottom], axis=0)


def rollout_frames(context: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """One clip's video: truth beside the model's view (context, then its prediction), each in a 2-px
    border (green on context frames, red on predicted ones for the model). uint8 [T, H + 4, 2W + 12, C]."""
    true = to_uint8(torch.cat([context, truth], 1))
    model = to_uint8(torch.cat([context, prediction], 1))
    T, H, W, C = true.shape
    out = np.full((T, H + 4, 2 * W + 12, C), GAP_COLOUR, np.uint8)
    for t in range(T):
        out[t, :, W + 8:] = PREDICTION_COLOUR if t >= context.size(1) else CONTEXT_COLOUR
        out[t, 2:H + 2, 2:W + 2] = true[t]
        out[t, 2:H + 2, W + 10:2 * W + 10] = model[t]
    return out
