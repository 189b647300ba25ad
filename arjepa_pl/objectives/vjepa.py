"""V-JEPA: predict the EMA target encoder's features of masked spatiotemporal blocks from the
context encoder's features of the visible tokens (Bardes et al., 2024)."""

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from arjepa_pl import schedules
from arjepa_pl.masks import VJEPA_DEFAULT_MASKS, MaskCollator, MaskConfig
from arjepa_pl.models import JepaPredictor, VisionTransformer, gather_tokens
from arjepa_pl.objectives.pretrain import PretrainObjective


class VJEPA(PretrainObjective):
    """Context encoder + predictor trained by gradient; target encoder = EMA of the context encoder.

    Args:
        encoder: the context encoder (the target encoder is a copy of it).
        predictor_embed_dim / predictor_depth / predictor_num_heads: the narrow predictor ViT
            (heads default to the encoder's).
        masks: one MaskConfig per mask configuration (default: short-range 8 x 0.15, long-range 2 x 0.7).
        mask_seed: masks are drawn from (mask_seed, rank, epoch, batch position), never global RNG.
        loss_exp: p in mean(|pred - target|^p) / p (1 = V-JEPA's L1).
        ema_momentum: (start, end) of the linear EMA momentum schedule over training.
        Remaining args: optimiser and schedules, see PretrainObjective.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        predictor_embed_dim: int = 384,
        predictor_depth: int = 12,
        predictor_num_heads: Optional[int] = None,
        masks: Sequence[MaskConfig] = VJEPA_DEFAULT_MASKS,
        mask_seed: int = 0,
        loss_exp: float = 1.0,
        ema_momentum: tuple[float, float] = (0.998, 1.0),
        lr: float = 6.25e-4,
        start_lr: float = 2e-4,
        final_lr: float = 1e-6,
        warmup_steps: int = 0,
        weight_decay: float = 0.04,
        final_weight_decay: float = 0.4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        total_steps: Optional[int] = None,
    ):
        super().__init__(lr, start_lr, final_lr, warmup_steps, weight_decay, final_weight_decay, betas, eps, total_steps)
        if not masks:
            raise ValueError("V-JEPA needs at least one mask configuration")
        if loss_exp <= 0:
            raise ValueError(f"loss_exp must be > 0, got {loss_exp}")
        if not all(0.0 <= m <= 1.0 for m in ema_momentum):
            raise ValueError(f"ema_momentum values must lie in [0, 1], got {ema_momentum}")
        self.save_init_args()
        self.encoder = encoder
        self.predictor = JepaPredictor(
            encoder_dim=encoder.embed_dim,
            embed_dim=predictor_embed_dim,
            depth=predictor_depth,
            num_heads=predictor_num_heads or encoder.num_heads,
            num_mask_tokens=len(masks),
            uniform_power=encoder.config["uniform_power"],
        )
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.masks = [m if isinstance(m, MaskConfig) else MaskConfig(**m) for m in masks]
        self.mask_seed, self.loss_exp, self.ema_momentum = mask_seed, loss_exp, tuple(ema_momentum)

    # -- data: the masks are drawn in the DataLoader workers, at collate time --------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "collate_fn"):
            raise ValueError("V-JEPA draws its masks at collate time: use a datamodule with a `collate_fn` "
                             "attribute (e.g. data_modules.VideoDataModule)")
        datamodule.collate_fn = MaskCollator(self.masks, self.encoder.tubelet_size, self.encoder.patch_size,
                                             seed=self.mask_seed, rank=self.global_rank)

    # -- objective ---------------------------------------------------------------------------------
    def jepa_loss(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean over mask configurations of mean(|pred - target|^p) / p, and the per-configuration terms."""
        video, masks = batch["video"], batch.get("masks")
        if not masks or len(masks) != len(self.masks):
            raise ValueError(f"batch must carry {len(self.masks)} mask configurations under 'masks' "
                             f"(got {0 if not masks else len(masks)}); is the MaskCollator in place?")
        grid = self.encoder.token_grid(video.shape)
        with torch.no_grad():
            targets = self.target_encoder(video)
            targets = F.layer_norm(targets, targets.shape[-1:])
        # One encoder call for all configurations: it patchifies once and runs each context subset.
        contexts = self.encoder(video, [mask["context"] for mask in masks])
        losses = []
        for i, (mask, context) in enumerate(zip(masks, contexts)):
            pred = self.predictor(context, mask["context"], mask["target"], grid, mask_token=i)
            diff = pred - gather_tokens(targets, mask["target"])
            losses.append(diff.abs().pow(self.loss_exp).mean() / self.loss_exp)
        return torch.stack(losses).mean(), losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, per_mask = self.jepa_loss(batch)
        B = batch["video"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for i, (term, mask) in enumerate(zip(per_mask, batch["masks"])):
            self.log_dict({f"train/loss_mask{i}": term,
                           f"train/context_tokens_mask{i}": float(mask["context"].size(1)),
                           f"train/target_tokens_mask{i}": float(mask["target"].size(1))}, batch_size=B)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self.jepa_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["video"].size(0))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self.jepa_loss(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=batch["video"].size(0))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Mean-pooled target-encoder features (the encoder probes use) with labels."""
        return {"features": self.target_encoder(batch["video"]).mean(1), "label": batch.get("label")}

    # -- EMA target --------------------------------------------------------------------------------
    def momentum_at(self, step: int) -> float:
        return schedules.linear(step, self.total_steps, *self.ema_momentum)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        # Called only when the optimizer really steps, so with gradient accumulation the teacher
        # moves once per optimizer step, not once per micro-batch.
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        momentum = self.momentum_at(self.trainer.global_step)
        self.update_target(momentum)
        self.log("train/ema_momentum", momentum, on_step=True, on_epoch=False)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """k <- m k + (1 - m) q for every parameter, as one fused op over the parameter lists.

        Under FSDP2 the teacher is sharded exactly like the student, so this is a shard-local lerp;
        a root module keeps its weights gathered after forward, so both are resharded first."""
        for module in (self.encoder, self.target_encoder):
            if callable(getattr(module, "reshard", None)):  # an FSDP2 module
                module.reshard()
        online = list(self.encoder.parameters())
        target = list(self.target_encoder.parameters())
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Enough to rebuild the encoder without this class (probes, export).
        checkpoint["encoder_config"] = dict(self.encoder.config)
