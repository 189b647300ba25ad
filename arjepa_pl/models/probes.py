"""Heads that classify frozen token features: V-JEPA's attentive probe and a linear probe.

Attentive probe (V-JEPA): one learnable query attends to the LayerNorm'ed tokens (cross-attention with
the encoder's head count, then an MLP, both residual), and a linear layer classifies the pooled query.
It learns *where* to look, which a mean over tokens cannot: on video the evidence of motion sits in a
few tokens. V-JEPA 2 puts self-attention blocks over the tokens before the pooler (`self_attn_blocks`)
and has no output projection after the cross-attention (`cross_attn_proj=False`).

Linear probe: the mean over tokens, standardised by a BatchNorm without affine parameters (as MAE's
linear probe: it makes one learning rate fit every encoder's feature scale), then a linear layer.
"""

import torch
import torch.nn.functional as F
from torch import nn

from arjepa_pl.models.vit import MLP, Block, init_transformer_weights


class CrossAttention(nn.Module):
    """Queries [B, Q, D] attend to tokens [B, N, D]: `q` and a fused `kv` projection (V-JEPA's names),
    then an output projection `proj` (V-JEPA; V-JEPA 2 has none: proj=False)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim) if proj else nn.Identity()

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, Q, D = queries.shape
        heads, head_dim = self.num_heads, D // self.num_heads
        q = self.q(queries).view(B, Q, heads, head_dim).transpose(1, 2)
        k, v = self.kv(tokens).view(B, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, Q, D))


class AttentivePooler(nn.Module):
    """Tokens [B, N, D] -> one pooled vector [B, D] (optional self-attention blocks first)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, self_attn_blocks: int = 0,
                 norm_eps: float = 1e-6, cross_attn_proj: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, norm_eps=norm_eps)
                                    for _ in range(self_attn_blocks))
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.xattn = CrossAttention(dim, num_heads, proj=cross_attn_proj)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        init_transformer_weights(self, self.blocks)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        q = self.query.expand(tokens.size(0), -1, -1)
        q = q + self.xattn(q, self.norm1(tokens))
        q = q + self.mlp(self.norm2(q))
        return q.squeeze(1)


class AttentiveClassifier(nn.Module):
    """V-JEPA's attentive probe: AttentivePooler + Linear."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, self_attn_blocks: int = 0,
                 cross_attn_proj: bool = True):
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads, self_attn_blocks=self_attn_blocks,
                                      cross_attn_proj=cross_attn_proj)
        self.linear = nn.Linear(dim, num_classes)
        init_transformer_weights(self.linear, [])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooler(tokens))


class LinearClassifier(nn.Module):
    """Mean over tokens, BatchNorm without affine, Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        init_transformer_weights(self.linear, [])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(tokens.mean(1)))
