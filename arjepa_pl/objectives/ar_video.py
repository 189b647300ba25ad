"""Autoregressive video: predict the next step (tubelet) of a clip from all the steps before it.

The backbone is the V-JEPA VisionTransformer itself under a block-causal mask (arjepa_pl.models.next_step):
same code, same sizes, same data, so AR and JEPA runs differ only in the objective. ARVideo regresses
the next step's pixels with L2 (AIM-style); ARVideoTokens (ar_video_tokens.py) predicts discrete
patch codes with cross-entropy. Both generate rollouts in `predict`.
"""

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from arjepa_pl.models import (
    MLP,
    FeatureExtractor,
    KVCache,
    VisionTransformer,
    next_step_outputs,
    normalize_patches,
    patchify,
    unpatchify,
)
from arjepa_pl.models.patches import hold_last_frame
from arjepa_pl.models.vit import init_transformer_weights
from arjepa_pl.optim import ScheduledModule
from arjepa_pl.pictures import rollout_frames, rollout_picture
from data_modules.transforms import IMAGENET_MEAN, IMAGENET_STD


class NextStepObjective(ScheduledModule):
    """What the pixel and the token objectives share: the encoder + MLP head under the block-causal
    mask, the loss window, rollouts and predict_step. Subclasses define `step_loss`, `model_input`
    and `next_step_patches`, and call `self.save_init_args()` in their own __init__.

    Args:
        encoder: the V-JEPA ViT (video=True); its tubelet is one step.
        out_dim: values the head predicts per token.
        head_hidden: hidden width of the 2-layer MLP head (default 4 x encoder width).
        prefix_steps: the first k steps attend to each other bidirectionally; predictions of targets
            inside the prefix are left out of the loss.
        rollout_context_frames: frames given as context to `predict` rollouts; the rest of the clip
            is generated and compared with the truth.
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(self, encoder: VisionTransformer, out_dim: int, head_hidden: Optional[int], prefix_steps: int,
                 rollout_context_frames: int, **optim_args):
        super().__init__(**optim_args)
        if not encoder.video:
            raise ValueError("autoregressive video needs a video encoder (video=True)")
        if prefix_steps < 0:
            raise ValueError(f"prefix_steps must be >= 0, got {prefix_steps}")
        if rollout_context_frames < 1 or rollout_context_frames % encoder.tubelet_size:
            raise ValueError(f"rollout_context_frames must be a positive multiple of the tubelet "
                             f"({encoder.tubelet_size}), got {rollout_context_frames}")
        self.encoder = encoder
        self.head = MLP(encoder.embed_dim, head_hidden or 4 * encoder.embed_dim, out_dim)
        init_transformer_weights(self.head, [])
        self.prefix_steps, self.rollout_context_frames = prefix_steps, rollout_context_frames
        self.patch_dim = encoder.config["in_chans"] * encoder.tubelet_size * encoder.patch_size**2
        # De-normalisation for rollouts and pixel metrics; replaced by the datamodule's own in setup().
        self.pixel_mean, self.pixel_std = IMAGENET_MEAN, IMAGENET_STD

    # -- subclass hooks ------------------------------------------------------------------------------
    def model_input(self, video: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of a (normalised) clip."""
        return video

    def step_loss(self, video: torch.Tensor, metrics: bool = False) -> torch.Tensor:
        """The training loss of a normalised clip [B, C, T, H, W]; with `metrics`, also update / log
        the validation metrics."""
        raise NotImplementedError

    def next_step_patches(self, outputs: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """Head outputs of the last step [B, S, out_dim] -> the next step's patches [B, S, patch_dim]."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Trainer.datamodule is set by Lightning's DataConnector but not declared on the class.
        datamodule = self.trainer.datamodule if self._trainer is not None else None  # type: ignore[attr-defined]
        if datamodule is not None and hasattr(datamodule, "mean") and hasattr(datamodule, "std"):
            self.pixel_mean, self.pixel_std = tuple(datamodule.mean), tuple(datamodule.std)

    def feature_extractor(self) -> FeatureExtractor:
        """What probes read: the encoder under the block-causal mask it was trained with."""
        return FeatureExtractor(self.encoder, block_causal=True, prefix_steps=self.prefix_steps)

    def to_pixels(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised [B, 3, T, H, W] -> [0, 1] pixels."""
        mean = video.new_tensor(self.pixel_mean).view(1, -1, 1, 1, 1)
        std = video.new_tensor(self.pixel_std).view(1, -1, 1, 1, 1)
        return (video * std + mean).clamp(0, 1)

    def outputs(self, clip: torch.Tensor, caches: Optional[list[KVCache]] = None) -> torch.Tensor:
        return next_step_outputs(self.encoder, self.head, clip, self.prefix_steps, caches)

    def training_outputs(self, clip: torch.Tensor) -> torch.Tensor:
        """Outputs of every step but the last, [B, (T' - 1) * S, out]: all that a loss pairs with a target.

        The last step's outputs would predict beyond the clip, and under the block-causal mask no
        earlier token attends to the last step (it lies outside the prefix: see loss_window), so its
        tokens are left out of the encoder: the other outputs are the same, and the step saves 1/T'
        of the encoder and head and more of the attention (the last step's queries see every key)."""
        self.loss_window(clip)  # a clear error for clips too short to predict anything
        return self.outputs(clip[:, :, :-self.encoder.tubelet_size])

    def loss_window(self, video: torch.Tensor) -> tuple[int, int, int]:
        """(first step whose output is in the loss, number of steps T', tokens per step S).

        Outputs of steps s0 .. T'-2 predict steps s0+1 .. T'-1; with a prefix of k steps the targets
        inside the prefix (its outputs have seen them) are left out: s0 = max(k - 1, 0)."""
        T, H, W = self.encoder.token_grid(video.shape)
        first = max(self.prefix_steps - 1, 0)
        if T - 1 <= first:
            raise ValueError(f"a clip of {T} steps leaves no step to predict after a prefix of {self.prefix_steps}; "
                             "use longer clips (frames_per_clip) or a shorter prefix")
        return first, T, H * W

    def shift(self, outputs: torch.Tensor, per_token: torch.Tensor,
              video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair each output in the loss with the token of the next step at the same position:
        outputs [B, N, ...] (or [B, N - S, ...] from training_outputs) of steps s0..T'-2 and per_token
        [B, N, ...] values of steps s0+1..T'-1."""
        first, T, S = self.loss_window(video)
        return outputs[:, first * S:(T - 1) * S], per_token[:, (first + 1) * S:]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.step_loss(batch["video"])
        self.log("train/loss", loss, batch_size=batch["video"].size(0))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.step_loss(batch["video"], metrics=True)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["video"].size(0))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.step_loss(batch["video"])
        self.log("test/loss", loss, sync_dist=True, batch_size=batch["video"].size(0))

    # -- generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, video: torch.Tensor, context_frames: int, use_cache: bool = True) -> torch.Tensor:
        """Generate the frames of `video` after the first `context_frames`, one step at a time, each
        step conditioned on the context and the steps generated so far. Returns the generated frames
        [B, C, T - context_frames, H, W] in the clip's normalised space.

        With use_cache (default) every step runs only the new step's tokens against the cached keys
        and values of all earlier ones; without, each step re-runs the whole clip so far (same result,
        quadratic cost)."""
        tubelet, patch = self.encoder.tubelet_size, self.encoder.patch_size
        T, H, W = self.encoder.token_grid(video.shape)
        context_steps = context_frames // tubelet
        if context_frames % tubelet or not max(self.prefix_steps, 1) <= context_steps < T:
            raise ValueError(f"context of {context_frames} frames: must be whole steps of {tubelet} frames, cover the "
                             f"{self.prefix_steps}-step prefix and leave frames to predict "
                             f"in a {video.size(2)}-frame clip")
        clip = self.model_input(video[:, :, :context_frames])
        caches = [KVCache() for _ in self.encoder.blocks] if use_cache else None
        for _ in range(context_steps, T):
            outputs = self.outputs(clip, caches)[:, -H * W:]
            patches = self.next_step_patches(outputs, clip)
            clip = torch.cat([clip, unpatchify(patches, (1, H, W), tubelet, patch)], dim=2)
        return clip[:, :, context_frames:]

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """A rollout from the first `rollout_context_frames` frames, in [0, 1] pixels, for a writer
        (arjepa_pl.callbacks.RolloutWriter) to save and score."""
        video, c = batch["video"], self.rollout_context_frames
        prediction = self.rollout(video, c)
        return {"context": self.to_pixels(video[:, :, :c]), "prediction": self.to_pixels(prediction),
                "truth": self.to_pixels(video[:, :, c:]), "index": batch.get("index")}

    def media(self, batch: dict) -> dict[str, np.ndarray]:
        """Rollouts of a few training clips while training runs (callbacks.MediaLogger saves them and
        logs them to W&B): `rollout`, two labelled rows per clip (context | truth above context |
        prediction), and `rollout_video`, truth beside the model, the clips stacked."""
        video = batch["video"]
        if video.size(2) <= self.rollout_context_frames:
            rank_zero_warn(f"no rollout media: clips of {video.size(2)} frames leave nothing to predict after "
                           f"rollout_context_frames={self.rollout_context_frames}")
            return {}
        out = self.predict_step(batch, 0)
        clips = [(out["context"][b], out["prediction"][b], out["truth"][b]) for b in range(video.size(0))]
        title = f"rollouts of {len(clips)} training clips at step {self.global_step}"
        return {"rollout": rollout_picture(clips, title=title),
                "rollout_video": np.concatenate([rollout_frames(*clip) for clip in clips], axis=1)}


class ARVideo(NextStepObjective):
    """Next-step pixel regression: the output at (t, i) regresses patch i of step t + 1, L2 loss.

    Args:
        encoder: the V-JEPA ViT (video=True); its tubelet is one step.
        head_hidden: hidden width of the MLP head (default 4 x encoder width).
        target_norm: "patch" = AIM's per-patch normalised pixels (each target patch to zero mean, unit
            variance: better features, but predictions cannot be turned back into pixels, so no
            rollouts); "global" = the pixels as the datamodule normalised them (one affine map for the
            whole data set), which rollouts need.
        residual: regress the change from the last frame of the current step instead of the next step
            itself (prediction = last frame + output), so an untrained head starts at copy-last-frame.
        prefix_steps: bidirectional prefix of k steps, left out of the loss.
        rollout_context_frames: context frames of `predict` rollouts.
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        head_hidden: Optional[int] = None,
        target_norm: Literal["patch", "global"] = "global",
        residual: bool = False,
        prefix_steps: int = 0,
        rollout_context_frames: int = 8,
        **optim_args,
    ):
        if target_norm not in ("patch", "global"):
            raise ValueError(f"target_norm must be 'patch' or 'global', got {target_norm!r}")
        patch_dim = encoder.config["in_chans"] * encoder.tubelet_size * encoder.patch_size**2
        super().__init__(encoder, patch_dim, head_hidden, prefix_steps, rollout_context_frames, **optim_args)
        self.save_init_args()
        self.target_norm, self.residual = target_norm, residual

    def targets(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token regression targets [B, N, patch_dim] — token (t, i) holds what the output at
        (t - 1, i) must predict (the first step's row is never used) — and, per output token, the
        copy-last-frame guess in the same space (for the baseline loss)."""
        patches = patchify(video, self.encoder.tubelet_size, self.encoder.patch_size)
        held = hold_last_frame(patches, video.size(1), self.encoder.tubelet_size)
        if self.residual:  # the target is the change from the held frame: copying it predicts 0
            _, _, S = self.loss_window(video)
            patches, held = torch.cat([patches[:, :S], patches[:, S:] - held[:, :-S]], dim=1), torch.zeros_like(held)
        if self.target_norm == "patch":
            return normalize_patches(patches), normalize_patches(held)
        return patches, held

    def step_loss(self, video: torch.Tensor, metrics: bool = False) -> torch.Tensor:
        targets, copy_last = self.targets(video)
        pred, target = self.shift(self.training_outputs(video), targets, video)
        if metrics:  # the loss of copying the last frame: the model must get below it
            guess, _ = self.shift(copy_last, targets, video)
            self.log("val/copy_last_loss", F.mse_loss(guess, target), sync_dist=True, batch_size=video.size(0))
        return F.mse_loss(pred, target)

    def next_step_patches(self, outputs: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        if self.target_norm == "patch":
            raise ValueError("rollouts need pixel predictions: per-patch normalised targets (target_norm='patch') "
                             "cannot be turned back into pixels; train with target_norm='global'")
        if self.residual:
            last = patchify(clip[:, :, -self.encoder.tubelet_size:], self.encoder.tubelet_size, self.encoder.patch_size)
            outputs = outputs + hold_last_frame(last, clip.size(1), self.encoder.tubelet_size)
        return outputs
