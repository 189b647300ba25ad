"""A pretrained encoder as a frozen probe sees it.

Probing must feed the encoder what it was trained on, or the comparison measures a distribution shift
instead of the representation: a JEPA encoder sees pixels under full attention; an autoregressive video
encoder sees its clips under the block-causal mask it was trained with (step t attends to steps <= t),
and a token model sees every patch replaced by its code's centre. FeatureExtractor holds exactly that
(encoder, optional tokenizer, attention), so probes, the online monitor and export treat every
objective alike. `spec()` is the JSON-able description that rebuilds it (weights apart).
"""

from typing import Optional, Sequence, cast

import torch
from torch import nn

from arjepa_pl.models.next_step import block_causal_attention_mask
from arjepa_pl.models.tokenizer import PatchKMeans, tokenize_clip
from arjepa_pl.models.vit import VisionTransformer


class FeatureExtractor(nn.Module):
    """Token features of chosen layers of an encoder, fed the way it was trained.

    Args:
        encoder: the ViT whose features are read.
        tokenizer: a fitted patch tokenizer whose decoded codes replace the pixels (AR token models).
        block_causal: run the encoder under the block-causal mask over tubelet steps (AR video models).
        prefix_steps: steps that attend to each other bidirectionally under that mask (AIM's prefix).
    """

    def __init__(self, encoder: VisionTransformer, tokenizer: Optional[PatchKMeans] = None,
                 block_causal: bool = False, prefix_steps: int = 0):
        super().__init__()
        if (block_causal or tokenizer is not None) and not encoder.video:
            raise ValueError("block-causal attention and patch tokenizers need a video encoder")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.block_causal, self.prefix_steps = block_causal, prefix_steps

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def depth(self) -> int:
        return self.encoder.depth

    def layer_index(self, layer: int) -> int:
        """Block index in [0, depth) of `layer`, negative values counting from the last block (-1)."""
        if not -self.depth <= layer < self.depth:
            raise ValueError(f"layer {layer} does not exist: the encoder has {self.depth} blocks "
                             f"(use 0..{self.depth - 1}, or -1 for the last)")
        return layer % self.depth

    def spec(self) -> dict:
        """Plain values that rebuild this module (see from_spec); the weights travel separately."""
        tokenizer = (None if self.tokenizer is None
                     else {"num_codes": self.tokenizer.num_codes, "dim": self.tokenizer.dim})
        return {"encoder": dict(self.encoder.config), "tokenizer": tokenizer,
                "block_causal": self.block_causal, "prefix_steps": self.prefix_steps}

    @classmethod
    def from_spec(cls, spec: dict) -> "FeatureExtractor":
        """An untrained FeatureExtractor of the architecture `spec` describes (load the weights next)."""
        tokenizer = spec.get("tokenizer")
        return cls(VisionTransformer(**spec["encoder"]),
                   None if tokenizer is None else PatchKMeans(tokenizer["num_codes"], tokenizer["dim"]),
                   bool(spec.get("block_causal", False)), int(spec.get("prefix_steps", 0)))

    def forward(self, x: torch.Tensor, layers: Sequence[int] = (-1,)) -> list[torch.Tensor]:
        """[B, C, (T,) H, W] -> one [B, N, D] tensor per entry of `layers` (block outputs, each through
        the encoder's final LayerNorm, so every layer's features are on the same scale)."""
        wanted = [self.layer_index(layer) for layer in layers]
        enc = self.encoder
        if self.tokenizer is not None:
            x = tokenize_clip(self.tokenizer, x, enc.tubelet_size, enc.patch_size)[1]
        mask = None
        if self.block_causal:
            T, H, W = enc.token_grid(x.shape)
            mask = None if T == 1 else block_causal_attention_mask(T, H * W, self.prefix_steps, x.device)
        # Through the encoder's forward, which runs no block after the last one wanted (and lets FSDP2
        # gather a sharded encoder's weights).
        return cast(list[torch.Tensor], enc(x, attn_mask=mask, layers=wanted))
