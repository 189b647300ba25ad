"""Scaled dot-product attention under a dense boolean mask or a FlexAttention block mask.

A dense [N, N] boolean mask makes the attention kernels compute all N x N scores and keeps them off
the flash kernels on CUDA. Where the mask has a structure (the block-causal mask of the
autoregressive objectives hides almost half of the scores), a FlexAttention BlockMask lets the kernel
skip every block that is fully masked and compute the rest at flash speed. `attend` takes either;
the code that builds the mask picks the form (arjepa_pl.models.next_step).
"""

import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

# What attention layers accept as a mask: boolean, True = may attend, broadcast over batch and heads
# ([N, N] or [B, 1, N, N]); or a FlexAttention BlockMask.
AttentionMask = Union[torch.Tensor, BlockMask]


@functools.cache
def compiled_flex_attention() -> Callable:
    """flex_attention compiled once: uncompiled it is a slow reference implementation. Inside a
    compiled block the call is traced into the block's graph."""
    return torch.compile(flex_attention, dynamic=False)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[AttentionMask] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, heads, N, head_dim] queries, keys and values."""
    if isinstance(mask, BlockMask):
        return compiled_flex_attention()(q, k, v, block_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def block_mask(mask_mod: Callable, q_len: int, kv_len: int, device: Union[str, torch.device]) -> BlockMask:
    """The BlockMask of `mask_mod(b, h, q, kv) -> may attend`, the same for every sample and head."""
    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=str(device))
