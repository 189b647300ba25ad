"""Counting the values code reads back to the host (.item(), int(), float(), bool() of a tensor): on a
GPU each one waits for the device. The same calls happen on the CPU, so tests count them there."""

import traceback
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader


class ReadBacks(TorchDispatchMode):
    """`with ReadBacks() as reads:` counts the read-backs inside (`reads.count`), with where each was
    asked for (`reads.sites`, file:line). The optimizers' own are left out: their step counters are
    host tensors under a CUDA optimizer too (fused AdamW on the CPU reads one per parameter)."""

    def __init__(self):
        super().__init__()
        self.count, self.sites = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = traceback.extract_stack()[:-1]
            last = max(i for i, f in enumerate(frames) if "/torch/" not in f.filename)  # the code that asked
            if not any("/torch/optim/" in f.filename for f in frames[last + 1:]):
                self.count += 1
                self.sites.append(f"{Path(frames[last].filename).name}:{frames[last].lineno}")
        return func(*args, **(kwargs or {}))


class ListedLabels(L.LightningDataModule):
    """A training set from a data module that lists its labels (`label_values`, as the video and
    moving-shapes modules do): what lets a probe check them once instead of reading each batch's."""

    def __init__(self, samples, batch_size: int, labels):
        super().__init__()
        self.samples, self.batch_size, self.labels = samples, batch_size, list(labels)

    def train_dataloader(self):
        return DataLoader(self.samples, batch_size=self.batch_size)

    def label_values(self):
        return self.labels
