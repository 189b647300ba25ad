"""Model-predictive control on the two-rooms task: plan, take the first `replan_every` actions in the true
environment, plan again from what is observed, until the agent is within `success_radius` of the goal
or `max_steps` actions are spent. All episodes run side by side: one planner call plans for every
episode still going (the world model's batch is episodes x samples), on the world model's device.

An episode set is a fixed, seeded list of (start, goal) pairs, the goal in the other room for
`other_room_fraction` of them (those need the door). Random actions (the random walk that collected
the training data) run the same episodes as the floor every world model must clear.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from arjepa_pl.callbacks.performance import CPU_ATTENTION_FLOPS
from arjepa_pl.planning.optimizers import SamplingPlanner, shift_plan
from arjepa_pl.planning.world_models import CostWeighting, WorldModel, step_weights
from data_modules.two_rooms import TwoRooms, to_uint8
from data_modules.two_rooms_data import random_walk_actions


@dataclass
class Episodes:
    """Start and goal positions [E, 2]."""

    starts: torch.Tensor
    goals: torch.Tensor

    @classmethod
    def sample(cls, sim: TwoRooms, num: int, seed: int, other_room_fraction: float = 0.8) -> "Episodes":
        """`num` episodes from `seed` alone: starts uniform in either room, goals uniform in the other
        room for the first round(other_room_fraction * num), in the same room for the rest."""
        if num < 1 or not 0 <= other_room_fraction <= 1:
            raise ValueError(f"need num >= 1 and other_room_fraction in [0, 1], got {num}, {other_room_fraction}")
        g = torch.Generator().manual_seed(seed)
        rooms = (torch.rand(num, generator=g) < 0.5).long()
        crossing = torch.arange(num) < round(other_room_fraction * num)
        left, right = sim.sample_free(num, g, room=0), sim.sample_free(num, g, room=1)
        second_left, second_right = sim.sample_free(num, g, room=0), sim.sample_free(num, g, room=1)
        starts = torch.where(rooms[:, None] == 0, left, right)
        other = torch.where(rooms[:, None] == 0, right, left)
        same = torch.where(rooms[:, None] == 0, second_left, second_right)
        return cls(starts, torch.where(crossing[:, None], other, same))

    def __len__(self) -> int:
        return len(self.starts)

    def to(self, device) -> "Episodes":
        return Episodes(self.starts.to(device), self.goals.to(device))


@dataclass
class EpisodeResults:
    """What happened in every episode of one run (one world model or baseline on one episode set).

    trajectories: [max_steps + 1, E, 2] positions after each action (held once an episode ends);
    predicted: [E, max_steps, 3, S, S] uint8, what the plan in force predicted for each step (None
    without a world model or without media); first_plan: [E, H, 3, S, S] uint8, the first plan's
    predicted rollout; planning_seconds: wall time inside the planner (all episodes together)."""

    name: str
    success: torch.Tensor
    final_distance: torch.Tensor
    steps: torch.Tensor
    trajectories: torch.Tensor
    predicted: Optional[torch.Tensor] = None
    first_plan: Optional[torch.Tensor] = None
    planning_seconds: float = 0.0
    planner_calls: int = 0
    planning_flops_per_action: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def actions_taken(self) -> int:
        return int(self.steps.sum())

    def summary(self) -> dict:
        """Plain numbers for reports: rates and means over the episodes."""
        actions = max(self.actions_taken, 1)
        return {"name": self.name, "episodes": len(self.success), "success_rate": float(self.success.float().mean()),
                "final_distance": float(self.final_distance.mean()), "steps": float(self.steps.float().mean()),
                "planning_seconds_per_action": self.planning_seconds / actions if self.planner_calls else 0.0,
                "planning_seconds": self.planning_seconds, "planner_calls": self.planner_calls,
                "planning_flops_per_action": self.planning_flops_per_action, **self.extra}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MPC:
    """Receding-horizon control with a sampling planner (see the module docstring).

    Args:
        planner: CEM or MPPI; its horizon is the plan length.
        replan_every: actions taken from each plan before planning again (1 .. horizon).
        max_steps: actions an episode may take.
        success_radius: an episode succeeds (and stops) once the agent is this close to the goal.
        cost_weighting: how the distances of the predicted states are combined (world_models.COST_WEIGHTINGS).
        max_rollouts: sequences a world model rolls out at once (bounds memory).
    """

    def __init__(self, planner: SamplingPlanner, replan_every: int = 2, max_steps: int = 24,
                 success_radius: float = 0.06, cost_weighting: CostWeighting = "ramp", max_rollouts: int = 4096):
        if not 1 <= replan_every <= planner.horizon:
            raise ValueError(f"replan_every must lie in [1, horizon={planner.horizon}], got {replan_every}")
        if max_steps < 1 or success_radius <= 0 or max_rollouts < 1:
            raise ValueError(f"need max_steps >= 1, success_radius > 0, max_rollouts >= 1, got {max_steps}, "
                             f"{success_radius}, {max_rollouts}")
        step_weights(planner.horizon, cost_weighting)  # checks the name
        self.planner, self.replan_every, self.max_steps = planner, replan_every, max_steps
        self.success_radius, self.cost_weighting, self.max_rollouts = success_radius, cost_weighting, max_rollouts

    @torch.no_grad()
    def run(self, world_model: WorldModel, sim: TwoRooms, episodes: Episodes, seed: int = 0,
            media: bool = True, count_flops: bool = True) -> EpisodeResults:
        starts, goals = episodes.starts, episodes.goals
        device, E, H = starts.device, len(episodes), self.planner.horizon
        generator = torch.Generator(device=device).manual_seed(seed)
        goal = world_model.encode_goal(sim.render(goals), goals)
        state, done = starts.clone(), torch.zeros(E, dtype=torch.bool, device=device)
        steps = torch.zeros(E, dtype=torch.long, device=device)
        plans = torch.zeros(E, H, 2, device=device)
        trajectory, predicted, first_plan = [state.clone()], None, None
        seconds, calls, flops_per_action = 0.0, 0, None
        t = 0
        while t < self.max_steps and not bool(done.all()):
            idx = (~done).nonzero().squeeze(1)
            start = world_model.encode_observation(sim.render(state[idx]), state[idx])

            def cost_fn(actions: torch.Tensor, start: torch.Tensor = start,
                        goal: torch.Tensor = goal[idx]) -> torch.Tensor:  # bound now: they change every turn
                return world_model.trajectory_costs(start, goal, actions, self.cost_weighting, self.max_rollouts)

            counter = None
            if count_flops and calls == 0:
                counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
            _sync(device)
            begin = time.perf_counter()
            if counter is not None:
                with counter:
                    result = self.planner.plan(cost_fn, plans[idx], generator)
            else:
                result = self.planner.plan(cost_fn, plans[idx], generator)
            _sync(device)
            seconds += time.perf_counter() - begin
            calls += 1
            taken = min(self.replan_every, self.max_steps - t)
            if counter is not None:  # FLOPs of planning one action, from the first call
                flops_per_action = counter.get_total_flops() / (len(idx) * taken)
            if media:
                pictures = to_uint8(world_model.pictures(world_model.predicted_states(start, result.actions))).cpu()
                if predicted is None:
                    predicted = torch.zeros(E, self.max_steps, *pictures.shape[2:], dtype=torch.uint8)
                    first_plan = pictures
                predicted[idx.cpu(), t:t + taken] = pictures[:, :taken]
            for j in range(taken):
                moved = sim.step(state[idx], result.actions[:, j] * sim.layout.max_step)
                active = ~done[idx]
                state[idx] = torch.where(active[:, None], moved, state[idx])
                steps[idx] += active.long()
                done[idx] |= (state[idx] - goals[idx]).norm(dim=-1) < self.success_radius
                trajectory.append(state.clone())
            plans[idx] = shift_plan(result.actions, taken)
            t += taken
        return self._results(world_model.name, state, goals, steps, trajectory, predicted, first_plan, seconds, calls,
                             flops_per_action)

    def _results(self, name, state, goals, steps, trajectory, predicted, first_plan, seconds, calls,
                 flops) -> EpisodeResults:
        while len(trajectory) < self.max_steps + 1:  # episodes that all ended early: hold the last state
            trajectory.append(trajectory[-1])
        distance = (state - goals).norm(dim=-1)
        return EpisodeResults(name, (distance < self.success_radius).cpu(), distance.cpu(), steps.cpu(),
                              torch.stack(trajectory).cpu(), predicted, first_plan, seconds, calls, flops)

    def run_random(self, sim: TwoRooms, episodes: Episodes, seed: int = 0) -> EpisodeResults:
        """The same episodes under open-loop random-walk actions (the data set's policy), stopping at the goal."""
        starts, goals = episodes.starts, episodes.goals
        generator = torch.Generator().manual_seed(seed)
        actions = random_walk_actions(len(episodes), self.max_steps, generator).to(starts.device)
        state, done = starts.clone(), torch.zeros(len(episodes), dtype=torch.bool, device=starts.device)
        steps = torch.zeros(len(episodes), dtype=torch.long, device=starts.device)
        trajectory = [state.clone()]
        for t in range(self.max_steps):
            moved = sim.step(state, actions[:, t] * sim.layout.max_step)
            state = torch.where(done[:, None], state, moved)
            steps += (~done).long()
            done |= (state - goals).norm(dim=-1) < self.success_radius
            trajectory.append(state.clone())
        return self._results("random", state, goals, steps, trajectory, None, None, 0.0, 0, None)

