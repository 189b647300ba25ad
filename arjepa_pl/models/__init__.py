"""Plain nn.Modules: no Lightning, no distributed code."""

from arjepa_pl.models.pos_embed import sincos_pos_embed
from arjepa_pl.models.predictor import JepaPredictor
from arjepa_pl.models.vit import VIT_PRESETS, Block, VisionTransformer, gather_tokens

__all__ = ["VIT_PRESETS", "Block", "JepaPredictor", "VisionTransformer", "gather_tokens", "sincos_pos_embed"]
