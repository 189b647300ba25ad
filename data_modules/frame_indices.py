"""Which frames make a clip: pure index arithmetic, no decoding, no global RNG."""

from __future__ import annotations

import numpy as np


def resolve_frame_step(
    frames_per_clip: int,
    frame_step: int,
    fps: float | None,
    duration: float | None,
    video_fps: float,
) -> int:
    """Stride between sampled frames for one video, from whichever of the three the config uses.

    - fps (a target frame rate): step = round(video_fps / fps), so a 30 fps and a 25 fps video
      both give clips at about `fps`;
    - duration (seconds covered by a clip): step = round(duration * video_fps / frames_per_clip);
    - neither: frame_step, whatever the video's frame rate.
    Always >= 1. A video whose container reports no usable frame rate falls back to frame_step.
    """
    if fps is not None and duration is not None:
        raise ValueError("give a target fps or a clip duration, not both")
    if (fps is None and duration is None) or not np.isfinite(video_fps) or video_fps <= 0:
        return frame_step
    if fps is not None:
        return max(1, int(round(video_fps / fps)))
    assert duration is not None  # neither set returned above
    return max(1, int(round(duration * video_fps / frames_per_clip)))


def segment_length(num_frames: int, num_clips: int) -> int:
    """Frames in each of the num_clips equal segments a video is cut into (the remainder is unused)."""
    return max(num_frames // num_clips, 1)


def is_short(num_frames: int, frames_per_clip: int, frame_step: int, num_clips: int = 1) -> bool:
    """True when a segment cannot hold a whole clip (the clip would repeat its last frame)."""
    return segment_length(num_frames, num_clips) < frames_per_clip * frame_step


def clip_indices(
    num_frames: int,
    frames_per_clip: int,
    frame_step: int,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices [num_clips, frames_per_clip]: one clip in each of num_clips equal segments.

    A clip spans clip_len = frames_per_clip * frame_step frames and takes every frame_step-th
    frame from its start, so the temporal stride is exactly frame_step. In a segment of
    P = num_frames // num_clips frames:
    - training (rng given): the window [end - clip_len, end) ends at a point uniform in
      [clip_len, P], i.e. starts uniformly in [0, P - clip_len];
    - evaluation (rng None): the window is centred, start = (P - clip_len) // 2, deterministic.
    A segment shorter than clip_len starts at its first frame and repeats its last frame.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    clip_len = frames_per_clip * frame_step
    seg = segment_length(num_frames, num_clips)
    clips = []
    for i in range(num_clips):
        if seg < clip_len:
            start = 0
        elif rng is not None:
            start = int(rng.integers(clip_len, seg + 1)) - clip_len
        else:
            start = (seg - clip_len) // 2
        first = min(i * seg, num_frames - 1)
        last = min(first + seg, num_frames) - 1  # clips never reach into the next segment
        clips.append(np.minimum(first + start + frame_step * np.arange(frames_per_clip), last))
    return np.stack(clips)
