"""Fixed sin-cos position tables for 1-D, 2-D and 3-D token grids.

Positions are not learned (V-JEPA, I-JEPA, AIM all use fixed tables), so a table is a pure function
of the grid: models compute it for whatever grid the input has instead of storing a parameter sized
for one resolution.
"""

import math

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[len(positions), dim] table: half sines, half cosines, frequencies 1 / 10000^(i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _axis_dims(dim: int, num_axes: int, uniform_power: bool) -> list[int]:
    """Channels given to each axis (t first). With uniform_power every axis gets an equal even share
    (rounded up, the surplus cut from the end); otherwise the spatial axes get a quarter each and
    time the rest, so a 2-D grid always splits its channels in half."""
    if num_axes == 2:
        return [dim // 2, dim // 2]
    if uniform_power:
        share = 2 * math.ceil(dim / 6)
        return [share, share, share]
    return [dim // 2, dim // 4, dim // 4]


def sincos_pos_embed(grid: tuple[int, ...], dim: int, uniform_power: bool = True) -> torch.Tensor:
    """[prod(grid), dim] float32 table for a (H, W) or (T, H, W) grid, rows in row-major order."""
    if len(grid) not in (2, 3):
        raise ValueError(f"grid must be (H, W) or (T, H, W), got {grid}")
    dims = _axis_dims(dim, len(grid), uniform_power)
    coords = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    parts = [sincos_1d(d, c.reshape(-1)) for d, c in zip(dims, coords)]
    return torch.cat(parts, dim=1)[:, :dim].float()
