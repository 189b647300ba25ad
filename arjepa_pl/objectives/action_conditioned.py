"""What the two action-conditioned world models share (ACJEPA in ac_jepa.py, ACARVideo in ac_ar_video.py).

Both encode every frame of a window with the framework's ViT (image mode, or a video ViT with a tubelet
of one frame), and run the same block-causal ActionConditionedPredictor over the frames' tokens and one
token per action; they differ only in what the predictor's output at frame t is asked to be: frame
t + 1's target-encoder latent (JEPA) or frame t + 1's pixels (AR). Each is trained on two terms:

- teacher forcing: every step's prediction from the true frames before it (one pass, block-causal);
- rollout: the first `rollout_steps` predictions from the first frame alone, each step fed the model's
  own previous prediction, as a planner will use it (so errors that compound are trained against).

Batches are TwoRoomsDataModule windows: {"frames": [B, T + 1, 3, S, S] normalised, "actions": [B, T, A], ...}.
The world-model interface planners use (arjepa_pl.planning) is `encode_observation`, `encode_goal`,
`rollout` and `distance`, all on the module's device.
"""

from typing import Optional

import numpy as np
import torch
from torch import nn

from arjepa_pl.models import VisionTransformer
from arjepa_pl.models.action_predictor import ActionConditionedPredictor
from arjepa_pl.models.vit import KVCache
from arjepa_pl.optim import ScheduledModule
from arjepa_pl.pictures import tile


class ActionConditionedObjective(ScheduledModule):
    """Encoder + block-causal action-conditioned predictor (see the module docstring).

    Args:
        encoder: the framework's ViT, image mode (video: false) or a video ViT with tubelet_size 1.
        out_dim: what the predictor outputs per token.
        image_size: frame side in pixels (fixes the predictor's token grid).
        action_dim: values per action.
        predictor_embed_dim / predictor_depth / predictor_num_heads: the predictor (heads default to the encoder's).
        rollout_steps: steps of the rollout term (0: teacher forcing only).
        rollout_weight: weight of the rollout term in the loss.
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    predicts_pixels = False  # whether rollout states are frames (AR) rather than latents

    def __init__(self, encoder: VisionTransformer, out_dim: int, image_size: int, action_dim: int,
                 predictor_embed_dim: int, predictor_depth: int, predictor_num_heads: Optional[int],
                 rollout_steps: int, rollout_weight: float, **optim_args):
        super().__init__(**optim_args)
        if encoder.video and encoder.tubelet_size != 1:
            raise ValueError(f"world models encode one frame at a time: use an image encoder (video: false) or "
                             f"tubelet_size 1, got tubelet_size {encoder.tubelet_size}")
        if image_size % encoder.patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by the patch size {encoder.patch_size}")
        if rollout_steps < 0 or rollout_weight < 0:
            raise ValueError(f"rollout_steps and rollout_weight must be >= 0, got {rollout_steps}, {rollout_weight}")
        self.encoder = encoder
        side = image_size // encoder.patch_size
        self.predictor = ActionConditionedPredictor(
            encoder.embed_dim, out_dim, (side, side), action_dim, predictor_embed_dim, predictor_depth,
            predictor_num_heads or encoder.num_heads)
        self.image_size, self.action_dim = image_size, action_dim
        self.rollout_steps, self.rollout_weight = rollout_steps, rollout_weight
        # The data's normalisation (set from the datamodule in setup), saved with the weights so a
        # planner can feed raw [0, 1] frames to a loaded checkpoint.
        self.pixel_mean: torch.Tensor
        self.pixel_std: torch.Tensor
        self.register_buffer("pixel_mean", torch.full((3,), 0.5))
        self.register_buffer("pixel_std", torch.full((3,), 0.5))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # What a planner needs to rebuild this model from the checkpoint alone (arjepa_pl.planning).
        cls = type(self)
        checkpoint["world_model"] = {"objective": f"{cls.__module__}.{cls.__qualname__}",
                                     "encoder": dict(self.encoder.config)}

    # -- data ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Trainer.datamodule is set by Lightning's DataConnector but not declared on the class.
        datamodule = self.trainer.datamodule if self._trainer is not None else None  # type: ignore[attr-defined]
        if datamodule is not None and hasattr(datamodule, "mean") and hasattr(datamodule, "std"):
            self.pixel_mean.copy_(torch.tensor(datamodule.mean))
            self.pixel_std.copy_(torch.tensor(datamodule.std))

    def unpack(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames [B, T + 1, 3, S, S], actions [B, T, A]), checked."""
        if "frames" not in batch or "actions" not in batch:
            raise ValueError(f"world models read batch['frames'] and batch['actions'] (TwoRoomsDataModule); "
                             f"the batch has keys {sorted(batch)}")
        frames, actions = batch["frames"], batch["actions"]
        B, T1 = frames.shape[:2]
        if frames.dim() != 5 or frames.shape[-1] != self.image_size or actions.shape != (B, T1 - 1, self.action_dim):
            raise ValueError(f"need frames [B, T+1, 3, {self.image_size}, {self.image_size}] and actions [B, T, "
                             f"{self.action_dim}], got {tuple(frames.shape)} and {tuple(actions.shape)}")
        return frames, actions

    def normalize(self, frames01: torch.Tensor) -> torch.Tensor:
        """[0, 1] frames [..., 3, S, S] -> the model's input space."""
        return (frames01 - self.pixel_mean.view(3, 1, 1)) / self.pixel_std.view(3, 1, 1)

    def to_pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [..., 3, S, S] -> [0, 1]."""
        return (frames * self.pixel_std.view(3, 1, 1) + self.pixel_mean.view(3, 1, 1)).clamp(0, 1)

    def encode_with(self, encoder: nn.Module, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [..., 3, S, S] -> tokens [..., N, D], every frame on its own."""
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:])
        tokens = encoder(x.unsqueeze(2) if self.encoder.video else x)
        return tokens.view(*lead, *tokens.shape[1:])

    # -- the predictor -------------------------------------------------------------------------------
    def predictor_inputs(self, state: torch.Tensor) -> torch.Tensor:
        """A rollout state (a latent for JEPA, a frame for AR) -> the predictor's tokens for it [B, N, in_dim]."""
        raise NotImplementedError

    def next_state(self, state: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The state the predictor's output [B, N, out_dim] for the step after `state` stands for."""
        raise NotImplementedError

    def rollout_from(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """A first state [B, ...] and actions [B, H, A] -> the H states that follow [B, H, ...], each step fed
        the previous prediction, one step at a time against a KV cache of the earlier steps."""
        caches: list[KVCache] = self.predictor.new_caches()
        states = []
        for t in range(actions.shape[1]):
            output = self.predictor(self.predictor_inputs(state).unsqueeze(1), actions[:, t:t + 1], caches, start=t)
            state = self.next_state(state, output[:, 0])
            states.append(state)
        return torch.stack(states, dim=1)

    # -- training ------------------------------------------------------------------------------------
    def terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every term of the loss by name; `loss` is what is minimised."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.terms(batch)
        B = batch["frames"].size(0)
        self.log("train/loss", terms["loss"], batch_size=B)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=B)
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.terms(batch)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, prog_bar=False, sync_dist=True,
                      batch_size=batch["frames"].size(0))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.terms(batch)
        self.log("test/loss", terms["loss"], sync_dist=True, batch_size=batch["frames"].size(0))

    # -- planning interface (arjepa_pl.planning.world_models) ----------------------------------------
    def encode_observation(self, frames01: torch.Tensor) -> torch.Tensor:
        """[0, 1] frames [B, 3, S, S] -> the rollout's start [B, N, in_dim]."""
        raise NotImplementedError

    def encode_goal(self, frames01: torch.Tensor) -> torch.Tensor:
        """[0, 1] goal frames [B, 3, S, S] -> what `distance` compares predictions with."""
        raise NotImplementedError

    def predicted_states(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Start [B, ...] and actions [B, H, A] -> the H predicted states [B, H, ...] that `distance` scores."""
        raise NotImplementedError

    def distance(self, predicted: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Predicted states [B, K, H, ...] and goals [B, ...] -> distances [B, K, H]."""
        raise NotImplementedError



def comparison_media(truth: torch.Tensor, model: torch.Tensor) -> dict[str, np.ndarray]:
    """Media of a world model's rollouts: truth and model frames [b, T, 3, S, S] in [0, 1] ->
    `rollout`, a picture with per clip a row of true frames above a row of the model's, and
    `rollout_video`, truth beside model, the clips stacked."""
    def hwc(x: torch.Tensor) -> np.ndarray:
        return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()

    rows = torch.stack([truth, model], dim=1).flatten(0, 1)  # truth, model, truth, model, ...
    side_by_side = torch.cat([truth, model], dim=-1)  # [b, T, 3, S, 2S]
    return {"rollout": tile(hwc(rows)), "rollout_video": hwc(torch.cat(list(side_by_side), dim=-2))}
