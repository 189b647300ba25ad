"""LightningDataModules for video clips: from manifests (or the built-in demo set) here, from
tar shards in streaming.py. Both share ClipDataModule's options and loader plumbing."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, default_collate

from arjepa_pl.errors import ConfigError
from arjepa_pl.normalization import IMAGENET_MEAN, IMAGENET_STD

from .bad_samples import SkippedVideosReport
from .clip import ClipOptions
from .datasets import VideoClipDataset
from .demo_videos import NUM_CLASSES, default_demo_dir, ensure_demo_videos
from .manifest import read_manifest
from .resumable import ResumableDataLoader
from .samplers import ClipSampler, WeightedClipSampler

log = logging.getLogger("arjepa_pl.data")


def as_list(value: str | list[str] | None) -> list[str]:
    """One path or several (a manifest argument) as a list."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def objective_collate_fn(trainer: pl.Trainer | None) -> Callable[[list], Any]:
    """The collate function of every loader: the LightningModule's `collate_fn()` when it defines one,
    else default_collate.

    This is the one hook between an objective and the data. An objective that needs per-batch work
    done in the DataLoader workers returns that function from `collate_fn()` (JEPA draws its masks
    there, so they cost nothing on the training step); the data module asks for it each time it
    builds a loader, when the objective knows its rank. The data code never imports a model.
    """
    module = trainer.lightning_module if trainer is not None else None
    make = getattr(module, "collate_fn", None)
    collate = make() if callable(make) else None
    return collate if collate is not None else default_collate


class ClipDataModule(pl.LightningDataModule):
    """What every video data module shares: clip options, bad-video limits, loaders.

    Batches are dicts {"video": [B, 3, T, S, S], "label", "index", "epoch", "position",
    "skipped"}; with several views per video (num_clips > 1, or eval_views > 1 at evaluation)
    "video" is [B, V, 3, T, S, S].

    Args:
        frames_per_clip: Frames in each clip.
        frame_step: Stride between sampled frames (the V-JEPA 'sampling rate'), unless fps or duration is set.
        fps: Target frame rate of clips: the stride of each video is round(video fps / fps).
        duration: Seconds covered by a clip: the stride of each video is round(duration * video fps / frames_per_clip).
        num_clips: Clips per video, one in each of num_clips equal temporal segments.
        crop_size: Side in pixels of the square crop fed to the model.
        batch_size: Clips per batch on each device.
        num_workers: DataLoader worker processes per device (0 decodes in the main process).
        seed: Seed of the shuffle order, of every clip's augmentation and of bad-video replacements.
        crop_scale: Range of the random crop's area, as a fraction of the frame.
        crop_ratio: Range of the random crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: Randomly flip training clips horizontally (p = 0.5).
        mean: Per-channel (RGB) mean for normalisation, on the 0-1 scale.
        std: Per-channel (RGB) std for normalisation, on the 0-1 scale.
        eval_views: Spatial views per clip at evaluation: 1 (centre crop) or e.g. 3 (left, centre, right).
        short_videos: A video too short for its clips: 'pad' repeats its last frame, 'skip' replaces it.
        max_file_mb: Skip (and replace) video files larger than this; null: no limit.
        max_duration_s: Skip (and replace) videos longer than this; null: no limit.
        max_frame_pixels: Skip (and replace) videos whose frames have more pixels than this; null: no limit.
        decode_short_side: Decode at this short side when the source is larger (decord resizes while
            decoding); null: automatic (crop_size / sqrt(crop_scale[0]) for training, crop_size for
            evaluation); 0: always full resolution.
        max_retries: Replacements tried for one unusable video before the run stops.
        max_bad_fraction: The run stops when more than this fraction of the videos a worker reads is unusable.
        iterations_per_epoch: Batches per device per epoch (V-JEPA uses 300), drawn with replacement;
            null: one pass over the data.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies).
        persistent_workers: Keep workers alive between epochs (only used when num_workers > 0).
        drop_last: Drop the last incomplete training batch on each device.
        report_skipped: Add the SkippedVideosReport callback (data/skipped metric, per-epoch warnings) to the Trainer.
    """

    val_option = "validation set"  # the argument that gives it, for error messages

    def __init__(
        self,
        frames_per_clip: int = 16,
        frame_step: int = 4,
        fps: float | None = None,
        duration: float | None = None,
        num_clips: int = 1,
        crop_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 1.35),
        hflip: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        eval_views: int = 1,
        short_videos: Literal["pad", "skip"] = "pad",
        max_file_mb: float | None = None,
        max_duration_s: float | None = None,
        max_frame_pixels: int | None = 4096 * 2160,
        decode_short_side: int | None = None,
        max_retries: int = 10,
        max_bad_fraction: float = 0.1,
        iterations_per_epoch: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        report_skipped: bool = True,
    ) -> None:
        super().__init__()
        self.clip_options = ClipOptions(
            frames_per_clip=frames_per_clip, frame_step=frame_step, fps=fps, duration=duration, num_clips=num_clips,
            crop_size=crop_size, crop_scale=crop_scale, crop_ratio=crop_ratio, hflip=hflip, mean=mean, std=std,
            eval_views=eval_views, short_videos=short_videos, max_file_mb=max_file_mb, max_duration_s=max_duration_s,
            max_frame_pixels=max_frame_pixels, decode_short_side=decode_short_side,
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name, value in (("num_workers", num_workers), ("max_retries", max_retries)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if iterations_per_epoch is not None and iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1 (or null), got {iterations_per_epoch}")
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        # The clip options are also attributes, for code that reads e.g. dm.crop_size.
        for name, value in vars(self.clip_options).items():
            setattr(self, name, value)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.max_retries = max_retries
        self.max_bad_fraction = max_bad_fraction
        self.iterations_per_epoch = iterations_per_epoch
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.report_skipped = report_skipped

        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.world_size, self.rank = 1, 0

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.world_size, self.rank = self.trainer.world_size, self.trainer.global_rank
            # Trainer.callbacks is set by Lightning's CallbackConnector but not declared on the class.
            callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
            if self.report_skipped and not any(isinstance(c, SkippedVideosReport) for c in callbacks):
                # First, so its count is updated before a checkpoint callback saves it.
                callbacks.insert(0, SkippedVideosReport())

    def collate(self) -> Callable[[list], Any]:
        """How the loaders turn samples into a batch: see `objective_collate_fn`."""
        return objective_collate_fn(self.trainer)

    def _loader_args(self) -> dict:
        workers = self.num_workers > 0
        return dict(
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            pin_memory=self.pin_memory,
            # fork starts workers in milliseconds; it is safe because the datasets open no decord
            # reader before the fork (decord #294).
            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None,
        )

    def _resumable(self, loader: ResumableDataLoader) -> ResumableDataLoader:
        if self.trainer is not None:
            loader.epoch_limit = self.trainer.limit_train_batches
        return loader

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before the dataloaders are built")

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        if self.val_dataset is None:
            raise ValueError(f"test_dataloader needs a {self.val_option} (the test loader serves the validation set)")
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        self._require_setup()
        if self.val_dataset is None:
            raise ValueError(f"predict_dataloader needs a {self.val_option} "
                             "(the predict loader serves the validation set)")
        # Lightning leaves a DistributedSampler in place for prediction too, so the split by rank
        # must be ours: the same loader as validation.
        return self.val_dataloader()


class VideoDataModule(ClipDataModule):
    """Clips from V-JEPA-style manifests ('VIDEO_PATH LABEL' per line), optionally mixed.

    With no train_manifest, the embedded synthetic demo set (12 classes: 3 shapes x 4 motion
    directions) is generated once into demo_dir and used for both training and validation.

    Note for probes: a horizontal flip turns 'left' into 'right', so train a direction probe on
    the demo set with hflip=False.

    Args:
        train_manifest: Training manifest, or several to mix; null uses the embedded demo set.
        val_manifest: Validation manifest(s), concatenated; null means the demo val set when training on
            the demo, else no validation.
        demo_dir: Where the demo set is generated and cached; null uses $ARJEPA_DEMO_DIR or ~/.cache/arjepa_pl/demo.
        mix_weights: One weight per train manifest: each sample is drawn with probability
            weight / (its manifest's size), with replacement; null: every sample once per epoch.
        **kwargs: The clip, augmentation, bad-video and loader options of ClipDataModule.
    """

    val_option = "val_manifest"
    # What one manifest entry becomes (FrameDataModule: one image), called as (manifest, train=..., **options).
    dataset_class: Callable[..., VideoClipDataset] = VideoClipDataset
    train_dataset: VideoClipDataset | None
    val_dataset: VideoClipDataset | None

    def __init__(
        self,
        train_manifest: str | list[str] | None = None,
        val_manifest: str | list[str] | None = None,
        demo_dir: str | None = None,
        mix_weights: list[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if mix_weights is not None and train_manifest is None:
            raise ValueError("mix_weights needs train manifests to mix")
        if mix_weights is not None and len(mix_weights) != len(as_list(train_manifest)):
            raise ValueError(f"mix_weights has {len(mix_weights)} weights for {len(as_list(train_manifest))} "
                             "train manifests")
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.demo_dir = demo_dir
        self.mix_weights = None if mix_weights is None else [float(w) for w in mix_weights]

    @property
    def uses_demo(self) -> bool:
        return self.train_manifest is None

    def check_inputs(self) -> None:
        """Pre-flight check (arjepa_pl.validation, before anything is written): every manifest exists,
        is not empty and parses. Raises ConfigError naming the argument and the file."""
        for name in ("train_manifest", "val_manifest"):
            for path in as_list(getattr(self, name)):
                try:
                    read_manifest(path)
                except (OSError, ValueError) as e:
                    raise ConfigError(name, path, str(e)) from None

    def label_values(self) -> list[int]:
        """The distinct labels of the training set (the pre-flight check of probe tasks reads them)."""
        if self.uses_demo:
            return list(range(NUM_CLASSES))
        return sorted({label for path in as_list(self.train_manifest) for _, label in read_manifest(path)})

    def _manifests(self) -> tuple[str | list[str], str | list[str] | None]:
        """(train, val) manifest paths, generating the demo set if it is used."""
        if self.train_manifest is not None:  # not uses_demo
            return self.train_manifest, self.val_manifest
        demo = ensure_demo_videos(Path(self.demo_dir) if self.demo_dir else default_demo_dir())
        return str(demo.train), self.val_manifest or str(demo.val)

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node: generate the demo set once there,
        # instead of on every rank at the same time.
        if self.uses_demo:
            self._manifests()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        # Cheap when the demo set is cached, and needed in processes where prepare_data did not run.
        train_manifest, val_manifest = self._manifests()
        args = dict(seed=self.seed, max_retries=self.max_retries, max_bad_fraction=self.max_bad_fraction,
                    **vars(self.clip_options))
        self.train_dataset = self.dataset_class(train_manifest, train=True, **args)
        self.val_dataset = self.dataset_class(val_manifest, train=False, **args) if val_manifest else None
        if self.rank == 0:
            sizes = self.train_dataset.source_sizes
            val_info = f"{len(self.val_dataset)} val clips" if self.val_dataset else "no validation"
            log.info(f"video data: {len(self.train_dataset)} train clips {sizes} ({train_manifest}), {val_info}")

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        assert self.train_dataset is not None  # checked by _require_setup
        sampler: ClipSampler
        if self.mix_weights is not None or self.iterations_per_epoch is not None:
            sizes = self.train_dataset.source_sizes
            sampler = WeightedClipSampler(
                self.train_dataset, sizes, self.mix_weights or sizes, num_replicas=self.world_size, rank=self.rank,
                num_samples=self.iterations_per_epoch and self.iterations_per_epoch * self.batch_size, seed=self.seed,
            )
        else:
            # drop_last in the sampler gives every rank the same number of clips (uneven counts hang DDP).
            sampler = ClipSampler(self.train_dataset, num_replicas=self.world_size, rank=self.rank,
                                  shuffle=True, seed=self.seed, drop_last=True)
        return self._resumable(ResumableDataLoader(
            self.train_dataset, batch_size=self.batch_size, sampler=sampler, drop_last=self.drop_last,
            persistent_workers=self.persistent_workers and self.num_workers > 0, **self._loader_args()))

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if self.val_dataset is None:
            return []  # Lightning runs no validation on an empty list
        # Not drop_last: with several ranks a few clips are repeated (padding) rather than
        # skipped, so every clip is evaluated.
        sampler = ClipSampler(self.val_dataset, num_replicas=self.world_size, rank=self.rank,
                              shuffle=False, drop_last=False)
        return DataLoader(self.val_dataset, batch_size=self.batch_size, sampler=sampler, drop_last=False,
                          persistent_workers=self.persistent_workers and self.num_workers > 0, **self._loader_args())
