"""SLURM pre-emption: checkpoint at a step boundary and requeue the job, which then resumes exactly.

`#SBATCH --signal=SIGUSR1@90 --requeue` makes SLURM warn the job 90 s before its time runs out (or
an operator does: `scancel --signal=USR1 JOB`). Lightning's SLURMEnvironment auto-requeue would then
save a checkpoint *inside the signal handler* — wherever each rank happens to be: between the
optimizer step and the EMA update, or with ranks in different places (a collective mismatch). Here
the handler only raises a flag; at the end of the current training step all ranks agree (one
all-reduce) and together save a consistent checkpoint, then rank 0 requeues the job and training
stops. The requeued job runs the same command; `--ckpt_path last` picks the newest checkpoint.
"""

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, Union

import lightning.pytorch as L
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger("arjepa_pl.slurm")

PREEMPTION_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")  # Lightning's name, so ckpt_path="hpc" finds it too


def slurm_job_id() -> str:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected SLURM job id {job!r}")
    return job


def preemption_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := PREEMPTION_CHECKPOINT.fullmatch(p.name))]
    return sorted(found)


class SlurmRequeue(L.Callback):
    """Takes over the auto-requeue of Lightning's SLURMEnvironment (when it is on, the default) and
    does it at a step boundary. Does nothing outside SLURM."""

    def __init__(self) -> None:
        self._signum: Optional[int] = None
        # What signal.signal returned: a Python handler, SIG_DFL / SIG_IGN, or None.
        self._previous_handler: Union[Callable[[int, Optional[FrameType]], Any], int, None] = None
        self._signalled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(env, SLURMEnvironment) or not env.auto_requeue:
            return
        # Lightning sets SIGUSR1 unless on Windows, which has no SLURM.
        assert env.requeue_signal is not None
        env.auto_requeue = False  # so Lightning installs no handler of its own
        self._signum = env.requeue_signal
        self._previous_handler = signal.signal(self._signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signalled = True  # nothing else: this may run in the middle of any operation

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._signum is None:
            return
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        run_dir = Path(trainer.default_root_dir)
        previous = preemption_checkpoints(run_dir)
        path = trainer.strategy.broadcast(str(run_dir / f"hpc_ckpt_{previous[-1][0] + 1 if previous else 1}.ckpt"))
        if trainer.is_global_zero:
            log.warning(f"SLURM pre-emption signal: saving {path} at step {trainer.global_step} and requeueing")
        trainer.save_checkpoint(path, weights_only=False)
        for logger in trainer.loggers:
            logger.save()  # flush what is buffered: requeueing ends this job right away
        if trainer.is_global_zero:
            for _, old in previous:  # the new one supersedes them
                trainer.strategy.remove_checkpoint(old)
            job = slurm_job_id()
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode == 0:
                log.warning(f"requeued SLURM job {job}")
            else:
                log.error(f"`scontrol requeue {job}` failed ({done.returncode}): {done.stderr.strip()}; "
                          f"resubmit the job with --ckpt_path {path}")
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous_handler)
            self._signum = None
