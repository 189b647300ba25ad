"""SLURM pre-emption: checkpoint at a step boundary and requeue the job, which then resumes exactly.

`#SBATCH --signal=SIGUSR1@90 --requeue` makes SLURM warn the job 90 s before its time runs out (or
an operator does: `scancel --signal=USR1 JOB`). Lightning's SLURMEnvironment auto-requeue would then
save a checkpoint *inside the signal handler* — wherever each rank happens to be: between the
optimizer step and the EMA update, or with ranks in different places (a collective mismatch).
arjepa_pl.signals.SaveOnSignal handles this signal like SIGTERM and Ctrl-C: the handler only raises a
flag; at the end of the current training step all ranks agree and together save a consistent
checkpoint; then rank 0 requeues the job (here) and training stops. The requeued job runs the same
command; `--ckpt_path last` picks the newest checkpoint.
"""

import logging
import os
import re
import subprocess
from pathlib import Path

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


def requeue_job(checkpoint: str) -> None:
    """`scontrol requeue` this job (rank 0, after the pre-emption checkpoint is written); on failure, say how
    to resume."""
    job = slurm_job_id()
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if done.returncode == 0:
        log.warning(f"requeued SLURM job {job}")
    else:
        log.error(f"`scontrol requeue {job}` failed ({done.returncode}): {done.stderr.strip()}; "
                  f"resubmit the job with --ckpt_path {checkpoint}")
