"""What every frozen-encoder evaluation shares (the classification probe, the pixel decoder probe):
the encoder, loaded once and frozen; the layers read; features of a batch either computed here or
served from the feature cache (arjepa_pl.evaluation.feature_cache), so both paths feed the heads the
same tensors.
"""

import logging
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch

from arjepa_pl.evaluation.multiview import flatten_views
from arjepa_pl.models import FeatureExtractor, VisionTransformer
from arjepa_pl.optim import ScheduledModule

log = logging.getLogger("arjepa_pl.probe")


@dataclass(frozen=True)
class FrozenFeatures:
    """What a module asks of the feature cache: this extractor's features of these layers, read from
    batch[input_key]; with `pixels`, also each view's pixels (the decoder's targets)."""

    extractor: FeatureExtractor
    layers: tuple[int, ...]
    input_key: str
    pixels: bool = False


def load_frozen_extractor(encoder_checkpoint: Optional[str], encoder: Optional[VisionTransformer],
                          which: str = "auto", num_heads: Optional[int] = None) -> FeatureExtractor:
    """The frozen (eval mode, no gradients) FeatureExtractor of a checkpoint, or of a randomly
    initialised `encoder` when there is no checkpoint (the baseline every comparison needs)."""
    if encoder_checkpoint is not None:
        from arjepa_pl.interop import load_feature_extractor  # checkpoint formats live there

        extractor = load_feature_extractor(encoder_checkpoint, which=which, num_heads=num_heads)
        log.info(f"probing the encoder of {encoder_checkpoint} ({extractor.spec()})")
    elif encoder is not None:
        extractor = FeatureExtractor(encoder)
        log.warning("probe: no encoder_checkpoint, probing a RANDOMLY INITIALISED frozen encoder (a baseline)")
    else:
        raise ValueError("set model.encoder_checkpoint (the encoder to probe), or model.encoder for a "
                         "randomly initialised baseline")
    return extractor.requires_grad_(False).eval()


class FrozenEncoderModule(ScheduledModule):
    """A ScheduledModule whose input is a frozen encoder's features (see `features`).

    Subclasses call `self.save_init_args()`, then `self.init_encoder(...)`, and build their heads.
    """

    def init_encoder(self, encoder_checkpoint: Optional[str], encoder: Optional[VisionTransformer],
                     which: Literal["auto", "target_encoder", "encoder"], num_heads: Optional[int],
                     layers: Sequence[int]) -> None:
        self.extractor = load_frozen_extractor(encoder_checkpoint, encoder, which, num_heads)
        self.layers = sorted({self.extractor.layer_index(layer) for layer in layers})
        self.input_key = "video" if self.extractor.encoder.video else "image"

    def feature_extractor(self) -> FeatureExtractor:
        return self.extractor

    def frozen_features(self) -> FrozenFeatures:
        """What the feature cache computes for this module (arjepa_pl.evaluation.FrozenFeatureData)."""
        return FrozenFeatures(self.extractor, tuple(self.layers), self.input_key)

    def train(self, mode: bool = True):
        super().train(mode)
        self.extractor.eval()  # frozen: never in training mode
        return self

    def check_batch(self, batch: dict, *keys: str) -> None:
        source = "features" if "features" in batch else self.input_key
        missing = [k for k in (source, *keys) if k not in batch]
        if missing:
            wanted = " and ".join(f"batch[{k!r}]" for k in (source, *keys))
            raise ValueError(f"{type(self).__name__} reads {wanted}; the batch has {sorted(batch)}")

    def features(self, batch: dict) -> tuple[dict[int, torch.Tensor], int]:
        """({layer: token features [B * V, N, D]}, views V) of a batch of clips (or images).

        A batch from the feature cache holds them already: batch["features"] is [B, V, L, N, D] for
        this module's L layers, in order. Otherwise the frozen encoder computes them from
        batch[input_key] ([B, (V,) C, (T,) H, W]), without gradients.
        """
        if "features" in batch:
            cached = batch["features"]
            if cached.ndim != 5 or cached.size(2) != len(self.layers):
                raise ValueError(f"cached features must be [B, V, {len(self.layers)} layers, N, D] for layers "
                                 f"{self.layers}, got {tuple(cached.shape)}: the cache was made for other layers")
            views = cached.size(1)
            return {layer: cached[:, :, i].flatten(0, 1).float() for i, layer in enumerate(self.layers)}, views
        x, views = flatten_views(batch[self.input_key], 4 if self.input_key == "video" else 3)
        with torch.no_grad():
            computed = self.extractor(x, self.layers)
        return dict(zip(self.layers, computed)), views
