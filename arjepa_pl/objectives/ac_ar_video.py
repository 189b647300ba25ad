"""ACARVideo: an action-conditioned autoregressive video world model — the next frame's pixels.

The same encoder and block-causal predictor as ACJEPA (action_conditioned.py), with the predictor's
output at frame t regressing frame t + 1's patches (per-patch pixel regression, L2, as ARVideo) in the
data's normalisation. In a rollout, each predicted frame is encoded again and fed back: the state an
AR world model carries is an image.

The output is the next frame itself, not (`residual`) its change from frame t. On the two-rooms task
the change is an interaction of where the agent is and the action — neither alone predicts it — so a
model regressing the change starts at "no change" with little pulling its tokens to encode the agent:
after 500 steps at lr 1e-3 its validation error was copying's (0.00377 against 0.00379) and its
predictions for opposite actions were 2e-10 apart (pixel MSE); at configs/ac_ar.yaml's 1000 steps and
lr 3e-3 it reaches 0.00283, and one step right or left from the same frame gives predictions 0.006
apart. Predicting the frame itself makes it encode the frame, agent included, and the action's effect
follows: 0.00173 at the same settings, right and left 0.016 apart (the true frames: 0.026); planning
50 two-rooms episodes, 86 % success against the residual model's 76 % (docs/planning.md).

A planner compares predicted frames with the goal frame: mean squared pixel error (`planning_cost:
pixels`), or, as an option, the mean L1 between the LayerNorm'ed tokens of this model's own encoder
(`latent`), the distance ACJEPA plans with.
"""

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from arjepa_pl.models import FeatureExtractor, VisionTransformer, patchify, unpatchify
from arjepa_pl.objectives.ac_jepa import layer_norm
from arjepa_pl.objectives.action_conditioned import ActionConditionedObjective, comparison_media


class ACARVideo(ActionConditionedObjective):
    """Action-conditioned next-frame pixel prediction (see the module docstring).

    Args:
        encoder: the ViT (image mode or tubelet 1), trained through the pixel loss.
        image_size: frame side in pixels.
        action_dim: values per action.
        predictor_embed_dim / predictor_depth / predictor_num_heads: the action-conditioned predictor.
        rollout_steps / rollout_weight: the rollout term (steps fed their own predictions, and its weight).
        residual: predict the change from the current frame instead of the next frame itself (an
            untrained model then copies the current frame; see the module docstring for why it is off).
        planning_cost: how planners compare a predicted frame with the goal frame: "pixels" (mean
            squared error) or "latent" (mean L1 of this model's LayerNorm'ed encoder tokens).
        optim_args: the optimiser, its schedules and parallelism: see arjepa_pl.optim.ScheduledModule.
    """

    predicts_pixels = True

    def __init__(
        self,
        encoder: VisionTransformer,
        image_size: int = 64,
        action_dim: int = 2,
        predictor_embed_dim: int = 96,
        predictor_depth: int = 4,
        predictor_num_heads: Optional[int] = None,
        rollout_steps: int = 4,
        rollout_weight: float = 1.0,
        residual: bool = False,
        planning_cost: Literal["pixels", "latent"] = "pixels",
        **optim_args,
    ):
        patch_dim = encoder.config["in_chans"] * encoder.patch_size**2
        super().__init__(encoder, patch_dim, image_size, action_dim, predictor_embed_dim, predictor_depth,
                         predictor_num_heads, rollout_steps, rollout_weight, **optim_args)
        self.save_init_args()
        self.residual = residual
        self.planning_cost = planning_cost  # checked where it is used: plan configs may set it

    def feature_extractor(self) -> FeatureExtractor:
        """What probes read: the encoder, one frame at a time."""
        return FeatureExtractor(self.encoder)

    # -- objective -----------------------------------------------------------------------------------
    def context(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames [..., 3, S, S] -> the predictor's inputs [..., N, D]."""
        return layer_norm(self.encode_with(self.encoder, frames))

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [..., 3, S, S] -> patches [..., N, 3 p p] in the encoder's token order."""
        lead, p = frames.shape[:-3], self.encoder.patch_size
        flat = patchify(frames.reshape(-1, *frames.shape[-3:]).unsqueeze(2), 1, p)
        return flat.view(*lead, *flat.shape[1:])

    def frames_of(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `patches`."""
        lead, side = patches.shape[:-2], self.image_size // self.encoder.patch_size
        flat = unpatchify(patches.reshape(-1, *patches.shape[-2:]), (1, side, side), 1, self.encoder.patch_size)
        return flat[:, :, 0].reshape(*lead, *flat.shape[1:2], *flat.shape[-2:])

    def predictor_inputs(self, state: torch.Tensor) -> torch.Tensor:
        return self.context(state)  # a rollout state is a (predicted) frame: encode it again

    def next_state(self, state: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.frames_of(output + self.patches(state) if self.residual else output)

    def terms(self, batch: dict) -> dict[str, torch.Tensor]:
        frames, actions = self.unpack(batch)
        T = actions.size(1)
        target = self.patches(frames[:, 1:])
        current = self.patches(frames[:, :T])
        output = self.predictor(self.context(frames[:, :T]), actions)
        predicted = output + current if self.residual else output
        terms = {"teacher_forced_loss": F.mse_loss(predicted, target),
                 # The loss of copying the current frame: what a useful model gets below.
                 "copy_last_loss": F.mse_loss(current, target).detach()}
        loss = terms["teacher_forced_loss"]
        steps = min(self.rollout_steps, T)
        if steps > 1:  # a one-step rollout is the first teacher-forced step
            rolled = self.rollout_from(frames[:, 0], actions[:, :steps])
            terms["rollout_loss"] = F.mse_loss(rolled, frames[:, 1:steps + 1])
            loss = loss + self.rollout_weight * terms["rollout_loss"]
        terms["loss"] = loss
        return terms

    # -- planning interface --------------------------------------------------------------------------
    def _check_cost(self) -> None:
        if self.planning_cost not in ("pixels", "latent"):
            raise ValueError(f"planning_cost must be 'pixels' or 'latent', got {self.planning_cost!r}")

    def encode_observation(self, frames01: torch.Tensor) -> torch.Tensor:
        return self.normalize(frames01)

    def encode_goal(self, frames01: torch.Tensor) -> torch.Tensor:
        self._check_cost()
        goal = self.normalize(frames01)
        return goal if self.planning_cost == "pixels" else self.context(goal)

    def predicted_states(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.rollout_from(start, actions)

    def distance(self, predicted: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Predicted frames [B, K, H, 3, S, S] against goals (frames [B, 3, S, S], or their tokens
        [B, N, D] for the latent cost) -> [B, K, H]."""
        self._check_cost()
        if self.planning_cost == "pixels":
            return (predicted - goal[:, None, None]).pow(2).mean(dim=(-3, -2, -1))
        return (self.context(predicted) - goal[:, None, None]).abs().mean(dim=(-2, -1))

    def media(self, batch: dict) -> dict[str, np.ndarray]:
        """`rollout`: per clip, the true frames 1..T above the frames predicted from frame 0 and the
        actions alone; `rollout_video`: the same, truth beside prediction."""
        frames, actions = self.unpack(batch)
        rolled = self.rollout_from(frames[:, 0], actions)
        return comparison_media(self.to_pixels(frames[:, 1:]), self.to_pixels(rolled))
