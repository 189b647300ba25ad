"""The JEPA predictor: a narrow ViT that fills in target tokens from context tokens."""

from typing import Optional

import torch
from torch import nn

from arjepa_pl.models.rope import Rope3D, RopeTables
from arjepa_pl.models.vit import POSITIONS, Block, Positions, PositionTables, gather_tokens, init_transformer_weights


class JepaPredictor(nn.Module):
    """Maps context features [B, Kc, D_enc] to predicted target features [B, Kt, D_enc].

    Each target slot starts as the learnable mask token of its mask configuration plus the fixed
    position of the token it stands for; context and target slots attend to each other freely, and
    only the target slots are returned.

    With rotary `positions` (V-JEPA 2) nothing is added to the slots: every block rotates queries and
    keys by the position of the token each slot stands for. (V-JEPA 2 sorts context and target slots
    by position first; under full attention the order changes nothing, so this predictor does not.)
    """

    def __init__(
        self,
        encoder_dim: int,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_mask_tokens: int = 2,
        uniform_power: bool = True,
        norm_eps: float = 1e-6,
        positions: Positions = "sincos",
    ):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if embed_dim % num_heads:
            raise ValueError(f"predictor width {embed_dim} is not divisible by {num_heads} heads")
        self.predictor_embed = nn.Linear(encoder_dim, embed_dim)
        # One token per mask configuration: short- and long-range targets are different tasks.
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, 1, embed_dim))
        self.pos_embed = PositionTables(embed_dim, uniform_power) if positions == "sincos" else None
        self.rope = Rope3D(embed_dim // num_heads, positions) if positions != "sincos" else None
        self.predictor_blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, True, norm_eps) for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.predictor_proj = nn.Linear(embed_dim, encoder_dim)
        init_transformer_weights(self, self.predictor_blocks)  # leaves mask tokens at zero

    def forward(
        self,
        context: torch.Tensor,
        context_index: torch.Tensor,
        target_index: torch.Tensor,
        grid: tuple[int, ...],
        mask_token: int = 0,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if not 0 <= mask_token < self.mask_tokens.size(0):
            raise ValueError(f"mask_token {mask_token} out of range: predictor has {self.mask_tokens.size(0)}")
        x = self.predictor_embed(context)
        B, Kt = target_index.shape
        targets = self.mask_tokens[mask_token].expand(B, Kt, -1)
        rope: Optional[RopeTables] = None
        if self.rope is not None:
            rope = self.rope(grid, torch.cat([context_index, target_index], dim=1))
        if self.pos_embed is not None:
            pos = self.pos_embed(grid, x.device, x.dtype).unsqueeze(0).expand(B, -1, -1)
            x = x + gather_tokens(pos, context_index)
            targets = targets + gather_tokens(pos, target_index)
        x = torch.cat([x, targets], dim=1)
        for block in self.predictor_blocks:
            x = block(x, attn_mask, None, rope)
        x = self.predictor_norm(x[:, -Kt:])
        return self.predictor_proj(x)
