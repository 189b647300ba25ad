"""Small fixed-view clip data and a fit helper for the frozen-encoder probe tests."""

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules import ClipDataModule, ClipSampler, ResumableDataLoader


class ShadeClips(Dataset):
    """Fixed clips whose brightness and left/right half code two labels (label = shade * 2 + side)."""

    def __init__(self, n: int, offset: int, frames: int = 4):
        self.n, self.offset, self.frames = n, offset, frames

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        i = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        label = i % 6
        g = torch.Generator().manual_seed(self.offset + i)
        video = 0.3 * torch.randn(3, self.frames, 16, 16, generator=g) + (label // 2 - 1.0)
        video[:, :, :, (label % 2) * 8:(label % 2) * 8 + 8] += 1.0
        return {"video": video, "label": label, "index": i}


class ShadeData(ClipDataModule):
    """A data module whose training clips are fixed views (no augmentation), as the benchmark's."""

    fixed_train_views = True

    def __init__(self, batch_size: int = 4, seed: int = 0, frames_per_clip: int = 4, train_clips: int = 24):
        super().__init__(frames_per_clip=frames_per_clip, crop_size=16, batch_size=batch_size, num_workers=0, seed=seed,
                         report_skipped=False)
        self.save_hyperparameters()
        self.train_clips = train_clips

    def setup(self, stage=None):
        super().setup(stage)
        self.train_dataset = ShadeClips(self.train_clips, 0, self.frames_per_clip)
        self.val_dataset = ShadeClips(12, 1000, self.frames_per_clip)

    def train_dataloader(self):
        sampler = ClipSampler(self.train_dataset, num_replicas=1, rank=0, shuffle=True, seed=self.seed, drop_last=True)
        return ResumableDataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                                   **self._loader_args())

    def val_dataloader(self):
        sampler = ClipSampler(self.val_dataset, num_replicas=1, rank=0, shuffle=False)
        return DataLoader(self.val_dataset, batch_size=self.batch_size, sampler=sampler, **self._loader_args())


def fit(module: L.LightningModule, data, root, epochs: int = 3) -> dict:
    """Fit on CPU without loggers or checkpoints; the final callback metrics as floats."""
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def count_encoder_calls(module) -> list:
    """Clips the module's frozen encoder is run on, one entry per call."""
    calls: list = []
    module.extractor.register_forward_hook(lambda m, args, out: calls.append(args[0].size(0)))
    return calls


def validate(module: L.LightningModule, data, root) -> dict:
    """The module's validation metrics as they stand (e.g. untrained)."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}
