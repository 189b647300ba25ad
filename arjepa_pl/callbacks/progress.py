"""The training progress bar counts the run, not an epoch: the optimizer step out of the run's
steps, the time left for the whole run, the loss and the clips per second.

    step 120/300 |██████▍         | 40% 2:31<3:47 · loss 0.412 · 24.1 clips/s

Runs budgeted in epochs (probes) add `epoch 3/20`. In a terminal the line updates in place; when
stdout is a file (SLURM logs, pipes) it is printed as a new line every 5 % of the run instead of
hundreds of carriage-return updates. The CLI uses it in every run with a progress bar
(arjepa_pl.callbacks.defaults).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Mapping, Optional

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

BLOCKS = " ▏▎▍▌▋▊▉█"
# The progress-bar metrics the objectives and callbacks log, in the words the line uses.
SHORT_NAMES = {"train/loss": "loss", "val/loss": "val loss", "perf/clips_per_sec": "clips/s"}
# What the line shows of the metrics logged every training step. They are not logged with prog_bar=True:
# Lightning turns every prog_bar value into a number at the end of every step (a logged float becomes a
# device tensor first), which on a GPU makes the host wait for the device each step. The line reads them
# when it is drawn: every 5 % of the run in a log file, every `refresh_rate` steps in a terminal.
STEP_METRICS = ("train/loss", "perf/clips_per_sec")


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def bar(fraction: float, width: int = 16) -> str:
    """A text bar `width` characters wide, in eighths of a character."""
    eighths = int(round(min(max(fraction, 0.0), 1.0) * width * 8))
    full, part = divmod(eighths, 8)
    return ("█" * full + (BLOCKS[part] if part else "")).ljust(width)


def eta_seconds(step: int, total: Optional[int], start_step: int, elapsed: float) -> Optional[float]:
    """Seconds left at the pace of this process so far (validation and checkpoints included), or
    None before the first step or without a step budget."""
    if not total or step <= start_step:
        return None
    return elapsed / (step - start_step) * max(total - step, 0)


def metric_text(metrics: Mapping[str, Any]) -> str:
    """`loss 0.412 · 24.1 clips/s`: the progress-bar metrics, short names, 3 significant digits."""
    parts = []
    for key, value in metrics.items():
        if key == "v_num":  # Lightning's logger version, which says nothing about the run
            continue
        try:
            number = f"{float(value):.3g}"
        except (TypeError, ValueError):
            continue
        name = SHORT_NAMES.get(key, key)
        parts.append(f"{number} {name}" if name == "clips/s" else f"{name} {number}")
    return " · ".join(parts)


def progress_line(step: int, total: Optional[int], elapsed: float, eta: Optional[float],
                  metrics: Mapping[str, Any] = {}, epoch: Optional[int] = None,
                  max_epochs: Optional[int] = None) -> str:
    """The whole line: `[epoch e/E · ]step s/total |bar| pct% elapsed<left · metrics`."""
    left = f"epoch {epoch + 1}/{max_epochs} · " if epoch is not None and max_epochs else ""
    if total:
        fraction = step / total
        line = f"{left}step {step}/{total} |{bar(fraction)}| {fraction:4.0%} {clock(elapsed)}<"
        line += clock(eta) if eta is not None else "?"
    else:
        line = f"{left}step {step} {clock(elapsed)}"
    extra = metric_text(metrics)
    return f"{line} · {extra}" if extra else line


class RunProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, with the training bar counting the run's optimizer steps (see the module).

    Args:
        refresh_rate: steps between updates of the line in a terminal.
        lines_every: fraction of the run between printed lines when stdout is not a terminal.
    """

    def __init__(self, refresh_rate: int = 1, lines_every: float = 0.05):
        super().__init__(refresh_rate=refresh_rate)
        self.lines_every = lines_every
        self._lines = False  # print lines rather than redraw (stdout is not a terminal)
        self._start_time = 0.0
        self._start_step = 0
        self._total: Optional[int] = None
        self._next_line_step = 0
        self._printed_step: Optional[int] = None
        self._stale = False  # a validation ended after the last printed line

    def _line(self, trainer) -> str:
        total, step = self._total, trainer.global_step
        elapsed = time.monotonic() - self._start_time
        epoch_based = trainer.max_steps in (None, -1) and trainer.max_epochs not in (None, -1)
        logged = trainer.callback_metrics
        metrics = {**{k: logged[k] for k in STEP_METRICS if k in logged}, **trainer.progress_bar_metrics}
        return progress_line(step, total, elapsed, eta_seconds(step, total, self._start_step, elapsed), metrics,
                             # After the last epoch Lightning counts one more: the run is in its last.
                             epoch=min(trainer.current_epoch, trainer.max_epochs - 1) if epoch_based else None,
                             max_epochs=trainer.max_epochs if epoch_based else None)

    def _show(self, trainer, force: bool = False) -> None:
        if self.is_disabled or self._train_progress_bar is None:
            return
        step = trainer.global_step
        if self._lines:
            if step >= self._next_line_step or (force and (step != self._printed_step or self._stale)):
                total = self._total
                self._next_line_step = step + max(1, int(total * self.lines_every) if total else 50)
                self._printed_step, self._stale = step, False
                print(self._line(trainer), flush=True)
            return
        if force or step % self.refresh_rate == 0:
            self.train_progress_bar.n = step
            self.train_progress_bar.set_description_str(self._line(trainer), refresh=True)

    def _tqdm(self, **kwargs) -> Tqdm:
        # Bars other than training's are Lightning's; off when printing lines, or they would add a
        # line per redraw to the log file.
        return Tqdm(disable=self.is_disabled or self._lines, dynamic_ncols=True, file=sys.stdout, **kwargs)

    def init_sanity_tqdm(self) -> Tqdm:
        return self._tqdm(desc=self.sanity_check_description, leave=False, bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        has_main_bar = self.trainer.state.fn != "validate"
        return self._tqdm(desc=self.validation_description, position=int(has_main_bar and not self._lines),
                          leave=not has_main_bar, bar_format=self.BAR_FORMAT)

    def init_train_tqdm(self) -> Tqdm:
        return self._tqdm(leave=True, bar_format="{desc}")

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._lines = not sys.stdout.isatty()

    def on_train_start(self, trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        total = trainer.estimated_stepping_batches
        self._total = int(total) if math.isfinite(total) and total > 0 else None
        self._next_line_step = trainer.global_step

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        pass  # one line for the whole run: nothing restarts with an epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._show(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._train_progress_bar is not None:
            self._stale = True
            if not self._lines:
                self._show(trainer, force=True)  # the line shows the new validation numbers

    def on_train_end(self, trainer, *_: Any) -> None:
        self._show(trainer, force=True)
        self.train_progress_bar.close()

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self._lines:
            print(*args, sep=sep, **kwargs)
        else:
            super().print(*args, sep=sep, **kwargs)
