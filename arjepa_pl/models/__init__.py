"""Plain nn.Modules: no Lightning, no distributed code."""

from arjepa_pl.models.features import FeatureExtractor
from arjepa_pl.models.gpt import ByteGPT
from arjepa_pl.models.next_step import block_causal_mask, next_step_outputs
from arjepa_pl.models.patches import normalize_patches, patchify, token_grid, unpatchify
from arjepa_pl.models.pos_embed import sincos_pos_embed
from arjepa_pl.models.predictor import JepaPredictor
from arjepa_pl.models.probes import AttentiveClassifier, AttentivePooler, LinearClassifier
from arjepa_pl.models.rope import Rope3D, RopeTables
from arjepa_pl.models.sampling import sample_logits
from arjepa_pl.models.tokenizer import PatchKMeans, tokenize_clip
from arjepa_pl.models.vit import MLP, POSITIONS, VIT_PRESETS, Block, KVCache, VisionTransformer, gather_tokens

__all__ = ["MLP", "POSITIONS", "VIT_PRESETS", "AttentiveClassifier", "AttentivePooler", "Block", "ByteGPT",
           "FeatureExtractor", "JepaPredictor", "KVCache", "LinearClassifier", "PatchKMeans", "Rope3D", "RopeTables",
           "VisionTransformer", "block_causal_mask", "gather_tokens", "next_step_outputs", "normalize_patches",
           "patchify", "sample_logits", "sincos_pos_embed", "token_grid", "tokenize_clip", "unpatchify"]
