"""summary.json in the run directory: what a run did, for scripts (the compare harness) to read
without parsing logs or depending on which logger is configured; and at the end of `fit`, the same
short summary that `python -m arjepa_pl summary RUN_DIR` prints, with the picture of the curves.

The CLI adds one to every run that does not configure its own (arjepa_pl.callbacks.defaults)."""

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_warn

from arjepa_pl.callbacks.performance import PerformanceMonitor, batch_clips_and_tokens


class RunSummary(L.Callback):
    """Writes `<default_root_dir>/summary.json` (or `path`) when fit, validate or test ends, on rank 0:

    {"stage", "global_step", "fit_seconds" (wall time of fit, summed over resumed runs), "train_clips"
    (all devices), "train_flops" (PerformanceMonitor's FLOPs per clip x train_clips; null without one),
    "metrics" (the trainer's final scalar metrics)}. The file is replaced atomically.

    Args:
        path: where to write it (default `<default_root_dir>/summary.json`).
        report: at the end of fit, print the run's key numbers and draw `<default_root_dir>/curves.png`
            (arjepa_pl.summary).
        stages: the stages that write the file (the CLI's default instance: fit only, so a later
            `validate` in the same run directory leaves the fit's summary in place).
    """

    def __init__(self, path: Optional[str] = None, report: bool = True,
                 stages: Sequence[str] = ("fit", "validate", "test")):
        self.path, self.report, self.stages = path, report, tuple(stages)
        self.fit_seconds = 0.0
        self.train_clips = 0  # on this rank
        self._start: Optional[float] = None

    def _elapsed(self) -> float:
        return self.fit_seconds + (0.0 if self._start is None else time.perf_counter() - self._start)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_clips += batch_clips_and_tokens(pl_module, batch)[0]

    def state_dict(self) -> dict:
        # A resumed run continues the totals, so a requeued job reports its whole cost.
        return {"fit_seconds": self._elapsed(), "train_clips": self.train_clips}

    def load_state_dict(self, state_dict: dict) -> None:
        self.fit_seconds, self.train_clips = state_dict["fit_seconds"], state_dict["train_clips"]
        self._start = time.perf_counter() if self._start is not None else None

    def summary(self, trainer: L.Trainer, stage: str) -> dict:
        clips = self.train_clips * trainer.world_size
        # Trainer.callbacks is set by Lightning's CallbackConnector but not declared on the class.
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        flops_per_clip = next((c.flops_per_clip for c in callbacks
                               if isinstance(c, PerformanceMonitor) and c.flops_per_clip), None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}
        return {"stage": stage, "global_step": trainer.global_step, "fit_seconds": self._elapsed(),
                "train_clips": clips, "train_flops": flops_per_clip * clips if flops_per_clip is not None else None,
                "metrics": metrics}

    def _write(self, trainer: L.Trainer, stage: str) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking or stage not in self.stages:
            return
        path = Path(self.path or Path(trainer.default_root_dir) / "summary.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.summary(trainer, stage), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, "fit")
        self._start = None
        if self.report and trainer.global_rank == 0 and "fit" in self.stages:
            from arjepa_pl.summary import summarize

            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.save()  # the rows of the last steps, before they are read
            try:
                print("\n" + summarize(trainer.default_root_dir), flush=True)
            except Exception as error:  # noqa: BLE001 - the run is done and saved: a report must not fail it
                rank_zero_warn(f"no end-of-fit summary ({type(error).__name__}: {error}); "
                               f"`python -m arjepa_pl summary {trainer.default_root_dir}` retries it")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, "validate")

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, "test")
