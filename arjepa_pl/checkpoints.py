"""Checkpoints that survive being killed, resume from the newest one, and never fail silently.

- Writes are atomic: a checkpoint is written under a hidden temporary name in its own directory and
  renamed into place, so a kill at any moment leaves the previous checkpoint intact. (Lightning's own
  "atomic" save stages the bytes in the system temp dir and *copies* them over when that is another
  file system, as /tmp usually is on a cluster: a kill during the copy truncates the checkpoint.)
- `--ckpt_path last` means the newest complete checkpoint in the run directory: ModelCheckpoint's
  files, the pre-emption checkpoints the SLURM requeue saves, full (one file) or sharded (a
  directory); none means a fresh start, with a message.
- A checkpoint that does not load is an error naming the file — never a silent restart from scratch.
- Loading is `weights_only=True` unless asked otherwise: our checkpoints hold only tensors and
  plain Python values.
- The random number generators of every rank are saved and restored (`RandomState`), so a resumed
  run draws what the uninterrupted run would have drawn.
"""

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import lightning.pytorch as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from arjepa_pl.errors import RunFailed, UserError

log = logging.getLogger("arjepa_pl.checkpoints")

# What a sharded (torch.distributed.checkpoint) checkpoint directory holds once it is complete:
# Lightning writes this file last, after every rank's shards.
SHARDED_COMPLETE_MARKER = "meta.pt"


class CheckpointLoadError(UserError, RuntimeError):
    """A checkpoint that does not load: a short message naming it (exit status 2 from the CLI)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointWriteError(RunFailed):
    """A checkpoint could not be written (a full disk, an I/O error, a path that is not a folder); the
    previous checkpoint at that path is intact."""


class _RecordingWriter:
    """The file torch.save writes to, remembering the OSError of a failed write: torch's zip writer
    reports it as `RuntimeError: [enforce fail at inline_container.cc] ... file write failed`, without
    the cause (no space left on device, ...)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def atomic_save(obj: Any, path: os.PathLike, write: Callable[[Any, Any], Any] = torch.save) -> None:
    """`write(obj, file)` (torch.save) to a temporary file beside `path`, flushed to disk, then renamed
    over `path`. A failure of the file system is a CheckpointWriteError naming the path and its cause."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            write(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = writer.error if writer is not None and writer.error is not None else e
        if isinstance(cause, OSError):
            raise CheckpointWriteError(f"could not write the checkpoint {path}: {cause.strerror or cause}; "
                                       "the previous checkpoint there is intact") from e
        raise
    _fsync_dir(path.parent)


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the complete directory `tmp` to `path`, replacing what is there. A directory cannot be
    renamed over a non-empty one, so the old one is first renamed aside; a kill between the two
    renames leaves both complete copies on disk, and `find_resume_checkpoint` finds either."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.is_dir():
        os.replace(path, old)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_sharded_atomically(strategy, path: os.PathLike, save: Callable[[Path], None]) -> None:
    """A sharded checkpoint directory written by every rank (`save(tmp)`) into a hidden temporary
    directory beside `path`, then swapped into place by rank 0 once every rank has finished, so a kill
    during the save never breaks the previous checkpoint. `strategy`: anything with broadcast, barrier
    and global_rank (a Lightning strategy)."""
    path = Path(strategy.broadcast(str(path)))
    tmp = path.with_name(f".{path.name}.tmp")
    if strategy.global_rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a save that was killed
    strategy.barrier()
    save(tmp)
    strategy.barrier()  # every rank's shards are on disk
    if strategy.global_rank == 0:
        replace_dir(tmp, path)
    strategy.barrier()


def load_error_summary(error: Exception) -> str:
    """What a load error says is wrong, in one line: torch's errors are a paragraph of advice around it
    (the weights-only unpickler's cause follows `WeightsUnpickler error:`)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        cause = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return f"weights-only load failed: {cause[0].strip() if cause else ''}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first.split(". ")[0]


def wrap_load_errors(path: str | os.PathLike, load: Callable[[], Any]) -> Any:
    """Run `load`; any failure becomes a CheckpointLoadError that names the checkpoint and says what to do."""
    try:
        return load()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointLoadError(
            f"could not load checkpoint {path}: {type(e).__name__}: {load_error_summary(e)}\n"
            "Training does not restart from scratch over a checkpoint it cannot read: pass another --ckpt_path, "
            "or move this one away to start fresh. (If you trust the file and it holds pickled objects, "
            "--weights_only false loads it without the weights-only restriction.)"
        ) from e


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with atomic local writes, weights_only loading by default, and clear load errors."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # object stores: a PUT is atomic
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: Optional[bool] = None):
        weights_only = True if weights_only is None else weights_only
        return wrap_load_errors(
            path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, map_location, weights_only))


def use_atomic_checkpoint_io(trainer: L.Trainer) -> None:
    """Give the trainer's strategy AtomicCheckpointIO unless a custom CheckpointIO was configured."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def is_complete_checkpoint(path: Path) -> bool:
    """A visible `*.ckpt` file (files are written atomically) or a sharded directory whose shards are
    all written (its marker file exists; hidden leftovers of an interrupted swap count too)."""
    if path.is_dir():
        return (path / SHARDED_COMPLETE_MARKER).is_file()
    return path.is_file() and path.suffix == ".ckpt" and not path.name.startswith(".")


def checkpoint_time(path: Path) -> float:
    return (path / SHARDED_COMPLETE_MARKER).stat().st_mtime if path.is_dir() else path.stat().st_mtime


def find_resume_checkpoint(directories: Iterable[Optional[str | os.PathLike]]) -> Optional[Path]:
    """The most recently written complete checkpoint directly inside any of `directories`, or None."""
    candidates = []
    for directory in {Path(d) for d in directories if d is not None}:
        if directory.is_dir():
            candidates += [p for p in directory.iterdir() if is_complete_checkpoint(p)]
    return max(candidates, key=lambda p: (checkpoint_time(p), p.name), default=None)


def run_checkpoint_dirs(trainer: L.Trainer) -> list[Path]:
    """Where this run writes checkpoints: every ModelCheckpoint's folder and the run directory itself
    (pre-emption checkpoints, `hpc_ckpt_N.ckpt`)."""
    dirs = [Path(trainer.default_root_dir)]
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath is not None and isinstance(get_filesystem(dirpath), LocalFileSystem):
            dirs.append(Path(dirpath))
    return dirs


def resolve_ckpt_path(trainer: L.Trainer, ckpt_path: Optional[str]) -> Optional[str]:
    """`last` -> the newest checkpoint of this run (None, with a message, when there is none yet);
    anything else unchanged."""
    if ckpt_path != "last":
        return ckpt_path
    dirs = run_checkpoint_dirs(trainer)
    found = find_resume_checkpoint(dirs)
    if found is None:
        rank_zero_warn(f"--ckpt_path last: no checkpoint in {', '.join(map(str, dirs))} yet; starting a fresh run")
        return None
    rank_zero_info(f"--ckpt_path last: resuming from {found}")
    return str(found)


# -- random number generators -------------------------------------------------------------------

def rng_state() -> dict:
    """This process's RNG states, in types that load with weights_only=True."""
    legacy_state = np.random.get_state()  # legacy=True (the default): the tuple, not the dict form
    assert isinstance(legacy_state, tuple)
    kind, keys, pos, has_gauss, gauss = legacy_state
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RandomState(L.Callback):
    """Saves every rank's torch / numpy / python (/ CUDA) RNG state in checkpoints and restores each
    rank's own on resume.

    Nothing in a training step draws from them today (masks and augmentations are seeded from the
    batch's identity), so this guards the exactness of resumes against any future use (dropout,
    stochastic depth, sampling). Restored when the checkpoint is loaded, i.e. before the data loader
    iterator is created, like at the start of an epoch in the uninterrupted run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            states: list[Optional[dict]] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        if len(states) != trainer.world_size:
            log.warning(f"checkpoint has RNG states of {len(states)} ranks, this run has {trainer.world_size}: "
                        "RNG states not restored")
            return
        set_rng_state(states[trainer.global_rank])
