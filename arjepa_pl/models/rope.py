"""3-D rotary position embeddings (RoPE) for video tokens, as V-JEPA 2 uses them instead of sin-cos tables.

Each attention head's channels are cut into three equal even parts (2 * (head_dim // 3 // 2) channels
each; the few left over are not rotated): the first is rotated by the token's frame index, the second
by its row, the third by its column. Queries and keys are rotated, values are not, so positions enter
only through the attention scores. Nothing is learned and nothing is sized for one grid: any clip
length or resolution works without interpolating a table.

Two frequency layouts (`positions` of VisionTransformer / JepaPredictor):

- "rope": true rotary embeddings. Channel pair (2i, 2i+1) of an axis part is rotated by the angle
  position * omega_i, omega_i = 10000^(-i / (part / 2)). A rotation preserves dot products, so the score
  between a query at p and a key at s depends on p - s only (tests check this).
- "rope_vjepa2": V-JEPA 2's published layout (facebookresearch/vjepa2; transformers' VJEPA2Model).
  Its frequency vector is the part/2 frequencies written twice (concatenated, not interleaved), so
  pair (2i, 2i+1) gets two *different* frequencies omega_{2i mod part/2} and omega_{2i+1 mod part/2}:
  the map is not a rotation and the scores also depend on absolute positions. The public weights were
  trained with it (the upstream code keeps it for that reason), so loading them needs it. Upstream
  computes the angles in the activations' dtype (bf16 under autocast); here they are always float32.
"""

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

ROPE_POSITIONS = ("rope", "rope_vjepa2")


def axis_channels(head_dim: int) -> int:
    """Channels of a head rotated by each of time, height and width (V-JEPA 2's split)."""
    return 2 * ((head_dim // 3) // 2)


def grid_coordinates(grid: Sequence[int], index: Optional[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """(frame, row, column) of flat token indices (all tokens of `grid` when index is None), each shaped
    like `index` (or [N]); float32. A 2-D (H, W) grid is one frame."""
    if len(grid) not in (2, 3):
        raise ValueError(f"grid must be (H, W) or (T, H, W), got {tuple(grid)}")
    H, W = grid[-2:]
    flat = torch.arange(math.prod(grid), device=device) if index is None else index.to(device)
    return [(flat // (H * W)).float(), ((flat // W) % H).float(), (flat % W).float()]


class RopeTables(NamedTuple):
    """The rotation of every channel of the tokens of one forward pass, [B or 1, 1, N, head_dim]: `cos`,
    and `sin` with the sign of each pair's rotation folded in (-sin on channel 2i, +sin on 2i+1); the
    channels left unrotated have cos 1 and sin 0. `rotate` applies them to queries or keys
    [B, heads, N, head_dim]: channel pair (x0, x1) -> (x0 cos0 - x1 sin0, x1 cos1 + x0 sin1)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        # Full-width tables and a pair swap (flip) instead of slicing, negating and concatenating: a
        # few elementwise ops, several times faster than the slice / stack / cat form on small heads.
        partner = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return x * self.cos.to(x.dtype) + partner * self.sin.to(x.dtype)


class Rope3D(nn.Module):
    """Builds the RopeTables of a set of tokens; no parameters and no buffers (state dicts are those of
    a model without positions)."""

    def __init__(self, head_dim: int, positions: str = "rope"):
        super().__init__()
        if positions not in ROPE_POSITIONS:
            raise ValueError(f"rotary positions must be one of {ROPE_POSITIONS}, got {positions!r}")
        self.part = axis_channels(head_dim)
        if self.part == 0 or head_dim % 2:
            raise ValueError(f"3-D rotary embeddings need heads of an even number >= 6 of channels, got {head_dim}")
        self.head_dim, self.positions = head_dim, positions

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, channels_per_axis={self.part}, positions={self.positions!r}"

    def frequencies(self, device: torch.device) -> torch.Tensor:
        """[part] frequency of each channel of one axis part (the same for t, h and w)."""
        half = self.part // 2
        # Computed exactly as upstream does (float32 arange / half, then 10000^-x), so that the
        # "rope_vjepa2" angles are bit-identical to theirs.
        omega = torch.arange(half, dtype=torch.float32, device=device) / (self.part / 2.0)
        omega = 1.0 / 10000**omega
        return omega.repeat_interleave(2) if self.positions == "rope" else omega.repeat(2)

    def forward(self, grid: Sequence[int], index: Optional[torch.Tensor] = None,
                device: Optional[torch.device] = None) -> RopeTables:
        """Tables for the tokens at flat indices `index` [B, K] of `grid` (None: every token, in order)."""
        device = index.device if index is not None else (device or torch.device("cpu"))
        freq = self.frequencies(device)
        angles = torch.cat([c.unsqueeze(-1) * freq for c in grid_coordinates(grid, index, device)], dim=-1)
        angles = angles.unsqueeze(-3)  # a heads axis: [B, 1, K, 3 * part] or [1, N, 3 * part]
        if angles.ndim == 3:
            angles = angles.unsqueeze(0)
        rest = self.head_dim - angles.size(-1)
        cos = torch.cat([angles.cos(), angles.new_ones(*angles.shape[:-1], rest)], dim=-1)
        sign = torch.tensor([-1.0, 1.0], device=device).repeat(self.head_dim // 2)
        sin = torch.cat([angles.sin(), angles.new_zeros(*angles.shape[:-1], rest)], dim=-1) * sign
        return RopeTables(cos, sin)
