"""LightningDataModule for video clip data sets (the built-in demo set or your own manifests)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader, default_collate

from .demo_videos import default_demo_dir, ensure_demo_videos
from .samplers import ClipSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .video_clips import VideoClipDataset, check_clip_args

log = logging.getLogger("arjepa_pl.data")


class VideoDataModule(pl.LightningDataModule):
    """Clips from V-JEPA-style manifests ('VIDEO_PATH LABEL' per line).

    With no train_manifest, the embedded synthetic demo set (12 classes: 3 shapes
    x 4 motion directions) is generated once into demo_dir and used for both
    training and validation.

    Note for probes: a horizontal flip turns 'left' into 'right', so train a
    direction probe on the demo set with hflip=False.

    Args:
        train_manifest: Training manifest file; None uses the embedded demo set.
        val_manifest: Validation manifest; None means the demo val set when training on the demo, else no validation.
        demo_dir: Where the demo set is generated and cached; None uses $ARJEPA_DEMO_DIR or ~/.cache/arjepa_pl/demo.
        frames_per_clip: Frames in each clip.
        frame_step: Stride between sampled frames (the V-JEPA 'sampling rate').
        crop_size: Side in pixels of the square crop fed to the model.
        batch_size: Clips per batch on each device.
        num_workers: DataLoader worker processes per device (0 decodes in the main process).
        seed: Seed of the shuffle order and of every clip's augmentation.
        crop_scale: Range of the random crop's area, as a fraction of the frame.
        crop_ratio: Range of the random crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: Randomly flip training clips horizontally (p = 0.5).
        mean: Per-channel (RGB) mean for normalisation, on the 0-1 scale.
        std: Per-channel (RGB) std for normalisation, on the 0-1 scale.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies).
        persistent_workers: Keep workers alive between epochs (only used when num_workers > 0).
        drop_last: Drop the last incomplete training batch on each device.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        demo_dir: str | None = None,
        frames_per_clip: int = 16,
        frame_step: int = 4,
        crop_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 1.35),
        hflip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        check_clip_args(frames_per_clip, frame_step, crop_size, crop_scale, crop_ratio, mean, std)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()

        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.demo_dir = demo_dir
        self.frames_per_clip = frames_per_clip
        self.frame_step = frame_step
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.hflip = hflip
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last

        # Public on purpose: the training objective swaps in its mask collator
        # before the loaders are built, so the loaders read it at call time.
        self.collate_fn = default_collate
        self.train_dataset: VideoClipDataset | None = None
        self.val_dataset: VideoClipDataset | None = None
        self.world_size, self.rank = 1, 0

    @property
    def uses_demo(self) -> bool:
        return self.train_manifest is None

    def _manifests(self) -> tuple[str, str | None]:
        """(train, val) manifest paths, generating the demo set if it is used."""
        if not self.uses_demo:
            return self.train_manifest, self.val_manifest
        demo = ensure_demo_videos(Path(self.demo_dir) if self.demo_dir else default_demo_dir())
        return str(demo.train), self.val_manifest or str(demo.val)

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node: generate the demo set once
        # there, instead of on every rank at the same time.
        if self.uses_demo:
            self._manifests()

    def setup(self, stage: str | None = None) -> None:
        # Cheap when the demo set is cached, and needed in processes where
        # prepare_data did not run.
        train_manifest, val_manifest = self._manifests()
        if self.trainer is not None:
            self.world_size, self.rank = self.trainer.world_size, self.trainer.global_rank
        clip_args = dict(
            frames_per_clip=self.frames_per_clip,
            frame_step=self.frame_step,
            crop_size=self.crop_size,
            seed=self.seed,
            crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio,
            hflip=self.hflip,
            mean=self.mean,
            std=self.std,
        )
        self.train_dataset = VideoClipDataset(train_manifest, train=True, **clip_args)
        self.val_dataset = VideoClipDataset(val_manifest, train=False, **clip_args) if val_manifest else None
        if self.rank == 0:
            val_info = f"{len(self.val_dataset)} val clips" if self.val_dataset else "no validation"
            log.info(f"video data: {len(self.train_dataset)} train clips ({train_manifest}), {val_info}")

    # ------------------------------------------------------------------------
    # loaders

    def _loader(self, dataset: VideoClipDataset, sampler: ClipSampler, drop_last: bool) -> DataLoader:
        workers = self.num_workers > 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,  # read now: the objective may have replaced it
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers,
            # fork starts workers in milliseconds; it is safe because the dataset
            # opens no decord reader before the fork.
            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            raise RuntimeError("VideoDataModule.setup() must run before the dataloaders are built")

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        # drop_last in the sampler gives every rank the same number of clips
        # (uneven counts hang DDP).
        sampler = ClipSampler(self.train_dataset, num_replicas=self.world_size, rank=self.rank,
                              shuffle=True, seed=self.seed, drop_last=True)
        return self._loader(self.train_dataset, sampler, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if self.val_dataset is None:
            return []  # Lightning runs no validation on an empty list
        # Not drop_last: with several ranks a few clips are repeated (padding)
        # rather than skipped, so every clip is evaluated.
        sampler = ClipSampler(self.val_dataset, num_replicas=self.world_size, rank=self.rank,
                              shuffle=False, drop_last=False)
        return self._loader(self.val_dataset, sampler, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        if self.val_dataset is None:
            raise ValueError("test_dataloader needs a val_manifest (the test loader serves the validation set)")
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        self._require_setup()
        if self.val_dataset is None:
            raise ValueError("predict_dataloader needs a val_manifest (the predict loader serves the validation set)")
        # Lightning leaves a DistributedSampler in place for prediction too, so
        # the split by rank must be ours: the same loader as validation.
        return self.val_dataloader()
