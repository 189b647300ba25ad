"""Vision Transformer for images and video clips, plain PyTorch.

Parameter names follow the official V-JEPA / I-JEPA layout (patch_embed.proj, blocks.i.attn.qkv,
blocks.i.mlp.fc1, norm, ...) so their checkpoints map onto ours by stripping prefixes.
"""

import math
from typing import Any, Iterable, Literal, Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from arjepa_pl.models.attention import AttentionMask, attend
from arjepa_pl.models.patches import token_grid
from arjepa_pl.models.pos_embed import sincos_pos_embed
from arjepa_pl.models.rope import ROPE_POSITIONS, Rope3D, RopeTables

# Sizes from the ViT / V-JEPA / V-JEPA 2 papers (width, depth, heads; MLP ratio when not 4).
# "giant" is V-JEPA 2's ViT-g/16 (vit_giant_xformers): 22 heads of 64 channels, MLP 6144 = 1408 * 48/11.
VIT_PRESETS: dict[str, dict[str, float]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
    "giant": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
}
# Where a ViT's positions come from: fixed sin-cos tables added to the patch embeddings (V-JEPA,
# I-JEPA), or rotary embeddings inside every attention (V-JEPA 2; arjepa_pl.models.rope).
POSITIONS = ("sincos", *ROPE_POSITIONS)
Positions = Literal["sincos", "rope", "rope_vjepa2"]


class KVCache:
    """Keys and values of every token one attention layer has already seen.

    Autoregressive generation feeds only the new tokens; their queries attend to the cached keys and
    values plus their own, which gives exactly what a full recomputation gives as long as earlier
    tokens never attend to later ones (causal or block-causal masks).

    Without autograd (generation, planning) the keys and values are written into buffers that double
    when full, so a step copies only its own tokens: concatenating the whole cache every step cost a
    planner's rollouts of thousands of sequences a quarter of their time (O(steps^2) copies). With autograd
    (training through a rollout) each step concatenates, as autograd needs every step's tensors intact.
    """

    def __init__(self):
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None
        self._length = 0  # tokens held; the buffers may be longer

    def __len__(self) -> int:
        return self._length

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append [B, heads, n, head_dim] keys and values; return all of them."""
        end = self._length + k.size(2)
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        elif (k.shape[:2], k.shape[3], k.dtype) != (self.k.shape[:2], self.k.shape[3], self.k.dtype):
            # What torch.cat would refuse, a buffer write might broadcast: refuse it here.
            raise ValueError(f"keys {tuple(k.shape)} {k.dtype} do not continue the cache's "
                             f"{tuple(self.k.shape)} {self.k.dtype}")
        elif torch.is_grad_enabled() and (k.requires_grad or self.k.requires_grad):
            self.k = torch.cat([self.k[:, :, :self._length], k], dim=2)
            self.v = torch.cat([self.v[:, :, :self._length], v], dim=2)
        else:
            if self.k.size(2) < end:  # grow to twice what is needed: amortised, each token copied O(1) times
                grown_k = k.new_empty(*k.shape[:2], 2 * end, k.size(3))
                grown_v = v.new_empty(*v.shape[:2], 2 * end, v.size(3))
                grown_k[:, :, :self._length] = self.k[:, :, :self._length]
                grown_v[:, :, :self._length] = self.v[:, :, :self._length]
                self.k, self.v = grown_k, grown_v
            self.k[:, :, self._length:end] = k
            self.v[:, :, self._length:end] = v
        self._length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: Optional[AttentionMask] = None,
                cache: Optional[KVCache] = None, rope: Optional[RopeTables] = None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, head_dim]
        if rope is not None:  # rotary positions: rotate queries and keys (cached keys are stored rotated)
            q, k = rope.rotate(q), rope.rotate(k)
        if cache is not None:
            k, v = cache.extend(k, v)  # the new queries also see every cached token
        # attn_mask: boolean, True = may attend; broadcast over batch and heads ([N, N] or [B, 1, N, N]),
        # or a FlexAttention BlockMask; with a cache its rows are the new tokens and its columns all tokens.
        x = attend(q, k, v, attn_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: Optional[AttentionMask] = None,
                cache: Optional[KVCache] = None, rope: Optional[RopeTables] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask, cache, rope)
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module, blocks: Iterable[nn.Module]) -> None:
    """Truncated-normal(0.02) weights, zero biases, unit LayerNorms; then each block's residual output
    projections are divided by sqrt(2 * layer) so the residual stream's variance does not grow with depth."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        # Blocks (a ModuleList types its items as nn.Module).
        for layer, block in enumerate(cast(Iterable[Block], blocks), start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], index [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


class PositionTables(nn.Module):
    """Caches sin-cos tables per (grid, device, dtype); they are pure functions of the grid, so they
    are never saved in checkpoints and any clip length or resolution works."""

    def __init__(self, dim: int, uniform_power: bool):
        super().__init__()
        self.dim, self.uniform_power = dim, uniform_power
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, grid: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (tuple(grid), device, dtype)
        if key not in self._cache:
            self._cache[key] = sincos_pos_embed(grid, self.dim, self.uniform_power).to(device=device, dtype=dtype)
        return self._cache[key]


class VisionTransformer(nn.Module):
    """ViT encoder over video clips [B, C, T, H, W] (tubelet patches) or images [B, C, H, W].

    `preset` fills embed_dim / depth / num_heads / mlp_ratio (any of them given explicitly wins).
    `forward(x, keep)` runs only the tokens whose flat indices are in `keep` [B, K] (or each of a list
    of such index tensors) — the JEPA context encoder sees its visible tokens only, which is where
    most of its speed comes from.
    `positions`: "sincos" adds fixed sin-cos tables to the patch embeddings (V-JEPA, I-JEPA); "rope"
    and "rope_vjepa2" rotate queries and keys by each token's (frame, row, column) in every block
    instead (V-JEPA 2; see arjepa_pl.models.rope for the two). The weights are the same tensors.
    """

    def __init__(
        self,
        preset: Optional[str] = None,
        embed_dim: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        mlp_ratio: Optional[float] = None,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        video: bool = True,
        qkv_bias: bool = True,
        uniform_power: bool = True,
        norm_eps: float = 1e-6,
        positions: Positions = "sincos",
    ):
        super().__init__()
        if preset is not None and preset not in VIT_PRESETS:
            raise ValueError(f"unknown ViT preset {preset!r}; choose one of {sorted(VIT_PRESETS)}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        sizes = dict(VIT_PRESETS[preset]) if preset is not None else {}
        given = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        sizes.update({name: value for name, value in given.items() if value is not None})
        missing = [n for n in ("embed_dim", "depth", "num_heads") if n not in sizes]
        if missing:
            raise ValueError(f"VisionTransformer needs a preset or explicit {', '.join(missing)}")
        self.embed_dim, self.depth, self.num_heads = (int(sizes[n]) for n in ("embed_dim", "depth", "num_heads"))
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads} "
                             "(each head takes embed_dim / num_heads channels)")
        mlp_ratio = float(sizes.get("mlp_ratio", 4.0))
        self.patch_size, self.tubelet_size, self.video = patch_size, (tubelet_size if video else 1), video
        # Everything needed to rebuild this module (exported with checkpoints).
        self.config: dict[str, Any] = dict(
            embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads, mlp_ratio=mlp_ratio,
            patch_size=patch_size, tubelet_size=tubelet_size, in_chans=in_chans, video=video,
            qkv_bias=qkv_bias, uniform_power=uniform_power, norm_eps=norm_eps, positions=positions,
        )
        self.positions = positions

        self.patch_embed = nn.Module()
        if video:
            kernel = (tubelet_size, patch_size, patch_size)
            self.patch_embed.proj = nn.Conv3d(in_chans, self.embed_dim, kernel_size=kernel, stride=kernel)
        else:
            self.patch_embed.proj = nn.Conv2d(in_chans, self.embed_dim, kernel_size=patch_size, stride=patch_size)
        # Exactly one position scheme: a table added to the tokens, or rotations inside attention.
        self.pos_embed = PositionTables(self.embed_dim, uniform_power) if positions == "sincos" else None
        self.rope = Rope3D(self.embed_dim // self.num_heads, positions) if positions != "sincos" else None
        self.blocks = nn.ModuleList(
            Block(self.embed_dim, self.num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(self.depth)
        )
        self.norm = nn.LayerNorm(self.embed_dim, eps=norm_eps)
        init_transformer_weights(self, self.blocks)

    def token_grid(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid (T', H', W') or (H', W') of an input of `shape`, checking that it tiles."""
        return token_grid(shape, self.tubelet_size, self.patch_size, self.video)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify and add positions (sin-cos; RoPE models add none here): [B, C, (T,) H, W] -> [B, N, D]."""
        grid = self.token_grid(x.shape)
        proj = cast(nn.Module, self.patch_embed.proj)  # the Conv3d / Conv2d made in __init__
        # Contiguous [B, N, D]: the transposed view would carry its layout through every residual add,
        # so each LayerNorm and linear would copy it again (the AR bench step ran x1.07 faster without it).
        tokens = proj(x).flatten(2).transpose(1, 2).contiguous()
        if self.pos_embed is None:
            return tokens
        return tokens + self.pos_embed(grid, tokens.device, tokens.dtype)

    def rope_tables(self, grid: Sequence[int], index: Optional[torch.Tensor] = None,
                    device: Optional[torch.device] = None) -> Optional[RopeTables]:
        """The rotary tables of the tokens at `index` [B, K] (None: all, in order) of `grid`, for
        forward_tokens; None for a sin-cos model (its positions are in the tokens already)."""
        return None if self.rope is None else self.rope(grid, index, device)

    def forward_tokens(self, tokens: torch.Tensor, attn_mask: Optional[AttentionMask] = None,
                       caches: Optional[list[KVCache]] = None, rope: Optional[RopeTables] = None,
                       layers: Optional[Sequence[int]] = None) -> Union[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks and the final norm on already embedded tokens [B, N, D].

        `caches`: one KVCache per block for incremental (autoregressive) decoding; `tokens` are then
        only the new tokens and `attn_mask` (if any) has a row per new token, a column per token.
        `rope`: a RoPE model's tables for exactly these tokens (rope_tables).
        `layers`: block indices in [0, depth); return each one's output through the final norm (a
        list, in that order) instead of the last block's; later blocks are not run."""
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"need one KVCache per block ({len(self.blocks)}), got {len(caches)}")
        if (rope is None) != (self.rope is None):
            raise ValueError(f"this ViT has positions={self.positions!r}: forward_tokens needs rope tables "
                             "(encoder.rope_tables(grid, index)) exactly when its positions are rotary")
        if layers is not None and (caches is not None or not all(0 <= i < self.depth for i in layers)):
            raise ValueError(f"layers must be block indices in [0, {self.depth}) and come without caches, got {layers}")
        last = self.depth - 1 if layers is None else max(layers)
        outputs = {}
        for i, block in enumerate(self.blocks[:last + 1]):
            tokens = block(tokens, attn_mask, None if caches is None else caches[i], rope)
            if layers is not None and i in layers:
                outputs[i] = self.norm(tokens)
        return self.norm(tokens) if layers is None else [outputs[i] for i in layers]

    def forward(
        self, x: torch.Tensor, keep: Optional[Union[torch.Tensor, Sequence[torch.Tensor]]] = None,
        attn_mask: Optional[AttentionMask] = None, caches: Optional[list[KVCache]] = None,
        layers: Optional[Sequence[int]] = None,
    ) -> Union[torch.Tensor, list[torch.Tensor]]:
        """Encode all tokens, the tokens in `keep` [B, K], or — given a list of index tensors — each
        subset in turn from one patch embedding (V-JEPA's several mask configurations). `attn_mask`,
        `caches` (then only the tokens not cached yet are run) and `layers`: see forward_tokens.
        Every use of the encoder goes through forward(), so that wrappers hooking it (FSDP2's
        gathers, compile, profiler regions) see every parameter use."""
        tokens, grid = self.embed(x), self.token_grid(x.shape)
        if keep is None:
            start = len(caches[0]) if caches else 0
            # Rotary tables of the new tokens only: cached keys were stored rotated.
            new = torch.arange(start, tokens.size(1), device=tokens.device) if start else None
            return self.forward_tokens(tokens[:, start:], attn_mask, caches,
                                       self.rope_tables(grid, new, tokens.device), layers)
        if isinstance(keep, torch.Tensor):
            return self.forward_tokens(gather_tokens(tokens, keep), attn_mask, caches, self.rope_tables(grid, keep),
                                       layers)
        return [cast(torch.Tensor, self.forward_tokens(gather_tokens(tokens, k), attn_mask, caches,
                                                       self.rope_tables(grid, k), layers)) for k in keep]
