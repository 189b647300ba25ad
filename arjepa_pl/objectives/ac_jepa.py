"""ACJEPA: an action-conditioned JEPA world model, in the manner of V-JEPA 2-AC (Assran et al., 2025).

Frames are encoded one by one by the framework's ViT; the block-causal predictor reads the context
frames' tokens (LayerNorm'ed encoder outputs) and the actions, and predicts the next frame's tokens as
the target encoder sees them (LayerNorm'ed, no affine), with an L1 loss — teacher-forced for every
step, plus a rollout term in which the predictor is fed its own predictions (action_conditioned.py).

The target encoder is an EMA of the encoder (JEPA's schedule and update), or, with
`encoder_checkpoint`, a pretrained JEPA encoder loaded and frozen, which is then both context and
target encoder. Collapse is held off by the EMA and optionally the VICReg terms, and watched through
`collapse_features` by the CollapseMonitor. A planner compares predicted latents with the goal frame's
target latent (mean L1 over tokens and channels).
"""

import copy
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from arjepa_pl import schedules
from arjepa_pl.feature_stats import vicreg_covariance, vicreg_variance
from arjepa_pl.models import FeatureExtractor, VisionTransformer
from arjepa_pl.objectives.action_conditioned import ActionConditionedObjective, comparison_media
from arjepa_pl.objectives.vjepa import ema_update


def layer_norm(tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine over the channels: JEPA's target space."""
    return F.layer_norm(tokens, tokens.shape[-1:])


class ACJEPA(ActionConditionedObjective):
    """Action-conditioned JEPA world model (see the module docstring).

    Args:
        encoder: the ViT (image mode or tubelet 1); its EMA copy is the target encoder. Leave it null
            when `encoder_checkpoint` is given.
        encoder_checkpoint: a pretrained JEPA encoder (anything arjepa_pl.interop reads: one of our
            checkpoints, an export, an official I-JEPA checkpoint), loaded and frozen.
        image_size: frame side in pixels.
        action_dim: values per action.
        predictor_embed_dim / predictor_depth / predictor_num_heads: the action-conditioned predictor.
        rollout_steps / rollout_weight: the rollout term (steps fed their own predictions, and its weight).
        ema_momentum: (start, end) of the linear EMA schedule of the target encoder.
        vicreg_var_coeff / vicreg_cov_coeff: weights of the VICReg variance and covariance terms (0: off),
            computed over frames (each frame's tokens concatenated into one vector).
        vicreg_features: what they regularise: "context" (the encoder's tokens) and/or "predicted".
        temporal_coeff: weight of the slowness term, the mean squared change of the encoder's tokens from
            one frame to the next (eb_jepa's time similarity, after Sobal et al., 2022). With the VICReg
            variance term holding the spread, it makes states a few actions apart close in latent space
            and far ones far — the distances a planner's cost reads (0: off).
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        encoder: Optional[VisionTransformer] = None,
        encoder_checkpoint: Optional[str] = None,
        image_size: int = 64,
        action_dim: int = 2,
        predictor_embed_dim: int = 96,
        predictor_depth: int = 4,
        predictor_num_heads: Optional[int] = None,
        rollout_steps: int = 4,
        rollout_weight: float = 1.0,
        ema_momentum: tuple[float, float] = (0.99, 1.0),
        vicreg_var_coeff: float = 0.0,
        vicreg_cov_coeff: float = 0.0,
        vicreg_features: Sequence[Literal["context", "predicted"]] = ("context",),
        temporal_coeff: float = 0.0,
        **optim_args,
    ):
        if (encoder is None) == (encoder_checkpoint is None):
            raise ValueError("ACJEPA needs exactly one of encoder (trained, with an EMA target) and "
                             "encoder_checkpoint (a pretrained encoder, frozen)")
        if encoder_checkpoint is not None:
            from arjepa_pl.interop import load_feature_extractor  # here: interop pulls in checkpoint readers

            encoder = load_feature_extractor(encoder_checkpoint).encoder
        assert encoder is not None
        if not all(0.0 <= m <= 1.0 for m in ema_momentum):
            raise ValueError(f"ema_momentum values must lie in [0, 1], got {ema_momentum}")
        if min(vicreg_var_coeff, vicreg_cov_coeff, temporal_coeff) < 0:
            raise ValueError(f"vicreg_var_coeff, vicreg_cov_coeff and temporal_coeff must be >= 0, got "
                             f"{vicreg_var_coeff}, {vicreg_cov_coeff}, {temporal_coeff}")
        if not set(vicreg_features) <= {"context", "predicted"}:
            raise ValueError(f"vicreg_features must name 'context' and/or 'predicted', got {vicreg_features!r}")
        super().__init__(encoder, encoder.embed_dim, image_size, action_dim, predictor_embed_dim, predictor_depth,
                         predictor_num_heads, rollout_steps, rollout_weight, **optim_args)
        self.save_init_args()
        self.frozen_encoder = encoder_checkpoint is not None
        if self.frozen_encoder:
            encoder.requires_grad_(False)
        # A frozen encoder is its own target; otherwise the target is an EMA copy.
        self.target_encoder = None if self.frozen_encoder else copy.deepcopy(encoder).requires_grad_(False)
        self.ema_momentum = tuple(ema_momentum)
        self.vicreg_var_coeff, self.vicreg_cov_coeff = vicreg_var_coeff, vicreg_cov_coeff
        self.vicreg_features = tuple(vicreg_features)
        self.temporal_coeff = temporal_coeff

    @property
    def teacher_encoder(self) -> VisionTransformer:
        return self.encoder if self.target_encoder is None else self.target_encoder

    def feature_extractor(self) -> FeatureExtractor:
        """What probes read: the target encoder."""
        return FeatureExtractor(self.teacher_encoder)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # frozen means frozen: no dropout or norm statistics to update (there are none today)
        return self

    # -- objective -----------------------------------------------------------------------------------
    def context(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [..., 3, S, S] -> the predictor's inputs [..., N, D] (LayerNorm'ed encoder tokens)."""
        if self.frozen_encoder:
            with torch.no_grad():
                return layer_norm(self.encode_with(self.encoder, frames))
        return layer_norm(self.encode_with(self.encoder, frames))

    @torch.no_grad()
    def targets(self, frames: torch.Tensor) -> torch.Tensor:
        return layer_norm(self.encode_with(self.teacher_encoder, frames))

    def predictor_inputs(self, state: torch.Tensor) -> torch.Tensor:
        return state  # a rollout state is already a frame's tokens: encoded context or a predicted latent

    def next_state(self, state: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output  # the predicted target latent is fed back as the next frame's tokens

    def forward_terms(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss terms, the features they came from: target, context, predicted)."""
        frames, actions = self.unpack(batch)
        T = actions.size(1)
        targets = self.targets(frames[:, 1:])  # [B, T, N, D]
        context = self.context(frames[:, :T])
        predicted = self.predictor(context, actions)
        terms = {"teacher_forced_loss": (predicted - targets).abs().mean()}
        loss = terms["teacher_forced_loss"]
        steps = min(self.rollout_steps, T)
        if steps > 1:  # a one-step rollout is the first teacher-forced step
            rolled = self.rollout_from(context[:, 0], actions[:, :steps])
            terms["rollout_loss"] = (rolled - targets[:, :steps]).abs().mean()
            loss = loss + self.rollout_weight * terms["rollout_loss"]
        features = {"target": targets, "context": context, "predicted": predicted}
        for name, coeff, fn in (("vicreg_var", self.vicreg_var_coeff, vicreg_variance),
                                ("vicreg_cov", self.vicreg_cov_coeff, vicreg_covariance)):
            if coeff > 0:
                # One sample per frame, its tokens side by side ([B * T, N * D]): the tokens of one frame
                # are not samples, as their positions alone would spread them. So every token must vary
                # from frame to frame, which it can only do by encoding what changes (the agent).
                terms[name] = torch.stack([fn(features[f].flatten(-2), across_ranks=self.training)
                                           for f in self.vicreg_features]).mean()
                loss = loss + coeff * terms[name]
        if self.temporal_coeff > 0 and T > 1:
            terms["temporal"] = (context[:, 1:] - context[:, :-1]).pow(2).mean()
            loss = loss + self.temporal_coeff * terms["temporal"]
        terms["loss"] = loss
        return terms, features

    def terms(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.forward_terms(batch)[0]

    # The collapse monitor's view: the targets' RankMe and the spread of targets and context may raise
    # the alarm; the predictor's outputs are only logged (see JEPA.collapse_watch).
    collapse_watch = {"rankme": ("target",), "std": ("target", "context")}

    @torch.no_grad()
    def collapse_features(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.forward_terms(batch)[1]

    # -- EMA target ---------------------------------------------------------------------------------
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.target_encoder is not None:  # once per real optimizer step, as JEPA
            momentum = schedules.linear(self.trainer.global_step, self.total_steps, *self.ema_momentum)
            ema_update(self.encoder, self.target_encoder, momentum)
            self.log("train/ema_momentum", momentum, on_step=True, on_epoch=False)

    # -- planning interface --------------------------------------------------------------------------
    def encode_observation(self, frames01: torch.Tensor) -> torch.Tensor:
        return self.context(self.normalize(frames01))

    def encode_goal(self, frames01: torch.Tensor) -> torch.Tensor:
        return self.targets(self.normalize(frames01))

    def predicted_states(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.rollout_from(start, actions)

    def distance(self, predicted: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Mean L1 between predicted latents [B, K, H, N, D] and the goal's [B, N, D] -> [B, K, H]."""
        return (predicted - goal[:, None, None]).abs().mean(dim=(-2, -1))

    # -- media ---------------------------------------------------------------------------------------
    def media(self, batch: dict) -> dict[str, np.ndarray]:
        """`rollout`: per clip, the true frames 1..T above the nearest neighbours (mean L1 over target
        latents, among every frame of the clips shown) of the latents predicted from frame 0 and the
        actions alone; `rollout_video`: the same, truth beside nearest neighbour."""
        frames, actions = self.unpack(batch)
        bank = self.targets(frames).flatten(0, 1)  # [b * (T + 1), N, D]
        rolled = self.rollout_from(self.context(frames[:, 0]), actions)  # [b, T, N, D]
        nearest = (rolled.unsqueeze(2) - bank[None, None]).abs().mean(dim=(-2, -1)).argmin(-1)  # [b, T]
        pixels = self.to_pixels(frames)
        decoded = self.to_pixels(frames.flatten(0, 1))[nearest]  # [b, T, 3, S, S]
        return comparison_media(pixels[:, 1:], decoded)
