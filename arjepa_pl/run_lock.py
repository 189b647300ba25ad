"""A run directory has one owner, and every directory a run writes to is found writable at the start.

Two runs in one directory would share one W&B run id (pinned in the run directory), overwrite each
other's config.yaml and leave `--ckpt_path last` to resume whichever wrote last. So a training run
takes a lock in its run directory and in its loggers' directories: a file `run.lock` created
atomically (O_EXCL) holding the owner's pid, host, start time and command, removed when the run
ends. A second run there is refused, naming the owner. A lock whose process is gone (same host, pid
no longer running or reused by another process) is taken over with a note, and so is one left by an
earlier run of the same SLURM job (a requeued job starts again after the node killed the old one).

Creating the lock is also the write probe of the run directory; checkpoint folders get a probe file
written and removed. A path that cannot be written (a file on the way, no permission, a read-only or
full file system) is reported at once in one line naming the path and the OS error, instead of at the
first save after hours of training.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from arjepa_pl.errors import UserError

log = logging.getLogger("arjepa_pl.run_lock")

LOCK_NAME = "run.lock"


class RunDirectoryError(UserError):
    """A run directory that is in use by a live run, or that cannot be written."""


def launched_as_rank_zero() -> bool:
    """Whether this process is (or will be) global rank 0: every launcher gives the other ranks a non-zero
    RANK, SLURM_PROCID, LOCAL_RANK or NODE_RANK; rank 0 has none or all zero."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK",
                                                                          "NODE_RANK", "GROUP_RANK"))


def process_start(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot, from /proc), to tell it from a later process
    that got the same pid; None where there is no /proc or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def slurm_job() -> Optional[str]:
    return os.environ.get("SLURM_JOB_ID")


def this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "slurm_job": slurm_job(),
            "command": " ".join(sys.argv)[:500]}


def holder_is_alive(holder: dict) -> Optional[bool]:
    """True / False for a holder on this host, None (cannot tell) for one on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = holder.get("process_start")
    return started is None or process_start(pid) in (None, started)


def describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock file"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            + (f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else "")
            + (f": {holder['command']}" if holder.get("command") else ""))


def make_dir(directory: Path) -> None:
    """mkdir -p, or a one-line RunDirectoryError naming the path and the OS error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirectoryError(f"cannot create the directory {directory}: a file of that name is in the way") from None
    except OSError as e:
        raise RunDirectoryError(f"cannot create the directory {directory}: {e.strerror or e}") from None


def probe_writable(directory: Path) -> None:
    """Create `directory` and write, flush and remove a file in it; a failure is a one-line RunDirectoryError."""
    make_dir(directory)
    try:
        probe = directory / f".write_probe.{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"arjepa_pl write probe\n")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise RunDirectoryError(f"cannot write to {directory}: {e.strerror or e}") from None


class RunLock:
    """The locks of one run: `acquire()` takes them all (or none), `release()` gives them back."""

    def __init__(self, lock_dirs: Iterable[os.PathLike], probe_dirs: Iterable[os.PathLike] = ()):
        self.lock_dirs = _unique(lock_dirs)
        self.probe_dirs = [d for d in _unique(probe_dirs) if d not in self.lock_dirs]
        self.me = this_process()
        self.held: list[Path] = []

    def acquire(self) -> RunLock:
        try:
            for directory in self.lock_dirs:
                self._take(directory)
            for directory in self.probe_dirs:
                probe_writable(directory)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        for path in self.held:
            if _read(path).get("pid") == self.me["pid"]:
                path.unlink(missing_ok=True)
        self.held = []

    def _take(self, directory: Path) -> None:
        path = directory / LOCK_NAME
        make_dir(directory)
        for attempt in range(2):
            try:
                _create(path, self.me)
                self.held.append(path)
                return
            except FileExistsError:
                pass
            except OSError as e:
                raise RunDirectoryError(f"cannot write to {directory}: {e.strerror or e}") from None
            holder = _read(path)
            if holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
                return  # this process's own lock (a second fit in one process)
            same_job = holder.get("slurm_job") is not None and holder.get("slurm_job") == self.me["slurm_job"]
            # An unreadable lock is either being written this instant (alive) or a leftover of a crash.
            alive = holder_is_alive(holder) if holder else _age(path) < 10
            if attempt == 0 and (alive is False or same_job):
                why = "an earlier run of this SLURM job" if same_job else "a run that is no longer running"
                log.warning(f"{path}: taking over the lock of {why} ({describe(holder)})")
                path.unlink(missing_ok=True)
                continue
            where = ("" if alive else f" (another host: if that run has ended, delete {path})")
            raise RunDirectoryError(
                f"{directory} is in use by another run: {describe(holder)}{where}\n"
                f"  start this run in another directory (--trainer.default_root_dir DIR), or wait for that one to end")


def run_lock_for(trainer) -> RunLock:
    """The lock of a fit: its run directory and its loggers' directories (the W&B run id is pinned in
    the logger's), and a write probe of its checkpoint folders."""
    from arjepa_pl.checkpoints import run_checkpoint_dirs

    logger_dirs = [logger.save_dir for logger in trainer.loggers if isinstance(getattr(logger, "save_dir", None), str)]
    return RunLock([trainer.default_root_dir, *logger_dirs], run_checkpoint_dirs(trainer))


def _unique(dirs: Iterable[os.PathLike]) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        path = Path(os.path.abspath(d))
        if path not in out:
            out.append(path)
    return out


def _create(path: Path, content: dict) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, (json.dumps(content) + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _read(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
