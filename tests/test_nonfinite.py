"""NonFiniteGuard in a small in-process fit (stop, or skip a bounded number of steps), and the cause of a
failed checkpoint write. (Through the CLI: tests/test_faults.py.)"""

import builtins

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from arjepa_pl import checkpoints
from arjepa_pl.callbacks.nonfinite import NonFiniteGuard, NonFiniteLoss
from arjepa_pl.checkpoints import CheckpointWriteError, atomic_save


class Regression(L.LightningModule):
    """A linear layer whose batch `bad_batch` holds a NaN."""

    def __init__(self, bad_batch: int):
        super().__init__()
        self.layer, self.bad_batch = torch.nn.Linear(4, 1), bad_batch
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x = batch.clone()
        if batch_idx == self.bad_batch:
            x[0, 0] = float("nan")
        loss = self.layer(x).pow(2).mean()
        self.log("train/loss", loss)
        self.log("train/loss_term", loss * 2)
        self.seen.append(self.layer.weight.detach().clone())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def fit(model: Regression, guard: NonFiniteGuard, steps: int = 5) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DataLoader(torch.randn(steps, 4), batch_size=1))
    return trainer


def test_a_non_finite_loss_stops_before_the_optimizer_step():
    model = Regression(bad_batch=2)
    with pytest.raises(NonFiniteLoss, match=r"non-finite train/loss, train/loss_term \(gradient norm nan\) at step 2"):
        fit(model, NonFiniteGuard())
    assert torch.isfinite(model.layer.weight).all()  # the bad step never reached the weights


def test_bounded_skips_leave_the_weights_as_they_were_and_count():
    guard, model = NonFiniteGuard(max_skipped_batches=1), Regression(bad_batch=2)
    fit(model, guard)
    assert guard.skipped == 1
    assert torch.equal(model.seen[2], model.seen[3])  # step 2 skipped: weights unchanged after it
    assert not torch.equal(model.seen[1], model.seen[2]) and torch.isfinite(model.layer.weight).all()


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    model = Regression(bad_batch=-1)
    trainer = fit(model, NonFiniteGuard(), steps=1)
    with torch.no_grad():
        model.layer.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLoss, match="refusing to write a checkpoint"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_a_full_disk_is_named_and_the_previous_checkpoint_is_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, path)
    # Every write lands on /dev/full (ENOSPC), where torch's zip writer hides the cause in a RuntimeError.
    monkeypatch.setattr(checkpoints, "open", lambda name, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(CheckpointWriteError, match=f"^could not write the checkpoint {path}: No space left on device"):
        atomic_save({"step": 2, "w": torch.zeros(1 << 16)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
