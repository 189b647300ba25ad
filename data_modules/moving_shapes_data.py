"""The moving-shapes benchmark (data_modules.moving_shapes) as a Dataset and a LightningDataModule.

Clips are rendered on the fly in the DataLoader workers, each from its own seed words (render_seed,
split, index): a clip is a pure function of its index, so it is the same in every epoch, on every
rank and worker, and after a resume. Rendering costs less than decoding the same clip from an mp4
(measured: 1-4 ms against 3-9 ms per 16 x 64 x 64 clip) and needs no generation pass and no cache.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD

from .datamodules import ClipDataModule
from .moving_shapes import (
    MIN_SIZE,
    NUISANCES,
    NUM_COMBINATIONS,
    SPLIT_IDS,
    Nuisance,
    clip_factors,
    factors_to_label,
    render_clip,
)
from .resumable import ResumableDataLoader
from .samplers import ClipSampler, sample_key

log = logging.getLogger("arjepa_pl.data")


class MovingShapesDataset(Dataset):
    """One split of the benchmark: {"video": [3, T, S, S], "label", "index", "epoch", "position",
    "skipped": "", and one integer per factor: "shape", "colour", "direction", "speed", "location"}.

    Keys are plain indices or (index, epoch, position) tuples from ClipSampler.

    Args:
        split: train, val or test (the split's seed word).
        num_clips: clips in the split.
        frames_per_clip / size: T and S of every clip.
        nuisance: what the clips show besides the object (moving_shapes.Nuisance; None: none).
        render_seed: seed of every clip's continuous draws (size, path, nuisance); splits never share clips.
        mean / std: per-channel normalisation, on the 0-1 scale.
    """

    def __init__(self, split: str, num_clips: int, frames_per_clip: int = 16, size: int = 64,
                 nuisance: Nuisance | None = None, render_seed: int = 0,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
        if num_clips < 1:
            raise ValueError(f"{split}_clips must be >= 1, got {num_clips}")
        self.split, self.num_clips = split, int(num_clips)
        self.frames_per_clip, self.size = int(frames_per_clip), int(size)
        self.nuisance, self.render_seed = nuisance or Nuisance(), int(render_seed)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)

    def __len__(self) -> int:
        return self.num_clips

    def frames(self, index: int) -> tuple[np.ndarray, dict[str, int]]:
        """(float32 frames [T, S, S, 3] in [0, 1], factor values) of clip `index`."""
        factors = clip_factors(index)
        rng = np.random.default_rng([self.render_seed, SPLIT_IDS[self.split], index])
        return render_clip(factors, rng, self.frames_per_clip, self.size, self.nuisance), factors

    def __getitem__(self, key) -> dict:
        index, epoch, position = sample_key(key, self.num_clips, f"the {self.split} split")
        frames, factors = self.frames(index)
        video = (torch.from_numpy(frames).permute(3, 0, 1, 2) - self.mean) / self.std  # [3, T, S, S]
        return {"video": video, "label": factors_to_label(factors), "index": index, "epoch": epoch,
                "position": position, "skipped": "", **factors}


class MovingShapesDataModule(ClipDataModule):
    """The moving-shapes benchmark: train / val / test splits rendered on the fly.

    Batches are ClipDataModule's dicts ({"video": [B, 3, T, S, S], "label", "index", "epoch",
    "position", "skipped"}) plus one label tensor per factor. The label packs the factors; read one
    with a probe task from data_modules.moving_shapes.FACTOR_TASKS (e.g. direction: divisor 8,
    modulo 4). Objectives that collate their own batches (JEPA's masks) get ClipDataModule's hook.

    There is no spatial augmentation: a crop would move the location label and a flip would swap
    directions. The val and test splits are balanced and their factors independent when their size is
    a multiple of 512 (data_modules.moving_shapes); the training split when it is a multiple of 4.

    Args:
        train_clips / val_clips / test_clips: clips per split (`test` is served by test_dataloader).
        nuisance: none, texture (a static texture per clip) or dynamic (per-frame noise, flicker and
            distractors on random walks: detail no model can predict).
        nuisance_strength: 0-1, how strong the nuisance is.
        render_seed: which clips the splits hold (the same for every training seed by default, so
            seeds vary weights, order and masks but not the data).
        frames_per_clip / crop_size: clips are rendered at T x S x S directly.
        batch_size / num_workers / seed / mean / std / pin_memory / persistent_workers / drop_last:
            as for ClipDataModule (`seed` orders the training clips).
    """

    val_option = "val split"
    fixed_train_views = True  # no augmentation: a cache of frozen features can serve the training clips as they are

    def __init__(
        self,
        train_clips: int = 4096,
        val_clips: int = 512,
        test_clips: int = 512,
        nuisance: str = "none",
        nuisance_strength: float = 0.5,
        render_seed: int = 0,
        frames_per_clip: int = 16,
        crop_size: int = 64,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
    ) -> None:
        super().__init__(frames_per_clip=frames_per_clip, frame_step=1, crop_size=crop_size, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, hflip=False, mean=mean, std=std, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, drop_last=drop_last, report_skipped=False)
        self.save_hyperparameters()
        if nuisance not in NUISANCES:
            raise ValueError(f"nuisance must be one of {NUISANCES}, got {nuisance!r}")
        self.nuisance = Nuisance(nuisance, float(nuisance_strength))
        self.split_sizes = {"train": train_clips, "val": val_clips, "test": test_clips}
        for split, count in self.split_sizes.items():
            if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
                raise ValueError(f"{split}_clips must be an integer >= 1, got {count!r}")
        if crop_size < MIN_SIZE:  # found here, not when the first worker renders a clip
            raise ValueError(f"crop_size must be >= {MIN_SIZE} px for moving shapes (the object's path needs "
                             f"room in its quadrant), got {crop_size}")
        self.render_seed = render_seed
        self.test_dataset: MovingShapesDataset | None = None

    def _dataset(self, split: str) -> MovingShapesDataset:
        clip = self.clip_options
        return MovingShapesDataset(split, self.split_sizes[split], clip.frames_per_clip, clip.crop_size,
                                   self.nuisance, self.render_seed, clip.mean, clip.std)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.train_dataset, self.val_dataset, self.test_dataset = (self._dataset(s) for s in SPLIT_IDS)
        if self.rank == 0:
            unbalanced = [s for s in ("val", "test") if self.split_sizes[s] % NUM_COMBINATIONS]
            note = (f"; {', '.join(unbalanced)} not a multiple of {NUM_COMBINATIONS} clips: factors balanced but "
                    "not exactly independent") if unbalanced else ""
            log.info(f"moving shapes: {self.split_sizes} clips, nuisance {self.nuisance.kind} "
                     f"(strength {self.nuisance.strength:g}), render seed {self.render_seed}{note}")

    def label_values(self) -> list[int]:
        """The distinct labels of the training split (the pre-flight check of probe tasks reads them):
        the design repeats every NUM_COMBINATIONS clips, so no rendering is needed."""
        clips = min(self.split_sizes["train"], NUM_COMBINATIONS)
        return sorted({factors_to_label(clip_factors(i)) for i in range(clips)})

    def train_dataloader(self) -> ResumableDataLoader:
        self._require_setup()
        assert self.train_dataset is not None  # checked by _require_setup
        # drop_last in the sampler gives every rank the same number of clips (uneven counts hang DDP).
        sampler = ClipSampler(self.train_dataset, num_replicas=self.world_size, rank=self.rank,
                              shuffle=True, seed=self.seed, drop_last=True)
        return self._train_loader(self.train_dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.val_dataset is not None  # set with the training split
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.test_dataset is not None  # set with the training split
        return self._eval_loader(self.test_dataset)
