"""What a run prints: the progress line (the run's steps out of its budget, the time left, the loss,
clips/s), the validation after the last step, the model summary without a FLOPs column, and the
messages of dependencies that are dropped."""

import logging
import warnings

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from arjepa_pl import quiet
from arjepa_pl.callbacks import PerformanceMonitor
from arjepa_pl.callbacks.defaults import FinalValidation, ModelSummary, add_run_callbacks
from arjepa_pl.callbacks.progress import RunProgressBar, bar, clock, eta_seconds, metric_text, progress_line


def test_progress_line_counts_the_run_with_time_left_loss_and_throughput():
    line = progress_line(120, 300, elapsed=151, eta=eta_seconds(120, 300, start_step=0, elapsed=151),
                         metrics={"train/loss": 0.41234, "perf/clips_per_sec": 24.06, "v_num": 3})
    assert line.startswith("step 120/300 |")
    assert " 40% 2:31<3:46 · loss 0.412 · 24.1 clips/s" in line
    assert "v_num" not in line  # Lightning's logger version: not the run's business


def test_progress_line_of_an_epoch_budget_and_of_an_unknown_budget():
    line = progress_line(36, 240, elapsed=10, eta=None, metrics={"train/loss": 1.0}, epoch=2, max_epochs=20)
    assert line.startswith("epoch 3/20 · step 36/240 |") and "0:10<?" in line
    assert progress_line(36, None, elapsed=3725, eta=None) == "step 36 1:02:05"


def test_pieces_of_the_line():
    assert bar(0.5, width=4) == "██  " and bar(1.0, width=4) == "████" and bar(0.0, width=2) == "  "
    assert bar(1 / 4, width=2) == "▌ " and bar(1 / 16, width=2) == "▏ "  # eighths of a character
    assert clock(59.6) == "1:00" and clock(3600) == "1:00:00"
    # Resumed at step 100: the pace is that of the steps this process ran.
    assert eta_seconds(150, 300, start_step=100, elapsed=50) == pytest.approx(150)
    assert eta_seconds(100, 300, start_step=100, elapsed=5) is None and eta_seconds(5, None, 0, 1.0) is None
    assert metric_text({"val/loss": 0.5, "online_probe/shape/acc": 0.25, "bad": "x"}) == \
        "val loss 0.5 · online_probe/shape/acc 0.25"


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        loss = (self.net(batch[0]) - batch[1]).pow(2).mean()
        self.log("train/loss", loss)  # as the objectives log it: not prog_bar, yet on the line
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.net(batch[0]) - batch[1]).pow(2).mean(), prog_bar=True)

    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            self.validated_at.append(self.trainer.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(batches: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4 * batches, 4), torch.randn(4 * batches, 1)), batch_size=4)


def _fit(tmp_path, **trainer_args) -> Regression:
    model = Regression()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0,
                        callbacks=[RunProgressBar(), FinalValidation(), PerformanceMonitor(count_flops=False)],
                        **trainer_args)
    trainer.fit(model, _loader(3), _loader(1))
    return model


def test_bar_prints_lines_of_the_whole_run_to_a_file_and_the_last_step_is_validated(tmp_path, capsys):
    # Epochs of 3 batches, a step budget of 7, validation every 3 steps: 3 and 6 by the cadence, 7 by
    # FinalValidation. stdout is not a terminal under pytest: lines, not redraws.
    model = _fit(tmp_path, max_steps=7, val_check_interval=3, check_val_every_n_epoch=None)
    assert model.validated_at == [3, 6, 7]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 1/7 |") and lines[-1].startswith("step 7/7 |")
    assert all(" · loss " in line and "epoch" not in line for line in lines)
    # The performance monitor's clips/s reach the line too (not logged with prog_bar either).
    assert all("clips/s" in line for line in lines[2:]), lines  # measured from the third step on


def test_an_epoch_budget_off_the_validation_cadence_still_ends_validated(tmp_path, capsys):
    # A probe's situation: validation every 5 epochs, stopped after 2.
    model = _fit(tmp_path, max_epochs=2, check_val_every_n_epoch=5)
    assert model.validated_at == [6]
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")][-1]
    assert last.startswith("epoch 2/2 · step 6/6 |") and "val loss" in last


def test_every_run_gets_the_bar_summary_and_final_validation_unless_configured():
    config: dict = {"callbacks": [], "enable_progress_bar": None}
    callbacks = add_run_callbacks(config, [])
    assert [type(c).__name__ for c in callbacks] == ["RunProgressBar", "ModelSummary", "FinalValidation", "RunSummary"]
    assert callbacks[-1].stages == ("fit",)  # a later `validate` leaves the fit's summary.json in place
    assert config["enable_model_summary"] is False  # ours replaces Lightning's, which would say it skipped itself
    config = {"callbacks": [RunProgressBar(), FinalValidation()], "enable_progress_bar": False,
              "enable_model_summary": False}
    assert [type(c).__name__ for c in add_run_callbacks(config, [])] == ["RunSummary"]


def test_model_summary_has_no_flops_column(caplog):
    model = Regression()
    with caplog.at_level(logging.INFO):
        summary = ModelSummary()
        summary.on_fit_start(L.Trainer(accelerator="cpu", logger=False), model)
    text = caplog.text
    assert "Params" in text and "Total params" in text
    assert "FLOPs" not in text and "Flops" not in text


def test_dependency_noise_is_dropped_and_nothing_else(caplog):
    quiet.install()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet.install()  # the filters go in front of the catch-all above
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("LightningCLI's args parameter is intended to run from within Python like ...", UserWarning,
                      stacklevel=1)
        warnings.warn("a warning of our own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of our own"]
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
        log.info("GPU available: False, used: False")
        log.info("`Trainer.fit` stopped: `max_steps=300` reached.")
        log.info("`Trainer.fit` stopped: No training batches.")
    assert caplog.messages == ["GPU available: False, used: False", "`Trainer.fit` stopped: No training batches."]
