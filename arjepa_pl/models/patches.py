"""Patch arithmetic: which token grid an input makes, and clips to patches and back. The one place the
grid is computed: the ViT, the mask collator and the next-step objectives all call `token_grid`."""

from collections.abc import Sequence

import torch


def token_grid(shape: Sequence[int], tubelet: int, patch: int, video: bool) -> tuple[int, ...]:
    """Token grid (T', H', W') of clips [B, C, T, H, W] (video) or (H', W') of images [B, C, H, W].

    Raises a ValueError saying what the sizes must be multiples of when the input does not tile."""
    if len(shape) != (5 if video else 4):
        raise ValueError(f"{'video' if video else 'image'} encoder expects "
                         f"{'[B, C, T, H, W]' if video else '[B, C, H, W]'}, got {tuple(shape)}")
    if video:
        T, H, W = (int(s) for s in shape[-3:])
        if T % tubelet or H % patch or W % patch:
            raise ValueError(f"video of T={T}, H={H}, W={W} does not divide into tubelets of {tubelet} frames and "
                             f"{patch}x{patch} patches "
                             f"(input size not divisible by patch size {(tubelet, patch, patch)}): "
                             f"T must be a multiple of {tubelet} and H, W multiples of {patch}")
        return T // tubelet, H // patch, W // patch
    H, W = (int(s) for s in shape[-2:])
    if H % patch or W % patch:
        raise ValueError(f"image of H={H}, W={W} does not divide into {patch}x{patch} patches (input size not "
                         f"divisible by patch size {(patch, patch)}): H and W must be multiples of {patch}")
    return H // patch, W // patch


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, C * tubelet * patch * patch], tokens in the encoder's (t, h, w) order."""
    B, C, T, H, W = video.shape
    token_grid(video.shape, tubelet, patch, video=True)  # checks that the clip tiles
    x = video.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, T', H', W', C, tubelet, patch, patch]
    return x.reshape(B, (T // tubelet) * (H // patch) * (W // patch), C * tubelet * patch * patch)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """Inverse of patchify: [B, T' * H' * W', C * tubelet * patch * patch] -> [B, C, T, H, W]."""
    B, N, P = patches.shape
    T, H, W = grid
    C = P // (tubelet * patch * patch)
    if N != T * H * W or P != C * tubelet * patch * patch:
        raise ValueError(f"{tuple(patches.shape)} patches do not fill a {grid} grid of "
                         f"({tubelet}, {patch}, {patch}) patches")
    x = patches.reshape(B, T, H, W, C, tubelet, patch, patch).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(B, C, T * tubelet, H * patch, W * patch)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """AIM / MAE targets: every patch (all its channels and frames) to zero mean, unit variance."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def hold_last_frame(patches: torch.Tensor, channels: int, tubelet: int) -> torch.Tensor:
    """Each tubelet patch with its last frame repeated over the tubelet: the copy-last-frame guess for
    the next step, in patch layout [..., C * tubelet * p * p]."""
    x = patches.unflatten(-1, (channels, tubelet, -1))
    return x[..., -1:, :].expand_as(x).flatten(-3)
