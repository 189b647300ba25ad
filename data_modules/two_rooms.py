"""Two rooms: a small deterministic 2-D navigation task that ships with the framework (no download).

A point agent moves in the unit square, split by a vertical wall with one door, in the spirit of the
two-rooms task of PLDM (Sobal et al., 2025) and eb_jepa. An action is a 2-D displacement, clipped to
`max_step` in norm; the border and the wall stop the agent (it slides along them), the door lets it
through. Observations are small RGB frames: dark floor, grey walls, the agent as an anti-aliased red
disc (so its sub-pixel position shows), and optionally the goal as a green ring (pictures only: the
world models see frames without it, and a goal is given as the frame of the agent standing there).

Coordinates are (x, y) in [0, 1], y growing downwards like image rows. `TwoRooms` steps and renders
any number of agents at once, as torch tensors on any device (the planner rolls out thousands of
candidate action sequences through it when it stands in as the oracle world model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

FLOOR_RGB = (0.08, 0.08, 0.10)
WALL_RGB = (0.62, 0.62, 0.66)
AGENT_RGB = (1.00, 0.28, 0.18)
GOAL_RGB = (0.20, 0.95, 0.35)


@dataclass(frozen=True)
class TwoRoomsLayout:
    """Geometry, in units of the arena's side (the frame is the unit square).

    Args:
        size: frame side in pixels.
        border: thickness of the outer wall.
        wall_x: centre of the dividing wall; wall_thickness: its thickness.
        door_y: centre of the door; door_width: its opening.
        agent_radius: the agent's disc (it keeps this far from walls, except in the door, where only
            its centre must be inside the opening).
        max_step: longest displacement of one action; longer actions are scaled down to it.
        substeps: each action is applied in this many equal parts, so the axis order of the
            collision test (x, then y) does not decide whether a diagonal move enters the door.
        glow_radius: scale (the std of a Gaussian, in units of the side) of a soft light the agent casts
            on the whole frame; 0: none. A disc of a few pixels changes only the patch it is in, so without
            the glow the pixel error between two frames, and a patch encoder's features, say nothing about
            how far apart two agents are once their discs stop overlapping; with it they fall smoothly as
            the agents approach, which is what a planner's cost reads.
        glow_strength: the light's opacity at the agent's centre, in [0, 1].
    """

    size: int = 64
    border: float = 0.04
    wall_x: float = 0.5
    wall_thickness: float = 0.06
    door_y: float = 0.5
    door_width: float = 0.2
    agent_radius: float = 0.035
    max_step: float = 0.2
    substeps: int = 4
    glow_radius: float = 0.0
    glow_strength: float = 0.4

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if not 0 < self.max_step <= 0.5:
            raise ValueError(f"max_step must lie in (0, 0.5], got {self.max_step}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        lo, hi = self.bounds
        if not (lo < self.wall_left - self.agent_radius and self.wall_right + self.agent_radius < hi):
            raise ValueError(f"the wall (x = {self.wall_x} +- {self.wall_thickness / 2}) leaves no room on one side")
        if not (lo <= self.door_y - self.door_width / 2 and self.door_y + self.door_width / 2 <= hi):
            raise ValueError(f"the door (y = {self.door_y} +- {self.door_width / 2}) must lie within "
                             f"{lo:.3f}..{hi:.3f}")
        if self.door_width <= 0:
            raise ValueError(f"door_width must be > 0, got {self.door_width}")
        if self.glow_radius < 0 or not 0 <= self.glow_strength <= 1:
            raise ValueError(f"glow_radius must be >= 0 and glow_strength in [0, 1], got {self.glow_radius}, "
                             f"{self.glow_strength}")

    @property
    def bounds(self) -> tuple[float, float]:
        """Range of either coordinate of the agent's centre (the border minus its radius)."""
        return self.border + self.agent_radius, 1.0 - self.border - self.agent_radius

    @property
    def wall_left(self) -> float:
        return self.wall_x - self.wall_thickness / 2

    @property
    def wall_right(self) -> float:
        return self.wall_x + self.wall_thickness / 2

    @property
    def door(self) -> tuple[float, float]:
        return self.door_y - self.door_width / 2, self.door_y + self.door_width / 2

    def as_dict(self) -> dict:
        return asdict(self)


class TwoRooms:
    """Vectorised simulator: states [..., 2] (x, y), actions [..., 2]; every method is a pure function
    of its inputs, batched over the leading dimensions, on the device of its inputs."""

    def __init__(self, layout: TwoRoomsLayout | None = None):
        self.layout = layout or TwoRoomsLayout()
        self._background: dict[tuple, torch.Tensor] = {}

    # -- physics -------------------------------------------------------------------------------------
    def clip_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions longer than max_step scaled down to it, direction kept."""
        norm = actions.norm(dim=-1, keepdim=True)
        return actions * (self.layout.max_step / norm.clamp_min(self.layout.max_step))

    def room(self, states: torch.Tensor) -> torch.Tensor:
        """0 left of the wall, 1 right of it, -1 inside the door."""
        x = states[..., 0]
        out = torch.where(x < self.layout.wall_x, 0, 1)
        return torch.where((x > self.layout.wall_left) & (x < self.layout.wall_right), -1, out)

    def is_free(self, states: torch.Tensor) -> torch.Tensor:
        """Whether each state is a place the agent can be."""
        lay = self.layout
        lo, hi = lay.bounds
        x, y = states[..., 0], states[..., 1]
        inside = (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi)
        in_slab = (x > lay.wall_left - lay.agent_radius) & (x < lay.wall_right + lay.agent_radius)
        door_lo, door_hi = lay.door
        return inside & (~in_slab | ((y >= door_lo) & (y <= door_hi)))

    def step(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The states after applying (clipped) actions, walls and border stopping the motion."""
        lay = self.layout
        lo, hi = lay.bounds
        door_lo, door_hi = lay.door
        # The disc may not overlap the wall; in the door only its centre must stay in the opening.
        left_face, right_face = lay.wall_left - lay.agent_radius, lay.wall_right + lay.agent_radius
        delta = self.clip_actions(actions) / lay.substeps
        x, y = states[..., 0], states[..., 1]
        for _ in range(lay.substeps):
            in_door = (y >= door_lo) & (y <= door_hi)
            nx = (x + delta[..., 0]).clamp(lo, hi)
            # Outside the door's rows the wall stops the agent at its face, from either side.
            nx = torch.where(~in_door & (x <= left_face) & (nx > left_face), torch.full_like(nx, left_face), nx)
            nx = torch.where(~in_door & (x >= right_face) & (nx < right_face), torch.full_like(nx, right_face), nx)
            ny = (y + delta[..., 1]).clamp(lo, hi)
            in_slab = (nx > left_face) & (nx < right_face)
            ny = torch.where(in_slab, ny.clamp(door_lo, door_hi), ny)  # in the doorway: between its posts
            x, y = nx, ny
        return torch.stack([x, y], dim=-1)

    def rollout(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """States [..., 2] and action sequences [..., H, 2] -> the H states reached [..., H, 2]."""
        out = []
        for t in range(actions.shape[-2]):
            states = self.step(states, actions[..., t, :])
            out.append(states)
        return torch.stack(out, dim=-2)

    def sample_free(self, n: int, generator: torch.Generator, room: int | None = None) -> torch.Tensor:
        """n states drawn uniformly from the free space (of one room: 0 left, 1 right), float32 on the CPU."""
        lay = self.layout
        lo, hi = lay.bounds
        x_lo = lo if room != 1 else lay.wall_right + lay.agent_radius
        x_hi = hi if room != 0 else lay.wall_left - lay.agent_radius
        out = torch.empty(0, 2)
        while len(out) < n:  # rejection: the door's rows inside the wall are the only excluded band
            draw = torch.rand(2 * n, 2, generator=generator)
            draw[:, 0] = x_lo + (x_hi - x_lo) * draw[:, 0]
            draw[:, 1] = lo + (hi - lo) * draw[:, 1]
            out = torch.cat([out, draw[self.is_free(draw)]])
        return out[:n]

    # -- rendering -----------------------------------------------------------------------------------
    def background(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Floor and walls [3, S, S] in [0, 1], cached per device."""
        key = (str(device),)
        if key not in self._background:
            lay, S = self.layout, self.layout.size
            c = (torch.arange(S, dtype=torch.float32, device=device) + 0.5) / S  # pixel centres
            x, y = c[None, :], c[:, None]
            border = (x < lay.border) | (x > 1 - lay.border) | (y < lay.border) | (y > 1 - lay.border)
            door_lo, door_hi = lay.door
            wall = (x > lay.wall_left) & (x < lay.wall_right) & ((y < door_lo) | (y > door_hi))
            walls = (border | wall).float()
            floor, stone = torch.tensor(FLOOR_RGB, device=device), torch.tensor(WALL_RGB, device=device)
            self._background[key] = floor[:, None, None] * (1 - walls) + stone[:, None, None] * walls
        return self._background[key]

    def _glow(self, frames: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """`frames` [M, 3, S, S] (changed in place) lit by a Gaussian of the agent colour around centres [M, 2]."""
        lay, S = self.layout, self.layout.size
        c = (torch.arange(S, dtype=frames.dtype, device=frames.device) + 0.5) / S
        dx = c[None, None, :] - centres[:, 0, None, None].to(frames.dtype)
        dy = c[None, :, None] - centres[:, 1, None, None].to(frames.dtype)
        light = (lay.glow_strength * torch.exp(-(dx * dx + dy * dy) / (2 * lay.glow_radius**2))).unsqueeze(1)
        paint = torch.tensor(AGENT_RGB, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
        frames.mul_(1 - light).add_(paint * light)
        return frames

    def _stamp(self, frames: torch.Tensor, centres: torch.Tensor, radius: float, colour: tuple[float, float, float],
               width: float | None = None) -> torch.Tensor:
        """`frames` [M, 3, S, S] (a fresh tensor, changed in place and returned) with an anti-aliased disc
        (or a ring of `width`) of `colour` blended in around each centre [M, 2].

        Only a small window around each centre is computed (a disc covers a few dozen of the S*S pixels),
        which makes rendering a batch of windows cheap enough to do in the data loader."""
        S = self.layout.size
        r = radius * S
        side = min(S, int(2 * r + 4))  # pixels a disc of radius r (+ its 1-px ramp) can touch
        offsets = torch.arange(side, device=frames.device)
        origin = (centres * S - side / 2).round().long().clamp(0, S - side)  # [M, 2] window corners (x, y)
        xs, ys = origin[:, 0, None] + offsets, origin[:, 1, None] + offsets  # [M, side] pixel columns / rows
        dx = (xs + 0.5 - centres[:, 0, None] * S)[:, None, :]
        dy = (ys + 0.5 - centres[:, 1, None] * S)[:, :, None]
        dist = torch.sqrt(dx * dx + dy * dy)  # [M, side, side], in pixels
        cover = (r + 0.5 - dist).clamp(0, 1)  # one pixel of linear ramp: sub-pixel positions show
        if width is not None:
            cover = cover * (dist - (r - width * S) + 0.5).clamp(0, 1)
        m = torch.arange(len(frames), device=frames.device)[:, None, None]
        rows, cols = ys[:, :, None].expand(-1, -1, side), xs[:, None, :].expand(-1, side, -1)
        cover = cover.unsqueeze(1).to(frames.dtype)  # [M, 1, side, side]
        window = frames[m, :, rows, cols].permute(0, 3, 1, 2)  # [M, 3, side, side]
        paint = torch.tensor(colour, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
        frames[m, :, rows, cols] = (window * (1 - cover) + paint * cover).permute(0, 2, 3, 1)
        return frames

    def render(self, states: torch.Tensor, goals: torch.Tensor | None = None) -> torch.Tensor:
        """Frames [..., 3, S, S] in [0, 1] of states [..., 2] (goal rings drawn where `goals` [..., 2] say)."""
        lead, S = states.shape[:-1], self.layout.size
        frames = self.background(states.device).expand(max(1, lead.numel()), -1, -1, -1).clone()
        flat = states.reshape(-1, 2)
        if self.layout.glow_radius > 0:
            self._glow(frames, flat)
        if goals is not None:
            self._stamp(frames, goals.to(states).expand_as(states).reshape(-1, 2), self.layout.agent_radius * 1.6,
                        GOAL_RGB, width=0.025)
        self._stamp(frames, flat, self.layout.agent_radius, AGENT_RGB)
        return frames[:lead.numel()].view(*lead, 3, S, S)

    def draw_goals(self, frames: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """A copy of frames [..., 3, S, S] in [0, 1] with a green ring around each goal [..., 2]."""
        lead = frames.shape[:-3]
        out = frames.reshape(-1, *frames.shape[-3:]).clone()
        self._stamp(out, goals.to(frames).expand(*lead, 2).reshape(-1, 2), self.layout.agent_radius * 1.6, GOAL_RGB,
                    width=0.025)
        return out.view(frames.shape)


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] frames -> uint8, rounded."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)


def door_path_length(sim: TwoRooms, starts: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
    """Length of the shortest path between states [..., 2] for a point that must pass through the door's
    centre when they are in different rooms (a good enough estimate of how far apart they are)."""
    lay = sim.layout
    door = torch.tensor([lay.wall_x, lay.door_y], dtype=starts.dtype, device=starts.device)
    direct = (goals - starts).norm(dim=-1)
    via_door = (door - starts).norm(dim=-1) + (goals - door).norm(dim=-1)
    same = sim.room(starts) == sim.room(goals)
    return torch.where(same, direct, via_door)


def steps_needed(sim: TwoRooms, starts: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
    """Actions of max_step needed to cover door_path_length."""
    return torch.ceil(door_path_length(sim, starts, goals) / sim.layout.max_step).long()


