"""A real SLURM pre-emption: the sbatch template runs a 2-task CPU DDP job, `scancel --signal=USR1`
pre-empts it mid-run, the job checkpoints and requeues itself, and the requeued job resumes (same
run directory, same W&B run) and ends with the same weights, bit for bit, as an uninterrupted job. Needs a SLURM cluster
(.ci/start_slurm.sh starts a one-node one); skipped where there is none."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.dist_helpers import REPO, cli_env, load_checkpoint, tiny_run_args

TEMPLATE = REPO / "scripts" / "slurm" / "train.sbatch"
STEPS, EVERY = 40, 10


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and any(s.strip() in ("idle", "mixed", "allocated") for s in done.stdout.split())


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not slurm_up(), reason="no SLURM cluster (.ci/start_slurm.sh starts one)")]


def job_info(job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(what: str, condition, timeout: float = 240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def submit(run_dir: Path, manifests, logger: bool = False) -> str:
    # The GPU template on 2 CPUs: 2 tasks, no GPUs. 12 clips in global batches of 4: 3 steps per
    # epoch, so the pre-emption usually falls mid-epoch.
    args = [*tiny_run_args(run_dir, manifests, steps=STEPS, batch=2, every=EVERY, logger=logger),
            "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]
    env = cli_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["sbatch", "--parsable", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
                           "--time=10", f"--output={run_dir}.out", f"--chdir={REPO}", str(TEMPLATE), *args],
                          env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def test_preempted_job_requeues_and_ends_like_an_uninterrupted_one(tmp_path, demo_manifests):
    preempted, straight = tmp_path / "preempted", tmp_path / "straight"
    job = submit(preempted, demo_manifests, logger=True)  # the config's W&B logger (offline in tests)
    reference = submit(straight, demo_manifests)  # runs when the first job leaves the 2 CPUs
    try:
        # Mid-run: once the first periodic checkpoint is written, warn the job as SLURM would at its time limit.
        wait_for("the first checkpoint", lambda: (preempted / "checkpoints" / f"step{EVERY:06d}.ckpt").exists())
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        wait_for("the requeue", lambda: int(job_info(job).get("Restarts", 0)) >= 1)
        # A requeued job is held back for a while before it may start again; let it start now.
        wait_for("the requeued job to be pending", lambda: job_info(job)["JobState"] == "PENDING")
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        done = lambda j: job_info(j)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")  # noqa: E731
        wait_for("both jobs to finish", lambda: done(job) and done(reference))
    finally:
        subprocess.run(["scancel", job, reference], capture_output=True)

    log = Path(f"{preempted}.out").read_text()
    assert job_info(job)["JobState"] == "COMPLETED", log[-5000:]
    assert job_info(reference)["JobState"] == "COMPLETED", Path(f"{straight}.out").read_text()[-5000:]
    assert job_info(job)["Restarts"] == "1" and "restart 1" in log
    saved = re.search(r"saving (\S+hpc_ckpt_1\.ckpt) at step (\d+)", log)
    assert saved and EVERY <= int(saved.group(2)) < STEPS, log[-5000:]
    assert f"resuming from {saved.group(1)}" in log

    # The requeued job continued the same W&B run (its id is pinned in the run directory).
    run_id = (preempted / "wandb_run_id").read_text().strip()
    assert len(list((preempted / "wandb").glob(f"offline-run-*-{run_id}"))) == 2, sorted((preempted / "wandb").iterdir())

    a, b = load_checkpoint(straight / "checkpoints" / "last.ckpt"), load_checkpoint(preempted / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
