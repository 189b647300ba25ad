"""A small pixel decoder for frozen token features: what of the input can be read back from them.

A JEPA has no decoder, so it cannot show what its features keep of the pixels; a decoder trained on
top of the frozen features can (MAE's decoder, used here as a probe). Each token's features give its
own patch's pixels through a linear map, after `depth` transformer blocks over all tokens (a patch's
content may sit partly in its neighbours' features after the encoder's attention). It is kept small
on purpose, like a linear probe: a deep decoder would learn to generate rather than to read.
"""

from typing import Optional

import torch
from torch import nn

from arjepa_pl.models.vit import Block, init_transformer_weights


class PixelDecoder(nn.Module):
    """Token features [B, N, dim] -> each token's patch of pixels [B, N, patch_dim].

    Args:
        dim: width of the features read.
        patch_dim: values per patch (channels x tubelet x patch x patch).
        width: width of the decoder's blocks (default: dim); the features are projected to it first.
        depth: transformer blocks over the tokens (0: a per-token linear read-out).
        num_heads: attention heads of those blocks.
    """

    def __init__(self, dim: int, patch_dim: int, width: Optional[int] = None, depth: int = 1, num_heads: int = 4):
        super().__init__()
        if depth < 0 or patch_dim < 1:
            raise ValueError(f"depth must be >= 0 and patch_dim >= 1, got {depth}, {patch_dim}")
        width = width or dim
        self.embed = nn.Linear(dim, width) if width != dim else nn.Identity()
        self.blocks = nn.ModuleList(Block(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.out = nn.Linear(width, patch_dim)
        init_transformer_weights(self, self.blocks)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))
