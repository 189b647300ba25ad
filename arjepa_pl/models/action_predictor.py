"""The action-conditioned predictor both world models share: a narrow transformer over the tokens of each
frame plus one action token per step, under a block-causal mask (V-JEPA 2-AC, Assran et al., 2025).

Step t is the N tokens of frame t followed by the token of action t, the action that leads from frame t
to frame t + 1. Every token of step t attends to every token of steps <= t and to nothing later, so
the outputs at frame t's tokens may predict frame t + 1 (its latent for JEPA, its patches for AR):
they have seen the frame and the action that produce it, and no later frame or action.

Positions are fixed sin-cos tables (pure functions of the grid): (t, h, w) for frame tokens, t for
action tokens (which also carry a learned type embedding). Because no token attends to a later step,
a rollout can feed one step at a time against a KVCache of the earlier ones and get exactly the
outputs of running the whole sequence (`start` says which step the new tokens are).
"""

from typing import Optional

import torch
from torch import nn

from arjepa_pl.models.next_step import block_causal_mask
from arjepa_pl.models.pos_embed import sincos_1d, sincos_pos_embed
from arjepa_pl.models.vit import Block, KVCache, init_transformer_weights


class ActionConditionedPredictor(nn.Module):
    """[B, T, N, in_dim] frame tokens and [B, T, action_dim] actions -> [B, T, N, out_dim]: the output at
    (t, i) is the prediction for token i of frame t + 1.

    Args:
        in_dim: width of the frame tokens fed in (the encoder's).
        out_dim: width of each output (the encoder's for latent prediction, a patch's pixels for AR).
        grid: (H', W') token grid of one frame.
        action_dim: values per action.
        embed_dim / depth / num_heads / mlp_ratio: the transformer.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], action_dim: int = 2, embed_dim: int = 96,
                 depth: int = 4, num_heads: int = 3, mlp_ratio: float = 4.0, norm_eps: float = 1e-6):
        super().__init__()
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be the (H', W') token grid of a frame, got {grid}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sin-cos positions), got {embed_dim}")
        self.grid, self.action_dim, self.embed_dim = tuple(grid), action_dim, embed_dim
        self.tokens_per_frame = grid[0] * grid[1]
        self.config = dict(in_dim=in_dim, out_dim=out_dim, grid=list(grid), action_dim=action_dim, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps)
        self.frame_embed = nn.Linear(in_dim, embed_dim)
        self.action_embed = nn.Linear(action_dim, embed_dim)
        self.action_type = nn.Parameter(torch.zeros(embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, True, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.proj = nn.Linear(embed_dim, out_dim)
        init_transformer_weights(self, self.blocks)
        nn.init.trunc_normal_(self.action_type, std=0.02)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _positions(self, start: int, steps: int, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame positions [steps, N, D], action positions [steps, D]) of steps start .. start + steps - 1,
        cut from tables that grow (doubling) when a longer sequence comes."""
        key = (device, dtype)
        cached = self._tables.get(key)
        if cached is None or cached[1].size(0) < start + steps:
            length = max(start + steps, 2 * (0 if cached is None else cached[1].size(0)), 16)
            frames = sincos_pos_embed((length, *self.grid), self.embed_dim).view(length, self.tokens_per_frame, -1)
            actions = sincos_1d(self.embed_dim, torch.arange(length)).float()
            cached = (frames.to(device, dtype), actions.to(device, dtype))
            self._tables[key] = cached
        return cached[0][start:start + steps], cached[1][start:start + steps]

    def forward(self, frames: torch.Tensor, actions: torch.Tensor, caches: Optional[list[KVCache]] = None,
                start: int = 0) -> torch.Tensor:
        """frames [B, T, N, in_dim] and actions [B, T, action_dim] of steps start .. start + T - 1 ->
        predictions [B, T, N, out_dim] for frames start + 1 .. start + T.

        With `caches` (one KVCache per block, holding steps 0 .. start - 1), only the new steps are run."""
        B, T, N, _ = frames.shape
        if N != self.tokens_per_frame:
            raise ValueError(f"frames have {N} tokens, the predictor's grid {self.grid} has {self.tokens_per_frame}")
        if actions.shape != (B, T, self.action_dim):
            raise ValueError(f"actions must be [{B}, {T}, {self.action_dim}] for these frames, "
                             f"got {tuple(actions.shape)}")
        if caches is not None and (len(caches) != len(self.blocks) or len(caches[0]) != start * (N + 1)):
            raise ValueError(f"need {len(self.blocks)} caches holding the {start} steps before this one")
        x = self.frame_embed(frames)
        frame_pos, action_pos = self._positions(start, T, x.device, x.dtype)
        x = x + frame_pos
        a = self.action_embed(actions.to(x.dtype)) + action_pos + self.action_type
        tokens = torch.cat([x, a.unsqueeze(2)], dim=2).flatten(1, 2)  # [B, T * (N + 1), D], step-major
        mask = block_causal_mask(start + T, N + 1, device=x.device)[start * (N + 1):] if T > 1 else None
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, mask, None if caches is None else caches[i])
        tokens = tokens.view(B, T, N + 1, -1)[:, :, :N]  # the action tokens' outputs predict nothing
        return self.proj(self.norm(tokens))

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]
