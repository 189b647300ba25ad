"""Next-step video prediction with the V-JEPA ViT: patches, block-causal attention, an MLP head.

A clip of T frames with tubelets of `tubelet_size` frames is T' = T / tubelet_size *steps*; each step
is S = H' x W' tokens. Under the block-causal mask every token of step t attends to every token of
steps <= t, so the output at (t, i) may predict patch i of step t + 1 and all patches of the next step
are predicted in parallel (frame-level causality beats token-level causality for world models, as the DINO-WM ablations
show).
"""

import functools
from typing import Optional, Union

import torch
from torch import nn

from arjepa_pl.models.attention import AttentionMask, QueryChunks, block_mask
from arjepa_pl.models.vit import KVCache, VisionTransformer


def block_causal_mask(num_steps: int, tokens_per_step: int, prefix_steps: int = 0,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """Boolean [N, N] attention mask, True = may attend, N = num_steps * tokens_per_step.

    Token (t, i) sees every token of steps <= t (its own step included, bidirectionally). The first
    `prefix_steps` steps additionally see each other (AIM's prefix attention): their outputs have seen
    what they would predict, so objectives leave them out of the loss.
    """
    index = torch.arange(num_steps * tokens_per_step, device=device)
    return may_attend(index[:, None], index[None, :], tokens_per_step, prefix_steps)


def may_attend(query: torch.Tensor, key: torch.Tensor, tokens_per_step: int, prefix_steps: int) -> torch.Tensor:
    """The block-causal rule on token indices (broadcast): a key of the query's step or an earlier one,
    or both in the prefix. The one rule of the dense mask and of the FlexAttention mask_mod."""
    q_step, kv_step = query // tokens_per_step, key // tokens_per_step
    return (kv_step <= q_step) | ((q_step < prefix_steps) & (kv_step < prefix_steps))


def block_causal_attention_mask(num_steps: int, tokens_per_step: int, prefix_steps: int = 0,
                                device: Union[str, torch.device, None] = None,
                                flex: Optional[bool] = None) -> AttentionMask:
    """The block-causal mask in the form attention runs fastest: with `flex` a FlexAttention BlockMask
    (only the blocks on or below the step diagonal are computed: about half of the scores for long
    clips), else the boolean mask of block_causal_mask in two QueryChunks (block_causal_chunks).
    `flex` None: on CUDA, where FlexAttention compiles to flash-like kernels (on the CPU it is slower
    than SDPA's own kernel and has no backward)."""
    device = torch.device(device or "cpu")
    if flex is None:
        flex = device.type == "cuda"
    if not flex:
        return block_causal_chunks(block_causal_mask(num_steps, tokens_per_step, prefix_steps, device),
                                   num_steps, tokens_per_step, prefix_steps)
    return _block_causal_block_mask(num_steps, tokens_per_step, prefix_steps, str(device))


def block_causal_chunks(mask: torch.Tensor, num_steps: int, tokens_per_step: int, prefix_steps: int) -> QueryChunks:
    """The block-causal `mask` [N, N] as two ranges of whole steps: the first s steps attend only to the
    keys of steps < max(s, prefix_steps), the others to every key. s minimises the scores computed
    (for 7 steps and no prefix: 4 x 4 + 3 x 7 = 37 step blocks of 49, a quarter of them skipped)."""
    def cost(s: int) -> int:
        return s * max(s, prefix_steps) + (num_steps - s) * num_steps

    split = min(range(1, num_steps), key=cost, default=0)
    if split == 0 or cost(split) >= num_steps * num_steps:
        return QueryChunks(((0, mask.size(0), mask.size(1), mask),))
    rows, keys = split * tokens_per_step, max(split, prefix_steps) * tokens_per_step
    first, rest = mask[:rows, :keys], mask[rows:]
    return QueryChunks(((0, rows, keys, None if first.all() else first), (rows, mask.size(0), mask.size(1), rest)))


@functools.lru_cache(maxsize=32)
def _block_causal_block_mask(num_steps: int, tokens_per_step: int, prefix_steps: int, device: str):
    def mask_mod(b, h, q, kv):
        return may_attend(q, kv, tokens_per_step, prefix_steps)

    n = num_steps * tokens_per_step
    return block_mask(mask_mod, n, n, device)


def next_step_outputs(encoder: VisionTransformer, head: nn.Module, video: torch.Tensor, prefix_steps: int = 0,
                      caches: Optional[list[KVCache]] = None, flex: Optional[bool] = None) -> torch.Tensor:
    """The encoder under the block-causal mask, then the head: [B, C, T, H, W] -> [B, N, out].

    The output at token (t, i) is the prediction for patch i of step t + 1 (the last step's outputs
    predict beyond the clip: rollouts use them). With `caches` (one KVCache per block) only the tokens
    not cached yet are run; that gives the same outputs as running the whole clip again, because no
    token attends to a later step. `flex`: see block_causal_attention_mask (cached decoding always
    uses the boolean rows of the new tokens).
    """
    if not encoder.video:
        raise ValueError("next-step prediction needs a video encoder (video=True)")
    T, H, W = encoder.token_grid(video.shape)
    start = 0 if caches is None or not caches else len(caches[0])
    if start % (H * W) or start >= T * H * W:
        raise ValueError(f"the cache holds {start} tokens: not a whole number of steps before the last "
                         f"of this {T}-step clip ({H * W} tokens per step)")
    attn_mask: Optional[AttentionMask]
    if start == 0:
        attn_mask = None if T == 1 else block_causal_attention_mask(T, H * W, prefix_steps, video.device, flex)
    else:
        mask = block_causal_mask(T, H * W, prefix_steps, video.device)[start:]
        # Nothing hidden (e.g. one new step after the cache): no mask, so the unmasked kernels run.
        attn_mask = None if mask.all() else mask
    # Through the encoder's forward (not its parts), so FSDP2 and compile see every parameter use.
    return head(encoder(video, attn_mask=attn_mask, caches=caches))
