"""Map-style dataset of clips from one or more V-JEPA manifests, decoded with decord."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from .bad_samples import BadSampleGuard
from .clip import ClipOptions, load_clip
from .manifest import read_manifest
from .samplers import sample_key

REPLACE = 0x5EED  # a fourth seed word: replacement draws never collide with augmentation draws


class VideoClipDataset(Dataset):
    """Clips from manifest entries: {"video": [3, T, crop, crop], "label", "index", "epoch",
    "position", "skipped"}.

    Keys are plain indices or (index, epoch, position) tuples from ClipSampler. All randomness
    (clip positions, crop boxes, flips) comes from np.random.default_rng([seed, epoch, index]),
    so a sample depends on nothing else: not on the worker that loads it, nor on global RNG state.

    Several manifests are concatenated in order (`source_sizes` tells where each starts). An
    unusable video is replaced by a video of the same manifest drawn from
    default_rng([seed, epoch, index, attempt, REPLACE]) and augmented with its own generator;
    `label` is then the replacement's label, `index` stays the requested one, and `skipped`
    names what was skipped ("" when nothing was). See BadSampleGuard for the limits.

    No video is opened in __init__: decord readers created before the DataLoader forks its
    workers can deadlock them (decord #294), so each __getitem__ opens and closes its own reader
    (this also bounds decord's memory growth).

    Args:
        manifest: One manifest path, or several to concatenate.
        train: Random clip positions, crops and flips; else deterministic centre clips and views.
        seed: Seed of every sample's randomness.
        max_retries, max_bad_fraction: Bad-video limits (BadSampleGuard).
        **clip_options: ClipOptions fields (frames_per_clip, frame_step, crop_size, ...).
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Sequence[str | os.PathLike],
        train: bool,
        seed: int = 0,
        max_retries: int = 10,
        max_bad_fraction: float = 0.1,
        **clip_options,
    ) -> None:
        self.options = ClipOptions(**clip_options)
        self.manifests = [str(manifest)] if isinstance(manifest, (str, os.PathLike)) else [str(m) for m in manifest]
        if not self.manifests:
            raise ValueError("VideoClipDataset needs at least one manifest")
        self.samples: list[tuple[str, int]] = []
        self.source_sizes: list[int] = []
        for path in self.manifests:
            entries = read_manifest(path)
            self.samples += entries
            self.source_sizes.append(len(entries))
        self._source_starts = np.cumsum([0] + self.source_sizes)
        self.train = train
        self.seed = seed
        where = self.manifests[0] if len(self.manifests) == 1 else f"{len(self.manifests)} manifests"
        self.guard = BadSampleGuard(max_retries, max_bad_fraction, min_reads=min(64, len(self.samples)), where=where)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, epoch, position = sample_key(key, len(self.samples), str(self.manifests))

        def load(i: int, attempt: int):
            words = [self.seed, epoch, index] if attempt == 0 else [self.seed, epoch, index, attempt]
            path, label = self.samples[i]
            return self.load(path, np.random.default_rng(words)), label

        def replacement(attempt: int) -> int:
            source = int(np.searchsorted(self._source_starts, index, side="right")) - 1
            rng = np.random.default_rng([self.seed, epoch, index, attempt, REPLACE])
            draw = rng.integers(self.source_sizes[source])
            return int(self._source_starts[source] + draw)

        (video, label), skipped = self.guard.load(index, load, replacement, lambda i: self.samples[i][0])
        return {"video": video, "label": label, "index": index, "epoch": epoch, "position": position,
                "skipped": "\n".join(skipped)}

    def load(self, path: str, rng: np.random.Generator):
        """One entry's clip tensor; raises BadVideo for an unusable file (subclasses read other media)."""
        return load_clip(path, self.options, rng, self.train)
