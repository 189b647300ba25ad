"""Scaled dot-product attention under a dense boolean mask or a FlexAttention block mask.

A dense [N, N] boolean mask makes the attention kernels compute all N x N scores and keeps them off
the flash kernels on CUDA. Where the mask has a structure (the block-causal mask of the
autoregressive objectives hides almost half of the scores), a FlexAttention BlockMask lets the kernel
skip every block that is fully masked and compute the rest at flash speed. On the CPU, where
FlexAttention is slower than SDPA, QueryChunks skips part of the hidden scores with SDPA itself: the
queries are split into row ranges, each attending only to the keys its rows may see (exact: a hidden
key adds nothing to a softmax). `attend` takes any of the three; the code that builds the mask picks
the form (arjepa_pl.models.next_step).
"""

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


@dataclass(frozen=True)
class QueryChunks:
    """A boolean mask as row ranges: queries [start, end) attend to keys [0, keys) under `mask`
    ([end - start, keys], True = may attend; None = all of them). The ranges cover every query once,
    in order, and no query may attend to a key past its range's `keys`."""

    chunks: tuple[tuple[int, int, int, Optional[torch.Tensor]], ...]


# What attention layers accept as a mask: boolean, True = may attend, broadcast over batch and heads
# ([N, N] or [B, 1, N, N]); a FlexAttention BlockMask; or QueryChunks.
AttentionMask = Union[torch.Tensor, BlockMask, QueryChunks]


@functools.cache
def compiled_flex_attention() -> Callable:
    """flex_attention compiled once: uncompiled it is a slow reference implementation. Inside a
    compiled block the call is traced into the block's graph."""
    return torch.compile(flex_attention, dynamic=False)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[AttentionMask] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, heads, N, head_dim] queries, keys and values."""
    if isinstance(mask, BlockMask):
        return compiled_flex_attention()(q, k, v, block_mask=mask)
    if isinstance(mask, QueryChunks):
        return torch.cat([F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :keys], v[:, :, :keys],
                                                         attn_mask=rows)
                          for start, end, keys, rows in mask.chunks], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def block_mask(mask_mod: Callable, q_len: int, kv_len: int, device: Union[str, torch.device]) -> BlockMask:
    """The BlockMask of `mask_mod(b, h, q, kv) -> may attend`, the same for every sample and head."""
    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=str(device))
