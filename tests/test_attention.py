"""The block-causal mask as a FlexAttention BlockMask (the CUDA path) and as query chunks of the
boolean mask (the CPU path) against the plain boolean mask: the same pairs may attend, and the encoder
gives the same outputs (and, for the chunks, gradients) either way.

FlexAttention has no backward on the CPU (PyTorch raises), so gradients through the BlockMask path
are only exercised on a GPU; on the CPU the training step takes the query chunks."""

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from arjepa_pl.models import KVCache, VisionTransformer, attention, block_causal_mask, next_step_outputs
from arjepa_pl.models.attention import QueryChunks
from arjepa_pl.models.next_step import block_causal_attention_mask, block_causal_chunks
from arjepa_pl.models.vit import MLP


@pytest.mark.parametrize("steps,per_step,prefix", [(3, 80, 0), (3, 80, 2), (4, 50, 3), (5, 1, 0)])
def test_block_mask_allows_exactly_the_block_causal_pairs(steps, per_step, prefix):
    dense = block_causal_mask(steps, per_step, prefix)
    flex = block_causal_attention_mask(steps, per_step, prefix, flex=True)
    n = steps * per_step
    q, kv = torch.arange(n)[:, None], torch.arange(n)[None, :]
    zero = torch.zeros((), dtype=torch.long)
    assert torch.equal(flex.mask_mod(zero, zero, q, kv).expand(n, n), dense)
    # Only the blocks with a pair that may attend are computed (for a long clip, about half of them).
    size = flex.BLOCK_SIZE[0]
    blocks = -(-n // size)
    padded = torch.zeros(blocks * size, blocks * size, dtype=torch.bool)
    padded[:n, :n] = dense
    needed = padded.view(blocks, size, blocks, size).any(3).any(1)
    assert torch.equal(flex.to_dense()[0, 0].bool(), needed)

@pytest.mark.parametrize("steps,prefix", [(7, 0), (7, 3), (4, 2), (3, 0), (2, 0), (1, 0)])
def test_query_chunks_cover_every_query_and_skip_only_hidden_keys(steps, prefix):
    per_step = 3
    dense = block_causal_mask(steps, per_step, prefix)
    chunks = block_causal_chunks(dense, steps, per_step, prefix)
    rebuilt = torch.zeros_like(dense)
    expected_start = 0
    for start, end, keys, rows in chunks.chunks:
        assert start == expected_start and not dense[start:end, keys:].any()  # nothing visible is skipped
        rebuilt[start:end, :keys] = True if rows is None else rows
        expected_start = end
    assert expected_start == steps * per_step and torch.equal(rebuilt, dense)
    if (steps, prefix) == (7, 0):  # e.g. steps 0-2 see keys of steps 0-2, steps 3-6 all: 37 of 49 step blocks
        assert sum((e - s) * k for s, e, k, _ in chunks.chunks) == 37 * per_step**2


def test_the_default_form_on_the_cpu_is_query_chunks_of_the_boolean_mask():
    mask = block_causal_attention_mask(3, 4, 1, "cpu")
    assert isinstance(mask, QueryChunks) and len(mask.chunks) == 2


@pytest.mark.parametrize("prefix", [0, 2])
def test_query_chunks_give_the_outputs_and_gradients_of_the_boolean_mask(prefix):
    torch.manual_seed(0)
    enc, head = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2), MLP(32, 32, 5)
    video = torch.randn(2, 3, 14, 16, 16)  # 7 steps of 2 x 2 tokens
    results = []
    for plain in (True, False):
        enc.zero_grad()
        if plain:
            out = head(enc(video, attn_mask=block_causal_mask(7, 4, prefix)))
        else:
            out = next_step_outputs(enc, head, video, prefix)  # the CPU default: query chunks
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad.clone() for p in enc.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_flex_and_dense_masks_give_the_same_next_step_outputs(monkeypatch):
    # FlexAttention's reference (uncompiled) implementation: the same semantics as the compiled
    # kernels, without the CPU compile (tens of seconds); the compiled CUDA kernels need a GPU to test.
    monkeypatch.setattr(attention, "compiled_flex_attention", lambda: flex_attention)
    torch.manual_seed(0)
    enc = VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2).eval()
    head = MLP(32, 32, 5)
    video = torch.randn(2, 3, 6, 80, 64)  # 3 steps of 10 x 8 tokens: N = 240, two key blocks of 128
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
        for prefix in (0, 2):
            dense = next_step_outputs(enc, head, video, prefix, flex=False)
            flex = next_step_outputs(enc, head, video, prefix, flex=True)
            torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
        # Cached decoding: the first call (no cached tokens) takes the BlockMask, the next ones the
        # boolean rows of the new step; together they equal the whole clip at once.
        caches = [KVCache() for _ in enc.blocks]
        parts = [next_step_outputs(enc, head, video[:, :, :4], 0, caches, flex=True),
                 next_step_outputs(enc, head, video, 0, caches, flex=True)]
        torch.testing.assert_close(torch.cat(parts, 1), next_step_outputs(enc, head, video, 0, flex=False),
                                   atol=1e-5, rtol=1e-5)
