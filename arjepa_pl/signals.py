"""Signals end a run at a step boundary with a checkpoint, and with an exit status that says so.

SIGTERM (a scheduler, `kill`), SIGINT (Ctrl-C) and, under SLURM, the pre-emption signal
(`#SBATCH --signal=SIGUSR1@90`) only raise a flag in the handler: a signal can arrive in the middle
of any operation (between the optimizer step and the EMA update, or with ranks at different places,
a collective mismatch). At the end of the current training step all ranks agree (one all-reduce),
save one consistent checkpoint together (`hpc_ckpt_N.ckpt` in the run directory, written atomically;
`--ckpt_path last` finds it) and stop. Then:

- SIGTERM / SIGINT: every rank exits with 128 + the signal (143 / 130), so a scheduler or a wrapper
  script sees an interrupted run, not a success; `--ckpt_path last` continues exactly.
- the SLURM signal: rank 0 requeues the job (arjepa_pl.slurm), which resumes with `--ckpt_path last`;
  this process exits with status 0.

Nothing runs after the checkpoint (no validation, no end-of-training hooks): a scheduler's grace period
after SIGTERM is short.

A second SIGINT or SIGTERM while the first is pending ends the process at once, by that signal, without
saving (Ctrl-C twice). Lightning's own handling is switched off for the run: it saves SLURM checkpoints
inside the signal handler, and on SIGTERM it broadcasts from the handler and exits with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from arjepa_pl.slurm import preemption_checkpoints, requeue_job

log = logging.getLogger("arjepa_pl.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(SystemExit):
    """Raised by every rank right after the signal's checkpoint: fit() ends at once, without the validation
    and end-of-training hooks that `trainer.should_stop` would still run (a scheduler's grace period
    after SIGTERM is short). The CLI turns it into the exit status."""


class SaveOnSignal(L.Callback):
    """Installed by the CLI in every fit: checkpoint and stop at a step boundary on SIGTERM, SIGINT and
    SLURM's pre-emption signal (which also requeues the job)."""

    def __init__(self) -> None:
        self._requeue_signal: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._pending: Optional[int] = None  # the signal received and not yet acted on
        self._pid = os.getpid()
        self._verbose = True
        self.stopped_by: Optional[int] = None  # the signal that stopped the run, after its checkpoint
        self.saved: Optional[str] = None

    @property
    def exit_status(self) -> Optional[int]:
        """128 + the signal for SIGTERM / SIGINT stops, None otherwise (a SLURM requeue ends normally)."""
        return 128 + self.stopped_by if self.stopped_by in STOP_SIGNALS else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        env = trainer._accelerator_connector.cluster_environment
        if isinstance(env, SLURMEnvironment) and env.auto_requeue:
            env.auto_requeue = False  # Lightning's requeue saves inside the handler
            self._requeue_signal = env.requeue_signal
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None:
            connector.register_signal_handlers = lambda: None  # ours instead (see the module docstring)
        # Installed now, before the DataLoader workers fork: they inherit the handler, which ignores
        # signals outside this process, so a Ctrl-C to the whole process group leaves them running.
        self._pid, self._verbose, self._pending = os.getpid(), trainer.is_global_zero, None
        for signum in (*STOP_SIGNALS, *([self._requeue_signal] if self._requeue_signal else [])):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker: its process ends with the main one
        if self._pending is not None and signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C: stop now, without saving
            os.kill(os.getpid(), signum)
            return
        self._pending = signum
        if self._verbose and signum in STOP_SIGNALS:
            # os.write: print() is not safe in a signal handler (it may interrupt another print).
            os.write(2, f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then "
                        f"stopping{' (Ctrl-C again stops at once, without saving)' if signum == signal.SIGINT else ''}"
                     "\n".encode())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self._previous:
            return
        signum = self._pending or 0
        if trainer.world_size > 1:  # a signal that reached one rank stops all of them at the same step
            flag = torch.tensor(float(signum), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if signum == 0:
            return
        run_dir = Path(trainer.default_root_dir)
        previous = preemption_checkpoints(run_dir)
        path = trainer.strategy.broadcast(str(run_dir / f"hpc_ckpt_{previous[-1][0] + 1 if previous else 1}.ckpt"))
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            log.warning(f"{name}: saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path, weights_only=False)
        for logger in trainer.loggers:
            logger.save()  # flush what is buffered: the process ends right after
        if trainer.is_global_zero:
            for _, old in previous:  # the new one supersedes them
                trainer.strategy.remove_checkpoint(old)
            if signum == self._requeue_signal:
                requeue_job(path)
            else:
                log.warning(f"{name}: stopped at step {trainer.global_step}, exit status {128 + signum}; "
                            "continue with --ckpt_path last")
        self.stopped_by, self.saved, self._pending = signum, path, None
        raise StoppedBySignal()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._previous = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, KeyboardInterrupt):  # Ctrl-C before training started (demo data, setup)
            self.stopped_by = signal.SIGINT  # Lightning then exits with status 1: `exit_status` says 130


def exit_status(trainer: L.Trainer) -> Optional[int]:
    """128 + the signal that stopped the trainer's run (its SaveOnSignal's), or None."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, not declared on the class
    return next((c.exit_status for c in callbacks if isinstance(c, SaveOnSignal) and c.exit_status), None)
