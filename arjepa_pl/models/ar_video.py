"""Next-step video prediction with the V-JEPA ViT: patches, block-causal attention, an MLP head.

A clip of T frames with tubelets of `tubelet_size` frames is T' = T / tubelet_size *steps*; each step
is S = H' x W' tokens. Under the block-causal mask every token of step t attends to every token of
steps <= t, so the output at (t, i) may predict patch i of step t + 1 and all patches of the next step
are predicted in parallel (REFERENCE §5: frame-level causality beats token-level causality for world
models).
"""

from typing import Optional

import torch
from torch import nn

from arjepa_pl.models.vit import KVCache, VisionTransformer


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, C * tubelet * patch * patch], tokens in the encoder's (t, h, w) order."""
    B, C, T, H, W = video.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"clip {tuple(video.shape[2:])} is not divisible into ({tubelet}, {patch}, {patch}) patches")
    x = video.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, T', H', W', C, tubelet, patch, patch]
    return x.reshape(B, (T // tubelet) * (H // patch) * (W // patch), C * tubelet * patch * patch)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """Inverse of patchify: [B, T' * H' * W', C * tubelet * patch * patch] -> [B, C, T, H, W]."""
    B, N, P = patches.shape
    T, H, W = grid
    C = P // (tubelet * patch * patch)
    if N != T * H * W or P != C * tubelet * patch * patch:
        raise ValueError(f"{tuple(patches.shape)} patches do not fill a {grid} grid of ({tubelet}, {patch}, {patch}) patches")
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


def block_causal_mask(num_steps: int, tokens_per_step: int, prefix_steps: int = 0,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """Boolean [N, N] attention mask, True = may attend, N = num_steps * tokens_per_step.

    Token (t, i) sees every token of steps <= t (its own step included, bidirectionally). The first
    `prefix_steps` steps additionally see each other (AIM's prefix attention): their outputs have seen
    what they would predict, so objectives leave them out of the loss.
    """
    step = torch.arange(num_steps, device=device).repeat_interleave(tokens_per_step)
    mask = step[None, :] <= step[:, None]
    if prefix_steps > 1:
        in_prefix = step < prefix_steps
        mask |= in_prefix[None, :] & in_prefix[:, None]
    return mask


def next_step_outputs(encoder: VisionTransformer, head: nn.Module, video: torch.Tensor, prefix_steps: int = 0,
                      caches: Optional[list[KVCache]] = None) -> torch.Tensor:
    """The encoder under the block-causal mask, then the head: [B, C, T, H, W] -> [B, N, out].

    The output at token (t, i) is the prediction for patch i of step t + 1 (the last step's outputs
    predict beyond the clip: rollouts use them). With `caches` (one KVCache per block) only the tokens
    not cached yet are run; that gives the same outputs as running the whole clip again, because no
    token attends to a later step.
    """
    if not encoder.video:
        raise ValueError("next-step prediction needs a video encoder (video=True)")
    T, H, W = encoder.token_grid(video.shape)
    tokens = encoder.embed(video)
    start = 0 if caches is None else len(caches[0])
    if start % (H * W) or start >= tokens.size(1):
        raise ValueError(f"the cache holds {start} tokens: not a whole number of steps before the last "
                         f"of this {T}-step clip ({H * W} tokens per step)")
    mask = block_causal_mask(T, H * W, prefix_steps, tokens.device)[start:]
    if mask.all():
        mask = None  # nothing hidden (e.g. one new step after the cache): use the unmasked kernels
    return head(encoder.forward_tokens(tokens[:, start:], mask, caches))
