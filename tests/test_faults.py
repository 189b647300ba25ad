"""Faults during a run, through the real CLI: a non-finite loss, SIGTERM and Ctrl-C, a full disk. Each
ends with a one-line message and a non-zero exit status, and leaves the last good checkpoint as the
one `--ckpt_path last` resumes. (Configuration mistakes: tests/test_config_mistakes.py; the run lock
and the pieces in isolation: tests/test_run_lock.py, tests/test_nonfinite.py.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arjepa_pl.checkpoints import find_resume_checkpoint
from tests.dist_helpers import REPO, cli_env, load_checkpoint, run_cli, tiny_run_args

pytestmark = pytest.mark.slow


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def all_finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_checkpoint(path)["state_dict"].values() if t.is_floating_point())


def test_non_finite_loss_stops_before_the_weights_and_leaves_the_last_finite_checkpoint(tmp_path, demo_manifests):
    run = tmp_path / "run"
    run.mkdir()
    # A crashed run's lock (its process is gone): taken over with a note.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier",
                                              "command": "a crashed run"}))
    done = run_cli([*tiny_run_args(run, demo_manifests, steps=8, batch=4, every=1),
                    "--trainer.callbacks+=tests.dist_helpers.NaNAt", "--trainer.callbacks.step=3"], returncode=1)
    assert "taking over the lock of a run that is no longer running" in done.stderr
    message = last_line(done.stderr)
    assert message.startswith("error: non-finite") and "at step 3" in message, done.stderr[-3000:]
    assert "train/loss_mask0" in message and "Traceback" not in done.stderr
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved == ["last.ckpt", "step000001.ckpt", "step000002.ckpt", "step000003.ckpt"]
    assert all(all_finite(run / "checkpoints" / name) for name in saved)
    resumes = find_resume_checkpoint([run, run / "checkpoints"])
    assert load_checkpoint(resumes)["global_step"] == 3
    assert not (run / "run.lock").exists()  # released at exit


def start(args: list[str]) -> subprocess.Popen:
    """`python -m arjepa_pl fit ARGS` in its own session (a process group, as a terminal's job is)."""
    return subprocess.Popen([sys.executable, "-m", "arjepa_pl", "fit", *args], cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def interrupt_when(proc: subprocess.Popen, ready: Path, send) -> tuple[int, str]:
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.05)
    send()
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def test_sigterm_and_ctrl_c_save_exit_143_and_130_and_the_run_continues_exactly(tmp_path, demo_manifests):
    steps, every = 30, 5
    args = lambda run: [*tiny_run_args(run, demo_manifests, steps=steps, batch=4, every=every),  # noqa: E731
                        "--data.num_workers", "1", "--ckpt_path", "last"]
    straight = start(args(tmp_path / "straight"))  # the reference, alongside
    run, checkpoints = tmp_path / "interrupted", tmp_path / "interrupted" / "checkpoints"

    # SIGTERM to the main process, as a scheduler sends it.
    proc = start(args(run))
    status, stderr = interrupt_when(proc, checkpoints / "step000005.ckpt", lambda: proc.send_signal(signal.SIGTERM))
    assert status == 143, stderr[-3000:]
    assert "SIGTERM: saving" in stderr and "exit status 143" in stderr and "Traceback" not in stderr
    first = load_checkpoint(run / "hpc_ckpt_1.ckpt")["global_step"]
    assert every <= first < steps

    # Ctrl-C: SIGINT to the whole process group (the DataLoader worker too), as a terminal sends it.
    proc = start(args(run))
    status, stderr = interrupt_when(proc, checkpoints / "step000015.ckpt", lambda: os.killpg(proc.pid, signal.SIGINT))
    assert status == 130, stderr[-3000:]
    assert "resuming from" in stderr and "SIGINT: saving" in stderr and "Traceback" not in stderr
    assert not (run / "hpc_ckpt_1.ckpt").exists()  # superseded
    assert first < load_checkpoint(run / "hpc_ckpt_2.ckpt")["global_step"] < steps

    done = run_cli(args(run))
    assert "resuming from" in done.stderr
    _, stderr = straight.communicate(timeout=300)
    assert straight.returncode == 0, stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "straight/checkpoints/last.ckpt"), load_checkpoint(checkpoints / "last.ckpt")
    assert a["global_step"] == b["global_step"] == steps
    for key in a["state_dict"]:  # student, predictor and EMA teacher
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16 MB file system of its own (a tmpfs: mounting needs root, as in CI)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_at_a_save_is_named_and_the_previous_checkpoint_is_intact(small_tmpfs, demo_manifests):
    run = small_tmpfs / "run"
    done = run_cli([*tiny_run_args(run, demo_manifests, steps=6, batch=4, every=1),
                    "--trainer.callbacks+=tests.dist_helpers.FillDisk", "--trainer.callbacks.step=2"], returncode=1)
    message = last_line(done.stderr)
    assert message == (f"error: could not write the checkpoint {run / 'checkpoints' / 'step000003.ckpt'}: "
                       "No space left on device; the previous checkpoint there is intact"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved == ["last.ckpt", "step000001.ckpt", "step000002.ckpt"]  # no temporary file left either
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
