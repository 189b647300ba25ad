"""Map-style dataset of fixed-length clips decoded with decord."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import decord
import numpy as np
from torch.utils.data import Dataset

from .manifest import read_manifest
from .transforms import IMAGENET_MEAN, IMAGENET_STD, center_crop_box, clip_to_tensor, random_resized_crop_box


def train_frame_indices(rng: np.random.Generator, num_frames: int, frames_per_clip: int, frame_step: int) -> np.ndarray:
    """frames_per_clip indices, frame_step apart, from a random window of the video.

    The window [end - clip_len, end) (clip_len = frames_per_clip * frame_step)
    ends at a point uniform in [clip_len, num_frames], and is sampled every
    frame_step frames from its start, so the temporal stride is exactly
    frame_step. A video shorter than clip_len starts at frame 0 and repeats its
    last frame to fill the clip.
    """
    clip_len = frames_per_clip * frame_step
    end = int(rng.integers(clip_len, num_frames + 1)) if num_frames >= clip_len else clip_len
    return _clip_indices(end - clip_len, num_frames, frames_per_clip, frame_step)


def center_frame_indices(num_frames: int, frames_per_clip: int, frame_step: int) -> np.ndarray:
    """The clip in the middle of the video (deterministic, for evaluation)."""
    clip_len = frames_per_clip * frame_step
    return _clip_indices(max(num_frames - clip_len, 0) // 2, num_frames, frames_per_clip, frame_step)


def _clip_indices(start: int, num_frames: int, frames_per_clip: int, frame_step: int) -> np.ndarray:
    indices = start + frame_step * np.arange(frames_per_clip)
    return np.minimum(indices, num_frames - 1)  # short video: repeat the last frame


class VideoClipDataset(Dataset):
    """One clip per manifest entry: {"video": [3, T, crop, crop], "label", "index", "epoch", "position"}.

    Keys are plain indices or (index, epoch, position) tuples from ClipSampler.
    All randomness (clip start, crop box, flip) comes from
    np.random.default_rng([seed, epoch, index]), so a sample depends on nothing
    else: not on the worker that loads it, nor on global RNG state.

    No video is opened in __init__: decord readers created before the DataLoader
    forks its workers can deadlock them (decord #294), so each __getitem__ opens
    and closes its own reader (this also bounds decord's memory growth).
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        frames_per_clip: int,
        frame_step: int,
        crop_size: int,
        train: bool,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 1.35),
        hflip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        check_clip_args(frames_per_clip, frame_step, crop_size, crop_scale, crop_ratio, mean, std)
        self.manifest = Path(manifest)
        self.samples = read_manifest(manifest)
        self.frames_per_clip = frames_per_clip
        self.frame_step = frame_step
        self.crop_size = crop_size
        self.train = train
        self.seed = seed
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.hflip = hflip
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, epoch, position = self._unpack_key(key)
        path, label = self.samples[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        frames = self._decode(path, rng)
        height, width = frames.shape[1:3]
        if self.train:
            box = random_resized_crop_box(rng, height, width, self.crop_scale, self.crop_ratio)
            flip = self.hflip and bool(rng.random() < 0.5)
        else:
            box, flip = center_crop_box(height, width), False
        video = clip_to_tensor(frames, box, self.crop_size, flip, self.mean, self.std)
        return {"video": video, "label": label, "index": index, "epoch": epoch, "position": position}

    def _unpack_key(self, key) -> tuple[int, int, int]:
        if isinstance(key, numbers.Integral):
            index, epoch, position = int(key), 0, int(key)
        elif isinstance(key, (tuple, list)) and len(key) == 3:
            index, epoch, position = (int(k) for k in key)
        else:
            raise TypeError(f"key must be an index or an (index, epoch, position) tuple, got {key!r}")
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} clips in {self.manifest}")
        return index, epoch, position

    def _decode(self, path: str, rng: np.random.Generator) -> np.ndarray:
        """uint8 [frames_per_clip, H, W, 3]; decode errors name the file (no silent retry)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video listed in {self.manifest} not found: {path}")
        try:
            reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
            try:
                num_frames = len(reader)
                if num_frames < 1:
                    raise RuntimeError("video has no frames")
                if self.train:
                    indices = train_frame_indices(rng, num_frames, self.frames_per_clip, self.frame_step)
                else:
                    indices = center_frame_indices(num_frames, self.frames_per_clip, self.frame_step)
                return reader.get_batch(indices.tolist()).asnumpy()
            finally:
                del reader
        except (RuntimeError, decord.DECORDError) as e:
            raise RuntimeError(f"could not decode {path}: {e}") from e


def check_clip_args(frames_per_clip, frame_step, crop_size, crop_scale, crop_ratio, mean, std) -> None:
    """Raise a ValueError naming the first bad clip / augmentation argument."""
    for name, value in (("frames_per_clip", frames_per_clip), ("frame_step", frame_step), ("crop_size", crop_size)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {crop_scale!r}")
    if len(crop_ratio) != 2 or not 0 < crop_ratio[0] <= crop_ratio[1]:
        raise ValueError(f"crop_ratio must be (min, max) with 0 < min <= max, got {crop_ratio!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values (RGB) and std > 0, got mean={mean!r} std={std!r}")
