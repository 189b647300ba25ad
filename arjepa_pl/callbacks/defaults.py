"""What every run of the CLI gets unless its config brings its own: the progress bar that counts the
run (RunProgressBar), the model summary without a FLOPs column (ModelSummary), a validation after the
last step (FinalValidation) and the end-of-fit summary with summary.json and curves.png (RunSummary).
ArJepaCLI passes its trainer arguments through `add_run_callbacks`, so no config has to repeat them
and a user's own config gets them too."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelSummary as _LightningModelSummary
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

from arjepa_pl.callbacks.progress import RunProgressBar
from arjepa_pl.callbacks.run_summary import RunSummary


class FinalValidation(L.Callback):
    """Validates after the last training step whatever the validation cadence, so a run's last
    numbers describe its final weights: a probe validated every 5 epochs and stopped after 2, or a
    run of 250 steps validated every 100, would otherwise end on old numbers or none.

    Epoch budgets: the last epoch validates at its end (its cadence is set to every epoch). Step
    budgets: the last step asks the trainer to stop, which Lightning follows with a validation (once,
    even when the cadence would have validated there anyway).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs not in (None, -1) and trainer.current_epoch == trainer.max_epochs - 1:
            if trainer.check_val_every_n_epoch is not None:
                trainer.check_val_every_n_epoch = 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
            if trainer.check_val_every_n_epoch is not None:
                trainer.check_val_every_n_epoch = 1
            trainer.should_stop = True


# Lightning's own summary logger, whose messages Lightning prints (ours has no handler).
log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


class ModelSummary(_LightningModelSummary):
    """Lightning's table of the model's sub-networks, without its FLOPs column: Lightning counts FLOPs
    only by calling `forward` on an `example_input_array`, which objectives do not have (a batch is a
    dict of clips and masks), so the column would say 0. PerformanceMonitor counts the FLOPs of a real
    training step (perf/tflops)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops=0, **summarize_kwargs) -> None:
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      0, *columns)
        log.info("\n" + table.rsplit("\n", 1)[0])  # the last line is "Total Flops"


def add_run_callbacks(trainer_config: dict[str, Any], callbacks: list[L.Callback]) -> list[L.Callback]:
    """`callbacks` plus those of every run that `trainer_config` (the trainer's init arguments,
    callbacks instantiated) does not already have. No progress bar when `enable_progress_bar` is
    false, no model summary when `enable_model_summary` is; when ours is added, Lightning's own is
    switched off in `trainer_config` (else Lightning says it skipped it)."""
    configured = trainer_config.get("callbacks") or []
    configured = [*(configured if isinstance(configured, list) else [configured]), *callbacks]
    extra: list[L.Callback] = []
    if trainer_config.get("enable_progress_bar") is not False and \
            not any(isinstance(c, ProgressBar) for c in configured):
        extra.append(RunProgressBar())
    if trainer_config.get("enable_model_summary") is not False and \
            not any(isinstance(c, _LightningModelSummary) for c in configured):
        extra.append(ModelSummary())
        trainer_config["enable_model_summary"] = False
    if not any(isinstance(c, FinalValidation) for c in configured):
        extra.append(FinalValidation())
    if not any(isinstance(c, RunSummary) for c in configured):
        extra.append(RunSummary(stages=("fit",)))
    return [*callbacks, *extra]
