"""Pictures and videos of planned episodes, and where they are written.

Per episode: a PNG strip (top row: the observed frames with the goal ring, start first; bottom row:
start, then what the plan in force predicted for each step) and an MP4 (observed beside predicted, the
prediction's border green on the start frame and red on predicted frames), drawn by the AR rollout
writers' own functions so every rollout in the framework looks alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from arjepa_pl.pictures import rollout_frames, rollout_strip
from arjepa_pl.planning.mpc import EpisodeResults, Episodes
from arjepa_pl.video_io import write_mp4
from data_modules.two_rooms import TwoRooms


def upscale(picture: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of [..., H, W, C] pixels."""
    return picture.repeat(scale, axis=-3).repeat(scale, axis=-2) if scale > 1 else picture


def episode_media(results: EpisodeResults, sim: TwoRooms, episodes: Episodes, index: int,
                  scale: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(PNG strip [h, w, 3], video [T, h, w, 3]) of one episode, uint8."""
    steps = int(results.steps[index])
    states = results.trajectories[:steps + 1, index]
    goals = episodes.goals[index].cpu().expand(steps + 1, 2)
    observed = sim.render(states, goals).transpose(0, 1)  # [3, T + 1, S, S] in [0, 1]
    if results.predicted is not None:
        predicted = sim.draw_goals(results.predicted[index, :steps].float() / 255, goals[1:]).transpose(0, 1)
    else:  # no world model (random actions): the prediction row repeats what was seen
        predicted = observed[:, 1:]
    context, truth = observed[:, :1], observed[:, 1:]
    return (upscale(rollout_strip(context, predicted, truth), scale),
            upscale(rollout_frames(context, predicted, truth), scale))


def write_episode_media(results: EpisodeResults, sim: TwoRooms, episodes: Episodes, out_dir: Path,
                        max_episodes: Optional[int] = None, fps: int = 4, scale: int = 2) -> list[Path]:
    """episode_NNN.png and episode_NNN.mp4 for the first `max_episodes` episodes (all: None) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(len(episodes) if max_episodes is None else min(max_episodes, len(episodes))):
        picture, video = episode_media(results, sim, episodes, i, scale)
        outcome = "success" if bool(results.success[i]) else "failure"
        png, mp4 = out_dir / f"episode_{i:03d}_{outcome}.png", out_dir / f"episode_{i:03d}_{outcome}.mp4"
        Image.fromarray(picture).save(png)
        # H.264 in yuv420p needs even sides.
        video = np.pad(video, ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0)), mode="edge")
        write_mp4(mp4, video, fps=fps)
        written += [png, mp4]
    return written
