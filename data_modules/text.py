"""Byte-level text data: by default the Python standard library's own .py sources, found at run time.

Nothing is downloaded: every Python installation carries ~30 MB of its library as source. Files are
split into train and validation by a hash of their path relative to the root, so the split is the
same on every machine and every run, and a file is never in both. Knows nothing of models: batches
are {"tokens": long [B, seq_len + 1]}; predict batches are {"prompt": long [1, P], "text": str}.
"""

from __future__ import annotations

import logging
import sysconfig
import zlib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger("arjepa_pl.data")

# Third-party packages live under the standard library's folder in many installations: not ours.
EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")


def default_text_root() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_files(root: Path, pattern: str, val_percent: float) -> tuple[list[Path], list[Path]]:
    """(train, val) files under root matching pattern, sorted; a file is in val when the crc32 of its
    relative path falls in the first val_percent of the hash range."""
    train: list[Path] = []
    val: list[Path] = []
    for path in sorted(root.rglob(pattern)):
        rel = path.relative_to(root)
        if not path.is_file() or any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        bucket = zlib.crc32(rel.as_posix().encode()) % 10000 / 100.0
        (val if bucket < val_percent else train).append(path)
    return train, val


def read_bytes(files: list[Path]) -> tuple[torch.Tensor, int]:
    """All files concatenated as one uint8 tensor, and the number of unreadable files skipped."""
    chunks, skipped = [], 0
    for path in files:
        try:
            chunks.append(path.read_bytes())
        except OSError as e:
            skipped += 1
            log.warning(f"text data: skipping unreadable {path}: {e}")
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    return torch.from_numpy(data), skipped


class ByteWindows(Dataset):
    """Non-overlapping windows of seq_len + 1 bytes (input and the next-byte targets overlap by L)."""

    def __init__(self, data: torch.Tensor, seq_len: int):
        if len(data) < seq_len + 1:
            raise ValueError(f"{len(data)} bytes of text cannot fill one window of {seq_len + 1} bytes")
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict:
        start = i * self.seq_len
        return {"tokens": self.data[start:start + self.seq_len + 1].long()}


class Prompts(Dataset):
    def __init__(self, prompts: list[str]):
        self.prompts = list(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": torch.tensor(list(self.prompts[i].encode("utf-8")), dtype=torch.long),
                "text": self.prompts[i]}


def collate_prompt(items: list[dict]) -> dict:
    (item,) = items
    return {"prompt": item["prompt"][None], "text": [item["text"]]}


class ByteTextDataModule(pl.LightningDataModule):
    """Byte windows of a folder of text files (default: the Python standard library's .py sources).

    Args:
        root: folder searched recursively; None = the running interpreter's standard library.
        pattern: glob of the files to read under root.
        seq_len: bytes the model reads per sample (each sample holds seq_len + 1 bytes).
        val_percent: share of the files (by path hash) held out for validation.
        batch_size: windows per batch on each device.
        num_workers: DataLoader worker processes (0 = main process; windows are slices of memory).
        seed: seed of the training shuffle.
        prompts: what `predict` continues, one sample per prompt.
    """

    def __init__(
        self,
        root: str | None = None,
        pattern: str = "*.py",
        seq_len: int = 256,
        val_percent: float = 5.0,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        prompts: tuple[str, ...] = ("def ", "import ", "class "),
    ) -> None:
        super().__init__()
        if seq_len < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError("need seq_len >= 1, batch_size >= 1, num_workers >= 0; "
                             f"got {seq_len}, {batch_size}, {num_workers}")
        if not 0 < val_percent < 100:
            raise ValueError(f"val_percent must lie in (0, 100), got {val_percent}")
        if not prompts or any(not p for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        self.save_hyperparameters()
        self.root = Path(root).expanduser() if root else default_text_root()
        self.pattern, self.seq_len, self.val_percent = pattern, seq_len, val_percent
        self.batch_size, self.num_workers, self.seed, self.prompts = batch_size, num_workers, seed, list(prompts)
        self.train_dataset: ByteWindows | None = None
        self.val_dataset: ByteWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" or self.train_dataset is not None:
            return  # prompts need no corpus
        if not self.root.is_dir():
            raise ValueError(f"text root {self.root} is not a folder")
        train_files, val_files = split_files(self.root, self.pattern, self.val_percent)
        if not train_files or not val_files:
            raise ValueError(f"{self.root} has {len(train_files)} train and {len(val_files)} validation files matching "
                             f"{self.pattern!r}: need at least one of each (more files, or another val_percent)")
        train, skipped_train = read_bytes(train_files)
        val, skipped_val = read_bytes(val_files)
        self.train_dataset, self.val_dataset = ByteWindows(train, self.seq_len), ByteWindows(val, self.seq_len)
        self.skipped = skipped_train + skipped_val
        log.info(f"text data: {len(train_files)} train files ({len(train) / 1e6:.1f} MB), {len(val_files)} val files "
                 f"({len(val) / 1e6:.1f} MB) from {self.root}; {self.skipped} unreadable skipped")

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        # Lightning swaps in a DistributedSampler (same seed on every rank) when there are several.
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "setup() builds the datasets"
        return self._loader(self.train_dataset, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "setup() builds the datasets"
        return self._loader(self.val_dataset, False, self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        # One prompt per batch: prompts differ in length.
        return DataLoader(Prompts(self.prompts), batch_size=1, collate_fn=collate_prompt)
