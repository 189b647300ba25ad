"""The run lock: one live run per run directory, stale locks taken over, write probes that name the path.
(Through the CLI: tests/test_config_mistakes.py refuses a busy directory, tests/test_faults.py takes over
a stale lock.)"""

import json
import logging
import os
import socket
import subprocess

import pytest

from arjepa_pl.run_lock import LOCK_NAME, RunDirectoryError, RunLock, launched_as_rank_zero


def write_lock(directory, **holder):
    directory.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "started": "earlier", "command": "another run", **holder}
    (directory / LOCK_NAME).write_text(json.dumps(holder))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_is_taken_released_and_its_owner_named(tmp_path):
    run = tmp_path / "run"
    lock = RunLock([run], [run / "checkpoints"]).acquire()
    held = json.loads((run / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started"]
    assert (run / "checkpoints").is_dir() and not list((run / "checkpoints").iterdir())  # probed, left empty
    lock.release()
    assert not (run / LOCK_NAME).exists()


def test_a_live_run_keeps_its_directory(tmp_path):
    parent = subprocess.Popen(["sleep", "30"])  # a live process on this host
    try:
        write_lock(tmp_path, pid=parent.pid)
        busy = rf"(?s)in use by another run: pid {parent.pid} on .*another directory.*wait"
        with pytest.raises(RunDirectoryError, match=busy):
            RunLock([tmp_path]).acquire()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == parent.pid  # untouched
    finally:
        parent.kill()
        parent.wait()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, caplog):
    write_lock(tmp_path, pid=dead_pid())
    with caplog.at_level(logging.WARNING, "arjepa_pl.run_lock"):
        lock = RunLock([tmp_path]).acquire()
    assert "taking over the lock of a run that is no longer running" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    # The holder's pid now belongs to another, live process (pytest's parent): its start time tells them apart.
    write_lock(tmp_path, pid=os.getppid(), process_start="1")
    RunLock([tmp_path]).acquire().release()


def test_a_lock_on_another_host_is_refused_with_the_way_out(tmp_path):
    write_lock(tmp_path, pid=1, host="elsewhere")
    with pytest.raises(RunDirectoryError, match=f"another host: if that run has ended, delete {tmp_path / LOCK_NAME}"):
        RunLock([tmp_path]).acquire()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    write_lock(tmp_path, pid=1, host="node-that-died", slurm_job="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    RunLock([tmp_path]).acquire().release()


def test_all_locks_or_none(tmp_path):
    parent = subprocess.Popen(["sleep", "30"])
    try:
        write_lock(tmp_path / "logs", pid=parent.pid)
        with pytest.raises(RunDirectoryError):
            RunLock([tmp_path / "run", tmp_path / "logs"]).acquire()
        assert not (tmp_path / "run" / LOCK_NAME).exists()  # the first one given back
    finally:
        parent.kill()
        parent.wait()


def test_unwritable_paths_are_one_line_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    under_a_file = f"^cannot create the directory {tmp_path / 'file' / 'run'}: Not a directory$"
    with pytest.raises(RunDirectoryError, match=under_a_file):
        RunLock([tmp_path / "file" / "run"]).acquire()
    with pytest.raises(RunDirectoryError, match="a file of that name is in the way"):
        RunLock([tmp_path], [tmp_path / "file"]).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_only_rank_zero_locks(monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launched_as_rank_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning launched for a second device
    assert not launched_as_rank_zero()
