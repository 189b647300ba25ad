"""From one video (a path or bytes) to a normalised clip tensor: sampling, decoding, augmentation.

Shared by the manifest dataset and the shard stream, so both cut, filter and augment clips the
same way. All randomness comes from the caller's numpy Generator.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np
import torch

from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD

from .decoding import BadVideo, check_file, check_size, open_reader, read_frames
from .frame_indices import clip_indices, is_short, resolve_frame_step
from .transforms import clip_to_tensor, random_resized_crop_box, spatial_crop_boxes

SHORT_VIDEO_POLICIES = ("pad", "skip")


@dataclass(frozen=True)
class ClipOptions:
    """How clips are sampled, filtered, decoded and augmented (see VideoDataModule for each field)."""

    frames_per_clip: int = 16
    frame_step: int = 4
    fps: float | None = None
    duration: float | None = None
    num_clips: int = 1
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.35)
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_views: int = 1
    short_videos: str = "pad"
    max_file_mb: float | None = None
    max_duration_s: float | None = None
    max_frame_pixels: int | None = 4096 * 2160
    decode_short_side: int | None = None

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "mean", "std"):  # YAML gives lists
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("frames_per_clip", "frame_step", "num_clips", "crop_size", "eval_views"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.fps is not None and self.duration is not None:
            raise ValueError(f"give fps (target frame rate) or duration (clip seconds), not both: "
                             f"fps={self.fps}, duration={self.duration}")
        for name in ("fps", "duration", "max_file_mb", "max_duration_s", "max_frame_pixels"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (or null), got {value!r}")
        if self.decode_short_side is not None and self.decode_short_side < 0:
            raise ValueError("decode_short_side must be >= 0 (0: never resize while decoding), "
                             f"got {self.decode_short_side}")
        if self.short_videos not in SHORT_VIDEO_POLICIES:
            raise ValueError(f"short_videos must be one of {SHORT_VIDEO_POLICIES}, got {self.short_videos!r}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale!r}")
        if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (RGB) and std > 0, got mean={self.mean!r} std={self.std!r}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> ClipOptions:
        """The ClipOptions among kwargs (others ignored): how data modules pass their own arguments on."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})

    @property
    def max_bytes(self) -> int | None:
        return None if self.max_file_mb is None else int(self.max_file_mb * 1e6)

    def decode_short_side_for(self, train: bool) -> int | None:
        """Short side to decode at (None: the source's own).

        Automatic: large enough that no crop is upsampled. A training crop covers at least
        crop_scale[0] of the frame's area, so its side is about sqrt(crop_scale[0]) of the frame's
        short side: decoding at crop_size / sqrt(crop_scale[0]) keeps it >= crop_size pixels.
        Evaluation resizes the short side to crop_size anyway.
        """
        if self.decode_short_side is not None:
            return self.decode_short_side or None
        return math.ceil(self.crop_size / math.sqrt(self.crop_scale[0])) if train else self.crop_size


def load_clip(source: str | bytes, options: ClipOptions, rng: np.random.Generator, train: bool) -> torch.Tensor:
    """Clip tensor [3, T, S, S], or [V, 3, T, S, S] for several views (V = num_clips, times
    eval_views at evaluation). Raises BadVideo, naming the reason, for any unusable video."""
    return augment_clips(decode_frames(source, options, rng if train else None), options, rng, train)


def augment_clips(frames: np.ndarray, options: ClipOptions, rng: np.random.Generator, train: bool) -> torch.Tensor:
    """uint8 frames [num_clips, T, H, W, 3] -> clip tensor(s) as load_clip returns them: a random
    crop and flip per clip (the same for all its frames) in training, fixed views at evaluation."""
    clips = []
    for clip in frames:
        height, width = clip.shape[1:3]
        if train:
            box = random_resized_crop_box(rng, height, width, options.crop_scale, options.crop_ratio)
            flip = options.hflip and bool(rng.random() < 0.5)
            clips.append(clip_to_tensor(clip, box, options.crop_size, flip, options.mean, options.std))
        else:
            for box in spatial_crop_boxes(height, width, options.eval_views):
                clips.append(clip_to_tensor(clip, box, options.crop_size, False, options.mean, options.std))
    return clips[0] if len(clips) == 1 else torch.stack(clips)


def decode_frames(source: str | bytes, options: ClipOptions, rng: np.random.Generator | None) -> np.ndarray:
    """uint8 frames [num_clips, frames_per_clip, H, W, 3]; random clip positions when rng is given."""
    if isinstance(source, str):
        check_file(source, options.max_bytes)
    else:
        check_size(len(source), options.max_bytes)
    reader, resized = open_reader(source, options.max_frame_pixels, options.decode_short_side_for(rng is not None))
    try:
        num_frames = len(reader)
        if num_frames < 2:
            raise BadVideo(f"{num_frames} frame: a still image, not a video")
        video_fps = float(reader.get_avg_fps())
        if options.max_duration_s is not None and video_fps > 0 and num_frames / video_fps > options.max_duration_s:
            raise BadVideo(f"{num_frames / video_fps:.1f} s is over the {options.max_duration_s} s limit "
                           "(max_duration_s)")
        step = resolve_frame_step(options.frames_per_clip, options.frame_step, options.fps, options.duration, video_fps)
        if options.short_videos == "skip" and is_short(num_frames, options.frames_per_clip, step, options.num_clips):
            raise BadVideo(f"{num_frames} frames is too short for {options.num_clips} clip(s) of "
                           f"{options.frames_per_clip} x {step} frames (short_videos='skip')")
        indices = clip_indices(num_frames, options.frames_per_clip, step, options.num_clips, rng)
        try:
            return read_frames(reader, indices)
        except BadVideo:
            if not resized:
                raise
        # decord fails to resize to some widths (from 64 pixels: 16, 24, 48, ...): a reduced-size
        # decode is only a speed-up, so it never makes a video bad. Decode at full size instead.
        del reader
        reader, _ = open_reader(source, options.max_frame_pixels, None)
        return read_frames(reader, indices)
    finally:
        # Free the reader now: decord's memory grows with long-lived readers (decord #197/#208).
        del reader
