"""The offline, reward-free data set of the two-rooms task: random-action trajectories, generated on first
use into a cache directory, atomically, under a file lock, and versioned by the parameters that made it.

Layout of a data set directory:

    root/
      index.json               parameters + size and sha256 of every file (written last)
      layout.json              the TwoRoomsLayout the trajectories were simulated in
      {train,val}/states.npy   float32 [N, L + 1, 2]: agent (x, y) before each action and after the last
      {train,val}/actions.npy  float32 [N, L, 2]: the actions applied, clipped, divided by max_step
                               (so every action lies in the unit disc)

Frames are not stored: they are rendered from the states when read (TwoRooms.render is a pure
function, so every read gives the same bytes), which keeps a 64k-step set under a megabyte instead
of 800 MB of pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from .generated import ensure_generated
from .two_rooms import TwoRooms, TwoRoomsLayout

log = logging.getLogger("arjepa_pl.data")

# Bump when the generator's output changes, so old caches are regenerated.
FORMAT_VERSION = 1
SPLITS = {"train": 0, "val": 1}


def default_two_rooms_dir() -> Path:
    """$ARJEPA_TWO_ROOMS_DIR if set, else ~/.cache/arjepa_pl/two_rooms."""
    env = os.environ.get("ARJEPA_TWO_ROOMS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "arjepa_pl" / "two_rooms"


def random_walk_actions(n: int, steps: int, generator: torch.Generator, turn_std: float = 0.6,
                        switch_prob: float = 0.1, min_speed: float = 0.3) -> torch.Tensor:
    """Open-loop random actions [n, steps, 2] in the unit disc: a heading that drifts by N(0, turn_std)
    radians per step and is redrawn uniformly with probability switch_prob, at a speed drawn uniformly
    from [min_speed, 1]. Keeping a heading for a while carries the agent across a room and, now and
    then, through the door (i.i.d. directions would jitter in place)."""
    if not 0 <= switch_prob <= 1 or not 0 <= min_speed <= 1 or turn_std < 0:
        raise ValueError(f"need 0 <= switch_prob, min_speed <= 1 and turn_std >= 0, "
                         f"got {switch_prob}, {min_speed}, {turn_std}")
    heading = torch.rand(n, generator=generator) * 2 * math.pi
    actions = torch.empty(n, steps, 2)
    for t in range(steps):
        turn = torch.randn(n, generator=generator) * turn_std
        redraw = torch.rand(n, generator=generator) < switch_prob
        fresh = torch.rand(n, generator=generator) * 2 * math.pi
        heading = torch.where(redraw, fresh, heading + turn)
        speed = min_speed + (1 - min_speed) * torch.rand(n, generator=generator)
        actions[:, t, 0], actions[:, t, 1] = speed * heading.cos(), speed * heading.sin()
    return actions


def simulate(sim: TwoRooms, starts: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [n, L + 1, 2], applied actions [n, L, 2]) of unit-disc actions [n, L, 2] from starts [n, 2]."""
    applied = sim.clip_actions(actions * sim.layout.max_step)
    states = torch.cat([starts[:, None], sim.rollout(starts, applied)], dim=1)
    return states, applied / sim.layout.max_step


def generate_two_rooms(tmp: Path, params: dict) -> None:
    """Write the data set `params` describes into the empty directory `tmp` (index.json is written by
    data_modules.generated).

    Deterministic: the same params give the same bytes (float32 on the CPU, one seeded generator per
    split)."""
    layout = TwoRoomsLayout(**params["layout"])
    sim = TwoRooms(layout)
    (tmp / "layout.json").write_text(json.dumps(layout.as_dict(), indent=2, sort_keys=True) + "\n")
    for split, split_id in SPLITS.items():
        n = params[f"num_{split}"]
        generator = torch.Generator().manual_seed(params["seed"] * 1000 + split_id)
        starts = sim.sample_free(n, generator)
        actions = random_walk_actions(n, params["trajectory_length"], generator, **params["policy"])
        states, applied = simulate(sim, starts, actions)
        (tmp / split).mkdir()
        np.save(tmp / split / "states.npy", states.numpy().astype(np.float32))
        np.save(tmp / split / "actions.npy", applied.numpy().astype(np.float32))


def two_rooms_files(params: dict) -> set[str]:
    """Relative paths of every file a complete data set holds besides index.json."""
    return {"layout.json"} | {f"{split}/{name}.npy" for split in SPLITS for name in ("states", "actions")}


def two_rooms_params(layout: TwoRoomsLayout, num_train: int, num_val: int, trajectory_length: int, seed: int,
                     policy: dict) -> dict:
    """The generation parameters (what index.json records), checked."""
    for name, value, minimum in (("num_train", num_train, 1), ("num_val", num_val, 0),
                                 ("trajectory_length", trajectory_length, 1)):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return {"format_version": FORMAT_VERSION, "layout": layout.as_dict(), "num_train": num_train, "num_val": num_val,
            "trajectory_length": trajectory_length, "seed": seed, "policy": dict(policy)}


def ensure_two_rooms(root: str | os.PathLike, params: dict) -> Path:
    """The data set `params` describes, in `root/v<format>-<digest of params>` (so sets of different
    sizes live side by side), generated unless an intact one is there (data_modules.generated: atomic,
    locked, verified); returns its directory. Every process may call it: cheap when cached."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    directory = Path(root).expanduser().resolve() / f"v{FORMAT_VERSION}-{digest}"

    def generate(tmp: Path) -> None:
        log.info(f"generating two-rooms trajectories in {directory} ({params['num_train']} train + "
                 f"{params['num_val']} val x {params['trajectory_length']} steps, seed {params['seed']})")
        generate_two_rooms(tmp, params)

    return ensure_generated(directory, params, two_rooms_files(params), generate, what="two-rooms",
                            env_var="ARJEPA_TWO_ROOMS_DIR")


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(states [N, L + 1, 2], actions [N, L, 2]) of one split, as float32 arrays."""
    return np.load(directory / split / "states.npy"), np.load(directory / split / "actions.npy")
