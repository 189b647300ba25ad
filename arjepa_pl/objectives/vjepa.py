"""JEPA: predict a target encoder's features of masked blocks from the context encoder's features of
the visible tokens. One objective for video (V-JEPA, Bardes et al., 2024) and images (I-JEPA, Assran
et al., 2023): the encoder's kind (`video: true/false`) picks the input and the mask configurations
pick the masks; nothing else differs.

Collapse — both encoders mapping everything to one point, which makes the loss zero — is held off by
the slowly moving EMA teacher; the VICReg terms are a second, optional guard, and `teacher:
stop_grad` (no EMA) is the ablation that shows what the EMA is for. `collapse_features` feeds the
collapse monitor (arjepa_pl.callbacks.CollapseMonitor).
"""

import copy
import logging
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arjepa_pl import schedules
from arjepa_pl.feature_stats import vicreg_covariance, vicreg_variance
from arjepa_pl.masks import (
    IJEPA_DEFAULT_MASKS,
    VJEPA_DEFAULT_MASKS,
    AnyMaskConfig,
    MaskCollator,
    MultiBlock2DConfig,
    as_mask_config,
)
from arjepa_pl.models import FeatureExtractor, JepaPredictor, VisionTransformer, gather_tokens
from arjepa_pl.optim import ScheduledModule

log = logging.getLogger("arjepa_pl.jepa")


class JEPA(ScheduledModule):
    """Context encoder + predictor trained by gradient; target encoder = EMA of the context encoder.

    Args:
        encoder: the context encoder (the target encoder is a copy of it). A video encoder reads
            batch["video"] [B, C, T, H, W], an image encoder (video: false) batch["image"] [B, C, H, W].
        predictor_embed_dim / predictor_depth / predictor_num_heads: the narrow predictor ViT
            (heads default to the encoder's). Its positions are the encoder's (sin-cos or rotary).
        predictor_num_mask_tokens: mask tokens of the predictor; default one per mask configuration
            (V-JEPA 2's public predictors hold 10: set 10 to start from them).
        mask_token_per_config: mask configuration i uses mask token i (V-JEPA); false: every
            configuration uses token 0 (V-JEPA 2 picks the token by clip length, and trains at one).
        masks: mask configurations, one mask token each. MaskConfig = V-JEPA multiblock3d (targets are
            the union of the blocks); MultiBlock2DConfig = I-JEPA multi-block (each target block is
            predicted on its own). None: V-JEPA's short- and long-range masks for a video encoder,
            I-JEPA's for an image encoder.
        mask_seed: masks are drawn from (mask_seed, rank, epoch, batch position), never global RNG.
        loss: "lp" = mean(|pred - target|^p) / p with p = loss_exp (V-JEPA: p = 1);
            "smooth_l1" = Huber with beta 1 (I-JEPA).
        loss_exp: p of the "lp" loss.
        teacher: "ema" = targets from the EMA target encoder; "stop_grad" = targets from the context
            encoder itself under no_grad (no EMA, no copy): an ablation that collapses easily.
        ema_momentum: (start, end) of the linear EMA momentum schedule over training.
        vicreg_var_coeff / vicreg_cov_coeff: weights of the VICReg variance and covariance terms
            added to the loss (0 = off, the default), computed on `vicreg_features`.
        vicreg_features: which features the VICReg terms regularise: "predicted" (the predictor's
            outputs) and/or "context" (the context encoder's outputs).
        init_from: start from pretrained weights (continued pretraining; a fresh optimiser and
            schedules): an official V-JEPA / V-JEPA 2 training checkpoint, an arjepa_pl checkpoint or
            export, a transformers V-JEPA 2 directory or `hf:<hub id>` (arjepa_pl.interop.pretrained).
            Loaded when fitting starts; a resumed run (ckpt_path) then restores its own weights over them.
        init_parts: which networks init_from sets: "encoder", "target_encoder", "predictor". An encoder
            loaded without the target encoder also becomes the teacher's starting point.
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        predictor_embed_dim: int = 384,
        predictor_depth: int = 12,
        predictor_num_heads: Optional[int] = None,
        predictor_num_mask_tokens: Optional[int] = None,
        mask_token_per_config: bool = True,
        masks: Optional[Sequence[AnyMaskConfig]] = None,
        mask_seed: int = 0,
        loss: Literal["lp", "smooth_l1"] = "lp",
        loss_exp: float = 1.0,
        teacher: Literal["ema", "stop_grad"] = "ema",
        ema_momentum: tuple[float, float] = (0.998, 1.0),
        vicreg_var_coeff: float = 0.0,
        vicreg_cov_coeff: float = 0.0,
        vicreg_features: Sequence[Literal["predicted", "context"]] = ("predicted",),
        init_from: Optional[str] = None,
        init_parts: Sequence[Literal["encoder", "target_encoder", "predictor"]] = ("encoder", "target_encoder",
                                                                                 "predictor"),
        **optim_args,
    ):
        # jsonargparse resolves **optim_args from ScheduledModule's signature: the same typed CLI
        # keys (lr, warmup_steps, compile, ...), and a mistyped one is still an error.
        super().__init__(**optim_args)
        if masks is None:
            masks = VJEPA_DEFAULT_MASKS if encoder.video else IJEPA_DEFAULT_MASKS
        masks = [as_mask_config(m) for m in masks]
        if not masks:
            raise ValueError("JEPA needs at least one mask configuration")
        if encoder.video and any(isinstance(m, MultiBlock2DConfig) for m in masks):
            raise ValueError("MultiBlock2DConfig (I-JEPA) masks are 2-D: use them with an image encoder "
                             "(video: false), or MaskConfig masks for video")
        if loss not in ("lp", "smooth_l1"):
            raise ValueError(f"loss must be 'lp' or 'smooth_l1', got {loss!r}")
        if loss_exp <= 0:
            raise ValueError(f"loss_exp must be > 0, got {loss_exp}")
        if teacher not in ("ema", "stop_grad"):
            raise ValueError(f"teacher must be 'ema' or 'stop_grad', got {teacher!r}")
        if not all(0.0 <= m <= 1.0 for m in ema_momentum):
            raise ValueError(f"ema_momentum values must lie in [0, 1], got {ema_momentum}")
        heads = predictor_num_heads or encoder.num_heads
        if predictor_embed_dim % heads:
            why = "" if predictor_num_heads else " (the encoder's heads: predictor_num_heads is null)"
            raise ValueError(f"predictor_embed_dim {predictor_embed_dim} must be divisible by predictor_num_heads "
                             f"{heads}{why}")
        if vicreg_var_coeff < 0 or vicreg_cov_coeff < 0:
            raise ValueError(f"VICReg coefficients must be >= 0, got {vicreg_var_coeff}, {vicreg_cov_coeff}")
        if not set(vicreg_features) <= {"predicted", "context"}:
            raise ValueError(f"vicreg_features must name 'predicted' and/or 'context', got {vicreg_features!r}")
        num_tokens = len(masks) if mask_token_per_config else 1
        if predictor_num_mask_tokens is not None and predictor_num_mask_tokens < num_tokens:
            raise ValueError(f"predictor_num_mask_tokens={predictor_num_mask_tokens}: the {len(masks)} mask "
                             f"configuration(s) use {num_tokens} (mask_token_per_config={mask_token_per_config})")
        if not init_parts or not set(init_parts) <= {"encoder", "target_encoder", "predictor"}:
            raise ValueError("init_parts must name some of 'encoder', 'target_encoder', 'predictor'; "
                             f"got {init_parts!r}")
        self.save_init_args()
        self.encoder = encoder
        self.predictor = JepaPredictor(
            encoder_dim=encoder.embed_dim,
            embed_dim=predictor_embed_dim,
            depth=predictor_depth,
            num_heads=heads,
            num_mask_tokens=predictor_num_mask_tokens or num_tokens,
            uniform_power=encoder.config["uniform_power"],
            positions=encoder.positions,
        )
        # stop_grad keeps no copy: a teacher that never moves would only be a misleading checkpoint entry.
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False) if teacher == "ema" else None
        self.masks, self.mask_seed = masks, mask_seed
        self.loss, self.loss_exp, self.teacher = loss, loss_exp, teacher
        self.ema_momentum = tuple(ema_momentum)
        self.vicreg_var_coeff, self.vicreg_cov_coeff = vicreg_var_coeff, vicreg_cov_coeff
        self.vicreg_features = tuple(vicreg_features)
        self.input_key = "video" if encoder.video else "image"
        self.mask_token_per_config = mask_token_per_config
        self.init_from, self.init_parts = init_from, tuple(init_parts)

    def setup(self, stage: str) -> None:
        # Before configure_model (FSDP2 sharding, compile): the networks are still plain modules here.
        if stage == "fit" and self.init_from is not None:
            self.load_pretrained(self.init_from, self.init_parts)

    def load_pretrained(self, source: str, parts: Sequence[str]) -> None:
        """Set `parts` of this JEPA from `source` (see init_from); an encoder loaded without its teacher
        is copied into the teacher, as at initialisation."""
        from arjepa_pl.interop.pretrained import init_jepa  # checkpoint formats live there

        modules = {"encoder": self.encoder, "target_encoder": self.target_encoder, "predictor": self.predictor}
        loaded = init_jepa(source, modules, parts)
        if "encoder" in loaded and "target_encoder" not in loaded and self.target_encoder is not None:
            self.target_encoder.load_state_dict(self.encoder.state_dict())
        log.info(f"started from {source}: " + ", ".join(f"{part} <- {name}" for part, name in loaded.items()))

    @property
    def teacher_encoder(self) -> VisionTransformer:
        """The network whose features are the targets (and what probes should read)."""
        return self.target_encoder if self.target_encoder is not None else self.encoder

    def feature_extractor(self) -> FeatureExtractor:
        """What probes read: the teacher (V-JEPA's evaluation protocol uses the target encoder)."""
        return FeatureExtractor(self.teacher_encoder)

    # -- data: the masks are drawn in the DataLoader workers, at collate time --------------------
    def collate_fn(self) -> MaskCollator:
        """The collate function this objective's batches need: it stacks the samples and draws one set of
        masks per configuration, seeded from (mask_seed, rank, epoch, batch position). The data modules
        ask for it when they build their loaders (data_modules.datamodules.objective_collate_fn), so the
        masks are made in the DataLoader workers, overlapping the training step."""
        return MaskCollator(self.masks, self.encoder.tubelet_size, self.encoder.patch_size,
                            seed=self.mask_seed, rank=self.global_rank, input_key=self.input_key)

    def _input(self, batch: dict) -> torch.Tensor:
        if self.input_key not in batch:
            raise ValueError(f"this JEPA has a {'video' if self.encoder.video else 'image'} encoder and reads "
                             f"batch[{self.input_key!r}], but the batch has keys {sorted(batch)}")
        return batch[self.input_key]

    # -- objective ---------------------------------------------------------------------------------
    def jepa_forward(self, batch: dict, num_masks: Optional[int] = None,
                     teacher_tokens: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[dict]]:
        """(teacher features of every token [B, N, D], LayerNorm'ed, and per mask configuration a dict of
        `context` [B, Kc, D], `predicted` and `target` [B', Kt, D]).

        Targets [B, P, Kt] (P blocks predicted separately, I-JEPA) are folded into the batch: the
        predictor sees the context with one block's slots at a time, so B' = B * P.
        `num_masks` limits the work to the first configurations (the collapse monitor needs one);
        `teacher_tokens`: the teacher's output on the batch, when the caller has it already.
        """
        x, masks = self._input(batch), batch.get("masks")
        if not masks or len(masks) != len(self.masks):
            raise ValueError(f"batch must carry {len(self.masks)} mask configurations under 'masks' "
                             f"(got {0 if not masks else len(masks)}): the data module must collate with "
                             "the objective's collate_fn(), as data_modules' modules do "
                             "(data_modules.datamodules.objective_collate_fn)")
        grid = self.encoder.token_grid(x.shape)
        with torch.no_grad():
            targets = self.teacher_encoder(x) if teacher_tokens is None else teacher_tokens
            targets = F.layer_norm(targets, targets.shape[-1:])
        masks = masks[:num_masks]
        # One encoder call for all configurations: it patchifies once and runs each context subset,
        # and going through forward() lets FSDP2 / compile hooks see every parameter use.
        contexts = self.encoder(x, [mask["context"] for mask in masks])
        outputs = []
        for i, (mask, context) in enumerate(zip(masks, contexts)):
            context_index, target_index = mask["context"], mask["target"]
            target = gather_tokens(targets, target_index.flatten(1))  # [B, P*Kt, D] or [B, Kt, D]
            pred_context, pred_context_index = context, context_index
            if target_index.ndim == 3:
                B, P, Kt = target_index.shape
                target = target.reshape(B * P, Kt, -1)  # b-major, like target_index.flatten(0, 1)
                target_index = target_index.flatten(0, 1)
                pred_context = context.repeat_interleave(P, 0)
                pred_context_index = context_index.repeat_interleave(P, 0)
            token = i if self.mask_token_per_config else 0
            pred = self.predictor(pred_context, pred_context_index, target_index, grid, mask_token=token)
            outputs.append({"context": context, "predicted": pred, "target": target})
        return targets, outputs

    def prediction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss == "smooth_l1":
            return F.smooth_l1_loss(pred, target)
        return (pred - target).abs().pow(self.loss_exp).mean() / self.loss_exp

    def jepa_terms(self, batch: dict, teacher_tokens: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Every term of the loss by name: `loss` (what is minimised), `loss_mask{i}` (prediction loss
        of configuration i; `loss` is their mean plus the VICReg terms), `vicreg_var` / `vicreg_cov`
        (unweighted, averaged over configurations and features; present when their coefficient is on).
        `teacher_tokens`: as for jepa_forward."""
        _, outputs = self.jepa_forward(batch, teacher_tokens=teacher_tokens)
        terms = {f"loss_mask{i}": self.prediction_loss(o["predicted"], o["target"]) for i, o in enumerate(outputs)}
        loss = torch.stack(list(terms.values())).mean()
        for name, coeff, fn in (("vicreg_var", self.vicreg_var_coeff, vicreg_variance),
                                ("vicreg_cov", self.vicreg_cov_coeff, vicreg_covariance)):
            if coeff > 0:
                # Training: the statistics of the global batch, every DDP / FSDP rank's tokens together.
                terms[name] = torch.stack([fn(o[f], across_ranks=self.training)
                                           for o in outputs for f in self.vicreg_features]).mean()
                loss = loss + coeff * terms[name]
        terms["loss"] = loss
        return terms

    def jepa_loss(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(loss, prediction loss of each mask configuration)."""
        terms = self.jepa_terms(batch)
        return terms["loss"], [terms[f"loss_mask{i}"] for i in range(len(self.masks))]

    # What may raise the collapse alarm (measured on the demo data, see docs/collapse.md):
    # - RankMe of the targets (the teacher's features of the whole input; in stop_grad mode the
    #   student's own), not of the student's context features: a healthy student's context RankMe
    #   drops to ~0.2x its value at initialisation within 40 steps (most context tokens are plain
    #   background) while its spread stays > 0.45;
    # - the normalised std of targets and context: a student collapsing under a lagging EMA teacher
    #   shows here (0.07 by step 10) long before the teacher's RankMe follows.
    # The predictor's outputs are only logged: a healthy predictor outputs the mean target at first.
    collapse_watch = {"rankme": ("target",), "std": ("target", "context")}

    @torch.no_grad()
    def collapse_features(self, batch: dict) -> dict[str, torch.Tensor]:
        """The collapse monitor's view (see arjepa_pl.callbacks.CollapseMonitor): the targets (teacher
        features of every token, as the loss sees them), and the context encoder's and predictor's
        outputs for the first mask configuration."""
        targets, (first,) = self.jepa_forward(batch, num_masks=1)
        return {"target": targets, "context": first["context"], "predicted": first["predicted"]}

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_tokens = self.teacher_encoder(self._input(batch))
        terms = self.jepa_terms(batch, teacher_tokens)
        B = batch[self.input_key].size(0)
        self.log("train/loss", terms["loss"], batch_size=B)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=B)
        for i, mask in enumerate(batch["masks"]):
            # Per sample; I-JEPA's target is P blocks of Kt tokens.
            self.log_dict({f"train/context_tokens_mask{i}": float(mask["context"][0].numel()),
                           f"train/target_tokens_mask{i}": float(mask["target"][0].numel())}, batch_size=B)
        # The teacher's tokens are what feature_extractor() gives at its last layer: the online probe
        # reads them instead of running the teacher over the batch a second time.
        return {"loss": terms["loss"], "features": teacher_tokens.detach()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self.jepa_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=self._input(batch).size(0))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self.jepa_loss(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=self._input(batch).size(0))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Mean-pooled teacher features (the encoder probes use) with labels."""
        return {"features": self.teacher_encoder(self._input(batch)).mean(1), "label": batch.get("label")}

    # -- EMA target --------------------------------------------------------------------------------
    def momentum_at(self, step: int) -> float:
        return schedules.linear(step, self.total_steps, *self.ema_momentum)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        # Called only when the optimizer really steps, so with gradient accumulation the teacher
        # moves once per optimizer step, not once per micro-batch.
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.target_encoder is None:  # stop_grad: the teacher is the encoder itself
            return
        momentum = self.momentum_at(self.trainer.global_step)
        self.update_target(momentum)
        self.log("train/ema_momentum", momentum, on_step=True, on_epoch=False)

    def update_target(self, momentum: float) -> None:
        if self.target_encoder is None:
            raise RuntimeError("teacher='stop_grad' has no target encoder to update")
        ema_update(self.encoder, self.target_encoder, momentum)


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- m target + (1 - m) online for every parameter, as one fused op over the parameter lists.

    Under FSDP2 the teacher is sharded exactly like the student, so this is a shard-local lerp;
    a root module keeps its weights gathered after forward, so both are resharded first."""
    for module in (online, target):
        reshard = getattr(module, "reshard", None)
        if callable(reshard):  # an FSDP2 module
            reshard()
    online_params: list[torch.Tensor] = list(online.parameters())
    target_params: list[torch.Tensor] = list(target.parameters())
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


# V-JEPA is JEPA with a video encoder: the name configs/vjepa*.yaml use.
VJEPA = JEPA
