"""Pictures and videos of what a run is doing, every N steps and at the end of training.

Every picture is written as a PNG and every video as an H.264 mp4 under `<run dir>/media/stepNNNNNN/`
(useful without W&B), and logged as `media/<name>` to every WandbLogger of the trainer.

Built in: for batches that carry JEPA masks (batch["masks"] = [{"context": [B, Kc], "target": [B, Kt]}, ...]
of flat (t, h, w) token indices), one picture per mask configuration, `masks<i>`, titled with the step
and the configuration (arjepa_pl.pictures.mask_pictures says what each colour means).

Protocol for everything else (AR rollouts, probe confusion matrices, ...): a LightningModule may define

    def media(self, batch) -> dict[str, np.ndarray]

returning uint8 (or float in [0, 1]) arrays: [H, W, 3] or [H, W] is a picture, [T, H, W, 3] a video.
It gets the first `max_clips` clips of a training batch on the module's device, and runs in eval mode
under no_grad and the trainer's precision, on every rank (so sharded models work); rank 0 writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning_utilities.core.apply_func import apply_to_collection

from arjepa_pl.pictures import MASK_CAPTION, mask_pictures
from arjepa_pl.video_io import write_mp4


def as_media(name: str, array) -> np.ndarray:
    """A picture [H, W, 3] or video [T, H, W, 3] as uint8, or a ValueError naming `name`."""
    a = np.asarray(array.detach().cpu() if torch.is_tensor(array) else array)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"media {name!r}: expected uint8 or float in [0, 1], got {a.dtype}")
        a = (np.clip(np.nan_to_num(a), 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim not in (3, 4) or a.shape[-1] not in (1, 3):
        raise ValueError(f"media {name!r}: expected a picture [H, W, 3] or [H, W] or a video [T, H, W, 3], "
                         f"got shape {tuple(a.shape)}")
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def write_media(media: dict, dirpath: str | Path, step: int, loggers: Sequence = (), fps: int = 4,
                captions: Optional[dict[str, str]] = None) -> list[Path]:
    """Write `media` to `dirpath/stepNNNNNN/<name>.png|.mp4` and log them to the WandbLoggers in `loggers`."""
    from PIL import Image

    folder = Path(dirpath) / f"step{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in media.items():
        a = as_media(name, array)
        stem = folder / name.replace("/", "_")
        caption = (captions or {}).get(name)
        if a.ndim == 3:
            path = stem.with_suffix(".png")
            Image.fromarray(a).save(path)
        else:  # H.264 in yuv420p needs even sides
            a = np.pad(a, ((0, 0), (0, a.shape[1] % 2), (0, a.shape[2] % 2), (0, 0)), mode="edge")
            path = stem.with_suffix(".mp4")
            write_mp4(path, a, fps=fps)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                log = logger.log_image if a.ndim == 3 else logger.log_video
                log(key=f"media/{name}", **{"images" if a.ndim == 3 else "videos": [str(path)]}, step=step,
                    caption=[caption])
        written.append(path)
    return written


def describe(config) -> str:
    """A mask configuration in a few words: its first three fields (MaskConfig: num_blocks,
    spatial_scale, temporal_scale; MultiBlock2DConfig: num_targets, target_scale, ...)."""
    if not dataclasses.is_dataclass(config):
        return str(config)

    def text(value) -> str:
        if isinstance(value, (tuple, list)):
            return f"{text(value[0])}" if len(set(value)) == 1 else "-".join(text(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{f.name} {text(getattr(config, f.name))}" for f in dataclasses.fields(config)[:3])


def first_clips(batch, k: int):
    """The first `k` entries of every tensor in a batch, detached, on the CPU."""
    return apply_to_collection(batch, torch.Tensor, lambda t: t[:k].detach().cpu() if t.ndim else t.detach().cpu())


class MediaLogger(L.Callback):
    """Media at the first training step, every `every_n_steps` optimizer steps and at the end of training.

    The end-of-training media reuse the clips of the last media step, with the final model.

    Args:
        every_n_steps: optimizer steps between media.
        max_clips: clips of a batch to draw.
        num_frames: frames of each clip in the mask pictures.
        fps: frame rate of the videos.
        dirpath: where to write them (default `<trainer.log_dir>/media`).
    """

    def __init__(self, every_n_steps: int = 100, max_clips: int = 2, num_frames: int = 4, fps: int = 4,
                 dirpath: Optional[str] = None):
        if every_n_steps < 1 or max_clips < 1 or num_frames < 1 or fps < 1:
            raise ValueError("every_n_steps, max_clips, num_frames and fps must all be >= 1")
        self.every_n_steps, self.max_clips, self.num_frames, self.fps = every_n_steps, max_clips, num_frames, fps
        self.dirpath = dirpath
        self._batch = None
        self._logged_step: Optional[int] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: resolve it here, on every rank.
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.log_dir or trainer.default_root_dir) / "media")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._batch is None or (step % self.every_n_steps == 0 and step != self._logged_step):
            self._batch = first_clips(batch, self.max_clips)
            self.log_media(trainer, pl_module, self._batch, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._batch is not None and trainer.global_step != self._logged_step:
            self.log_media(trainer, pl_module, self._batch, trainer.global_step)

    def collect(self, trainer: L.Trainer, pl_module: L.LightningModule, batch) -> dict[str, np.ndarray]:
        """The built-in mask pictures (rank 0) and the module's own `media(batch)` (every rank)."""
        media = {}
        encoder = getattr(pl_module, "encoder", None)
        clips = batch.get("video", batch.get("image")) if isinstance(batch, dict) else None
        if trainer.is_global_zero and clips is not None and batch.get("masks") and encoder is not None \
                and hasattr(encoder, "patch_size"):
            # Trainer.datamodule is set by Lightning's DataConnector but not declared on the class.
            data = trainer.datamodule  # type: ignore[attr-defined]
            configs = getattr(pl_module, "masks", None) or [None] * len(batch["masks"])
            titles = [f"masks{i} at step {trainer.global_step}" + (f": {describe(c)}" if c is not None else "")
                      for i, c in enumerate(configs)]
            media.update(mask_pictures(clips, batch["masks"], getattr(encoder, "tubelet_size", 1),
                                       encoder.patch_size, getattr(data, "mean", None), getattr(data, "std", None),
                                       num_frames=self.num_frames, titles=titles))
        module_media = getattr(pl_module, "media", None)
        if callable(module_media):
            training = pl_module.training
            pl_module.eval()
            try:
                with torch.no_grad(), trainer.precision_plugin.forward_context():
                    on_device = apply_to_collection(batch, torch.Tensor, lambda t: t.to(pl_module.device))
                    media.update(module_media(on_device))
            finally:
                pl_module.train(training)
        return media

    def log_media(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, step: int) -> None:
        media = self.collect(trainer, pl_module, batch)
        if trainer.is_global_zero and media:
            assert self.dirpath is not None  # resolved in setup()
            captions = {name: MASK_CAPTION for name in media if name.startswith("masks")}
            write_media(media, self.dirpath, step, trainer.loggers, fps=self.fps, captions=captions)
        self._logged_step = step
