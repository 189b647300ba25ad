"""The pixel decoder probe: how much of a clip a frozen encoder's features give back.

`python -m arjepa_pl fit --config configs/probe_decoder.yaml --model.encoder_checkpoint PATH` trains a
small PixelDecoder (arjepa_pl.models.decoder) on the frozen features of one layer to reconstruct the
clip they were computed from, and reports how well it does on the evaluation split. It is the
comparison's answer to "JEPA cannot generate": a JEPA has no pixel decoder of its own, and this probe
measures what pixel information its features keep, beside the AR models' rollouts and the same
decoder on a random encoder's features (a random ViT keeps much of its input: the floor to beat is
that one, not zero).

Targets are the clip's pixels on the 0-1 scale rounded to 8 bits (what a video file holds), so the
cached path (FrozenFeatureData stores them as uint8) and the uncached path see the same values.
"""

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from arjepa_pl.evaluation.frozen import FrozenEncoderModule, FrozenFeatures
from arjepa_pl.models import PixelDecoder, VisionTransformer, unpatchify
from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD, to_uint8_pixels
from arjepa_pl.objectives.ar_metrics import HorizonMetrics


class DecoderProbe(FrozenEncoderModule):
    """A pixel decoder on one layer of a frozen video encoder.

    Metrics (validation / test): `val/mse` (pixels on the 0-1 scale), `val/psnr` (dB) and `val/ssim`,
    per frame and averaged over frames and clips (the video-prediction convention, as the AR rollouts),
    and `val/loss`.

    Args:
        encoder_checkpoint / encoder / encoder_which / encoder_num_heads: the encoder, as for
            arjepa_pl.evaluation.Probe (null checkpoint: a randomly initialised `encoder`).
        layer: the encoder block whose features are decoded (0-based; -1 = the last).
        width / depth / num_heads: the decoder (see PixelDecoder).
        lr / start_lr / final_lr / warmup_steps / weight_decay / final_weight_decay: its AdamW schedule.
        optim_args: betas, eps, total_steps, parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        encoder_checkpoint: Optional[str] = None,
        encoder: Optional[VisionTransformer] = None,
        encoder_which: Literal["auto", "target_encoder", "encoder"] = "auto",
        encoder_num_heads: Optional[int] = None,
        layer: int = -1,
        width: Optional[int] = None,
        depth: int = 1,
        num_heads: int = 4,
        lr: float = 1e-3,
        start_lr: float = 1e-3,
        final_lr: float = 0.0,
        warmup_steps: int = 0,
        weight_decay: float = 0.01,
        final_weight_decay: float = 0.01,
        **optim_args,
    ):
        super().__init__(lr=lr, start_lr=start_lr, final_lr=final_lr, warmup_steps=warmup_steps,
                         weight_decay=weight_decay, final_weight_decay=final_weight_decay, **optim_args)
        self.save_init_args()
        self.init_encoder(encoder_checkpoint, encoder, encoder_which, encoder_num_heads, [layer])
        enc = self.extractor.encoder
        if not enc.video:
            raise ValueError("the decoder probe reads video encoders (clips [B, C, T, H, W]); this encoder is 2-D")
        self.tubelet, self.patch = enc.tubelet_size, enc.patch_size
        self.decoder = PixelDecoder(enc.embed_dim, int(enc.config["in_chans"]) * self.tubelet * self.patch * self.patch,
                                    width=width, depth=depth, num_heads=num_heads)
        self.pixel_mean, self.pixel_std = IMAGENET_MEAN, IMAGENET_STD  # the data module's, in setup()
        self.val_metrics: Optional[HorizonMetrics] = None
        self.test_metrics: Optional[HorizonMetrics] = None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "mean") and hasattr(datamodule, "std"):
            self.pixel_mean, self.pixel_std = tuple(datamodule.mean), tuple(datamodule.std)

    def frozen_features(self) -> FrozenFeatures:
        return FrozenFeatures(self.extractor, tuple(self.layers), self.input_key, pixels=True)

    def targets(self, batch: dict) -> torch.Tensor:
        """The clips' pixels [B * V, C, T, H, W] on the 0-1 scale, rounded to 8 bits."""
        if "pixels" in batch:  # from the feature cache: uint8 [B, V, C, T, H, W]
            return batch["pixels"].flatten(0, 1).float() / 255
        video = batch["video"]
        video = video.flatten(0, 1) if video.ndim == 6 else video
        return to_uint8_pixels(video, self.pixel_mean, self.pixel_std).float() / 255

    def reconstruct(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, target) pixels [B * V, C, T, H, W]."""
        self.check_batch(batch)
        features, _ = self.features(batch)
        target = self.targets(batch)
        patches = self.decoder(features[self.layers[0]])
        T, H, W = self.extractor.encoder.token_grid(target.shape)
        return unpatchify(patches, (T, H, W), self.tubelet, self.patch), target

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred, target = self.reconstruct(batch)
        loss = F.mse_loss(pred.float(), target)
        self.log("train/loss", loss, batch_size=target.size(0))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        pred, target = self.reconstruct(batch)
        self.log(f"{stage}/loss", F.mse_loss(pred.float(), target), sync_dist=True, batch_size=target.size(0))
        name = f"{stage}_metrics"
        if getattr(self, name) is None:  # sized by the first batch: one entry per frame
            setattr(self, name, HorizonMetrics(target.size(2)).to(target.device))
        getattr(self, name).update(pred.float().clamp(0, 1), target)

    def _log_epoch(self, stage: str) -> None:
        metrics: Optional[HorizonMetrics] = getattr(self, f"{stage}_metrics")
        if metrics is None:
            return
        values = metrics.compute()  # summed over ranks
        self.log_dict({f"{stage}/{name}": float(value.mean()) for name, value in values.items()})
        metrics.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

