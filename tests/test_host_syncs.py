"""A training step through the Trainer reads back to the host only what it must. On a GPU each
read-back (.item(), float(), bool() of a device tensor) makes the host wait for the device, so it
cannot queue the next step's work meanwhile. Counted here on the CPU, where the same calls happen."""

import statistics
from pathlib import Path

import lightning.pytorch as L
import torch

from arjepa_pl.cli import ArJepaCLI
from tests.read_backs import ReadBacks

REPO = Path(__file__).resolve().parents[1]


class PerStep(L.Callback):
    """The read-backs between the starts of consecutive training batches: one whole step each, the
    Trainer's bookkeeping after the step included."""

    def __init__(self, counter: ReadBacks):
        self.counter, self.marks, self.sites = counter, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.marks.append(self.counter.count)
        self.sites.append(len(self.counter.sites))


def test_a_quick_start_training_step_reads_back_one_value(tmp_path, monkeypatch):
    """configs/vjepa.yaml with every callback it configures (online probe, collapse monitor, media,
    performance, gradient norm) and the run's defaults (non-finite guard, summary): its typical step
    reads back one value, the non-finite guard's decision before the optimizer step (a step must be
    known finite before it changes the weights). Lightning's prog_bar conversions (the loss and clips/s
    are not logged with prog_bar) and the online probe's label checks read nothing back in a step; the
    progress line reads its numbers when it draws (tests/test_console.py)."""
    cli = ArJepaCLI(args=[
        "--config", str(REPO / "configs/vjepa.yaml"), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_steps", "10", "--trainer.logger", "false",
        "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "50",
        "--data.train_clips", "160", "--data.crop_size", "32", "--data.frames_per_clip", "4",
        "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"], run=False)
    # A number handed to Lightning's log becomes a tensor on the module's device: on a GPU a copy that
    # waits for the device. Every number logged in training must arrive as a host tensor instead.
    numbers, log = [], L.LightningModule.log

    def logged(module, name, value, *args, **kwargs):
        if not isinstance(value, torch.Tensor) and module.trainer.training:
            numbers.append(name)
        return log(module, name, value, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "log", logged)
    counter = ReadBacks()
    steps = PerStep(counter)
    cli.trainer.callbacks.append(steps)
    with counter:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert numbers == [], sorted(set(numbers))
    per_step = [b - a for a, b in zip(steps.marks[1:], steps.marks[2:])]  # steps 2..9: no first-step work
    sites = counter.sites[steps.sites[1]:steps.sites[-1]]
    assert statistics.median(per_step) == 1, (per_step, sites)
    assert {site.split(":")[0] for site in sites} == {"nonfinite.py"}, sites
