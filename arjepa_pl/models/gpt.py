"""A GPT-style byte-level language model built from the same transformer Block as the ViT.

Vocabulary = the 256 byte values, so any text (or file) is a token sequence with no tokenizer files to
download. Fixed sin-cos positions, like the ViT; input embedding and output layer share weights.
"""

import math
from typing import Any, Optional

import torch
from torch import nn

from arjepa_pl.models.next_step import block_causal_mask
from arjepa_pl.models.pos_embed import sincos_1d
from arjepa_pl.models.sampling import sample_logits
from arjepa_pl.models.vit import Block, KVCache, init_transformer_weights


class ByteGPT(nn.Module):
    """Causal LM over bytes: forward(idx [B, L]) -> next-byte logits [B, L, 256].

    With `caches` (one KVCache per block) `idx` holds only the new tokens, placed after the cached ones.
    """

    pos_table: torch.Tensor  # buffer (register_buffer)

    def __init__(
        self,
        embed_dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_seq_len: int = 256,
        vocab_size: int = 256,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
        self.embed_dim, self.max_seq_len, self.vocab_size = embed_dim, max_seq_len, vocab_size
        self.config: dict[str, Any] = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           max_seq_len=max_seq_len, vocab_size=vocab_size, norm_eps=norm_eps)
        self.tok_embed = nn.Embedding(vocab_size, embed_dim)
        self.embed_scale = math.sqrt(embed_dim)
        self.register_buffer("pos_table", sincos_1d(embed_dim, torch.arange(max_seq_len)).float(), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, True, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.head.weight = self.tok_embed.weight  # tied: the initialisation below sets both
        init_transformer_weights(self, self.blocks)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(self, idx: torch.Tensor, caches: Optional[list[KVCache]] = None) -> torch.Tensor:
        start = 0 if caches is None else len(caches[0])
        end = start + idx.size(1)
        if end > self.max_seq_len:
            raise ValueError(f"{end} positions exceed max_seq_len={self.max_seq_len}")
        # Scaled by sqrt(width) as in the original Transformer: the tied embedding is small (std 0.02)
        # while the fixed sin-cos positions are O(1), which would otherwise drown the byte identity.
        x = self.tok_embed(idx) * self.embed_scale + self.pos_table[start:end]
        mask = block_causal_mask(end, 1, device=idx.device)[start:] if idx.size(1) > 1 else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if caches is None else caches[i])
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 use_cache: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Append max_new_tokens sampled bytes to idx [B, L] (temperature 0 = greedy).

        The model conditions on at most max_seq_len tokens; when the context is full it keeps the last
        half window and starts again (with the cache, by recomputing it). Cached and uncached
        generation condition on exactly the same tokens, so they give the same samples.
        """
        if idx.size(1) < 1:
            raise ValueError("generation needs a prompt of at least one byte")
        window = max(0, idx.size(1) - self.max_seq_len)  # first token the model conditions on
        caches = None
        for _ in range(max_new_tokens):
            if idx.size(1) - window > self.max_seq_len:
                window, caches = idx.size(1) - self.max_seq_len // 2, None
            if not use_cache:
                logits = self(idx[:, window:])
            elif caches is None:
                caches = self.new_caches()
                logits = self(idx[:, window:], caches)
            else:
                logits = self(idx[:, -1:], caches)
            idx = torch.cat([idx, sample_logits(logits[:, -1], temperature, top_k, generator)[:, None]], dim=1)
        return idx
