"""One small interface for everything a planner can plan with: encode an observation, encode a goal,
roll out action sequences, measure how far a predicted state is from the goal.

- `ObjectiveWorldModel` wraps a trained ACJEPA or ACARVideo (arjepa_pl.objectives), whose methods of the
  same names do the work (latents compared by L1; frames by pixel error or latent L1);
- `SimulatorWorldModel` is the true simulator standing in as the world model: the oracle upper bound
  (its state is the agent's position, its distance the Euclidean one).

`trajectory_costs` scores many action sequences at once, in chunks so the predictor's KV caches fit in
memory, weighting each step's distance (see COST_WEIGHTINGS). `pictures` turns predicted states into
frames for the episode media: a pixel model's frames as predicted, the simulator's states rendered, and
a latent model's latents as the frame whose latent is nearest, among frames of the agent on a grid of
positions (the latent model itself never produces a picture).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from data_modules.two_rooms import TwoRooms

CostWeighting = Literal["ramp", "sum", "last"]
# How the distances of the H predicted states to the goal are combined into a plan's cost:
# ramp: step t (1-based) weighs t / H, so a plan is judged mostly by where it ends while reaching the goal
#   early still pays (plain sums prefer waiting at a wall near the goal to a detour through the door);
# sum: every step alike (eb_jepa's sum of distances); last: the final state only.
COST_WEIGHTINGS = ("ramp", "sum", "last")


def step_weights(horizon: int, weighting: CostWeighting, device=None) -> torch.Tensor:
    if weighting == "ramp":
        return torch.arange(1, horizon + 1, device=device, dtype=torch.float32) / horizon
    if weighting == "sum":
        return torch.ones(horizon, device=device)
    if weighting == "last":
        return torch.zeros(horizon, device=device).index_fill_(0, torch.tensor([horizon - 1], device=device), 1.0)
    raise ValueError(f"cost weighting must be one of {COST_WEIGHTINGS}, got {weighting!r}")


class WorldModel:
    """The interface (see the module docstring). Frames are [B, 3, S, S] in [0, 1]; states are the true
    agent positions [B, 2] (only the oracle may read them); actions are in the unit disc."""

    name = "world_model"

    def encode_observation(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_goal(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predicted_states(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """start [M, ...], actions [M, H, A] -> [M, H, ...]."""
        raise NotImplementedError

    def distance(self, predicted: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """predicted [B, K, H, ...], goal [B, ...] -> [B, K, H]."""
        raise NotImplementedError

    def pictures(self, predicted: torch.Tensor) -> torch.Tensor:
        """predicted [B, H, ...] -> frames [B, H, 3, S, S] in [0, 1] for the media."""
        raise NotImplementedError

    @torch.no_grad()
    def trajectory_costs(self, start: torch.Tensor, goal: torch.Tensor, actions: torch.Tensor,
                         weighting: CostWeighting = "ramp", max_rollouts: int = 4096) -> torch.Tensor:
        """Costs [B, K] of action sequences [B, K, H, A] from starts [B, ...] to goals [B, ...]."""
        B, K, H, A = actions.shape
        weights = step_weights(H, weighting, actions.device)
        per_chunk = max(1, max_rollouts // K)  # whole problems per chunk: the goal stays aligned
        costs = []
        for b in range(0, B, per_chunk):
            s, a = start[b:b + per_chunk], actions[b:b + per_chunk]
            n = s.shape[0]
            repeated = s.unsqueeze(1).expand(n, K, *s.shape[1:]).reshape(n * K, *s.shape[1:])
            predicted = self.predicted_states(repeated, a.reshape(n * K, H, A))
            predicted = predicted.view(n, K, H, *predicted.shape[2:])
            costs.append((self.distance(predicted, goal[b:b + per_chunk]) * weights).sum(-1))
        return torch.cat(costs)


class SimulatorWorldModel(WorldModel):
    """The true simulator as the world model: an upper bound for every learned one."""

    name = "oracle"

    def __init__(self, sim: TwoRooms):
        self.sim = sim

    def encode_observation(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return states

    encode_goal = encode_observation

    def predicted_states(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.sim.rollout(start, actions * self.sim.layout.max_step)

    def distance(self, predicted: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return (predicted - goal[:, None, None]).norm(dim=-1)

    def pictures(self, predicted: torch.Tensor) -> torch.Tensor:
        return self.sim.render(predicted)


class ObjectiveWorldModel(WorldModel):
    """A trained ACJEPA / ACARVideo as the planner's world model, run in eval mode on its own device.

    Args:
        objective: the LightningModule (see arjepa_pl.objectives.action_conditioned).
        sim: the environment, for the nearest-neighbour pictures of latent models.
        name: what reports call it.
        picture_grid: positions per side of the grid of frames latents are matched against.
    """

    def __init__(self, objective, sim: TwoRooms, name: Optional[str] = None, picture_grid: int = 32):
        self.objective = objective.eval()
        self.sim, self.name = sim, name or type(objective).__name__
        self.picture_grid = picture_grid
        self._bank: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def encode_observation(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.objective.encode_observation(frames)

    def encode_goal(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.objective.encode_goal(frames)

    def predicted_states(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.objective.predicted_states(start, actions)

    def distance(self, predicted: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self.objective.distance(predicted, goal)

    @torch.no_grad()
    def pictures(self, predicted: torch.Tensor) -> torch.Tensor:
        if self.objective.predicts_pixels:
            return self.objective.to_pixels(predicted)
        return self.sim.render(self.nearest_positions(predicted))

    @torch.no_grad()
    def nearest_positions(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [..., N, D] -> the agent positions [..., 2] of the grid frames whose target latents are nearest."""
        if self._bank is None:
            lo, hi = self.sim.layout.bounds
            axis = torch.linspace(lo, hi, self.picture_grid, device=latents.device)
            grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
            grid = grid[self.sim.is_free(grid)]
            self._bank = (grid, torch.cat([self.objective.encode_goal(self.sim.render(g)) for g in grid.split(256)]))
        positions, bank = self._bank
        flat = latents.reshape(-1, *latents.shape[-2:])
        nearest = torch.cat([(x.unsqueeze(1) - bank).abs().mean(dim=(-2, -1)).argmin(1) for x in flat.split(8)])
        return positions[nearest].view(*latents.shape[:-2], 2)


def load_objective(ckpt_path, device: torch.device | str = "cpu", weights_only: bool = True):
    """(the ACJEPA / ACARVideo a Lightning checkpoint holds, in eval mode on `device`, the checkpoint dict)."""
    import importlib
    from pathlib import Path

    from lightning.pytorch.cli import instantiate_class

    from arjepa_pl.errors import ConfigError

    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError("ckpt_path", str(path), "no checkpoint file there")
    checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    entry = checkpoint.get("world_model") if isinstance(checkpoint, dict) else None
    if entry is None:
        raise ConfigError("ckpt_path", str(path), "not a world-model checkpoint (no 'world_model' entry): train one "
                          "with configs/ac_jepa.yaml or configs/ac_ar.yaml")
    module_name, _, class_name = entry["objective"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    # The encoder as it was built (a frozen pretrained one is in the state dict like any other).
    hparams["encoder"] = instantiate_class((), {"class_path": "arjepa_pl.models.VisionTransformer",
                                                "init_args": entry["encoder"]})
    state = dict(checkpoint["state_dict"])
    if hparams.pop("encoder_checkpoint", None) is not None:
        # Trained on a frozen encoder, which was its own target: rebuild with an (identical) target copy.
        state.update({"target_" + k: v for k, v in checkpoint["state_dict"].items() if k.startswith("encoder.")})
    objective = cls(**hparams)
    objective.load_state_dict(state)
    return objective.to(device).eval(), checkpoint
