"""Helpers for the multi-process tests: launch the CLI as subprocesses, read checkpoints, and
test-only classes the CLI loads by class path (this folder is importable as `tests` with the
repository root on PYTHONPATH)."""

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import default_collate

from arjepa_pl.masks import MaskCollator
from data_modules import VideoDataModule

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra) -> dict:
    """Environment for a CLI subprocess: this checkout first on the path, offline, one thread per
    process (2 ranks on 2 cores)."""
    # WANDB_SERVICE: wandb exports the address of this (pytest) process's wandb-core once an in-process
    # test has logged to W&B; a child that inherits it registers its run in that long-lived service, so a
    # requeued job resuming the same run id is refused ("run ID ... is in use") by the stream its killed
    # first attempt left there. Each child starts its own service, as a job launched from a shell does.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")) and k != "WANDB_SERVICE"}
    env.update(PYTHONPATH=str(REPO), WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def video_data(train: Path, val: Path | None = None) -> list[str]:
    """Overrides that put configs/vjepa.yaml or configs/ar_video.yaml (the moving-shapes benchmark) on
    video files: the test demo set's manifests. The data module's class changes on the command line;
    jsonargparse keeps the config's frames_per_clip, crop_size, batch_size and num_workers, the other keys
    take VideoDataModule's defaults (hflip stays off: a flip swaps the demo's left and right)."""
    return ["--data=data_modules.VideoDataModule", "--data.train_manifest", str(train),
            *(["--data.val_manifest", str(val)] if val is not None else []), "--data.hflip", "false"]


def tiny_run_args(run_dir: Path, manifests, steps: int, batch: int, every: int, logger: bool = False) -> list[str]:
    """A V-JEPA run small enough for a 2-core CPU: 8 frames of 32x32, 2-layer encoder, no validation,
    a checkpoint every `every` steps and no other callback; no logger unless `logger` (the config's)."""
    checkpoints = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                   "init_args": {"dirpath": str(run_dir / "checkpoints"), "filename": "step{step:06d}",
                                 "auto_insert_metric_name": False, "every_n_train_steps": every,
                                 "save_last": True, "save_top_k": -1}}
    return [
        "--config", str(REPO / "configs/vjepa.yaml"),
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
        f"--trainer.callbacks={json.dumps([checkpoints])}", *([] if logger else ["--trainer.logger", "false"]),
        *video_data(manifests.train), "--data.frames_per_clip", "8", "--data.frame_step", "2", "--data.crop_size", "32",
        "--data.batch_size", str(batch), "--data.num_workers", "0",
        "--model.init_args.encoder.init_args.embed_dim", "32", "--model.init_args.encoder.init_args.depth", "2",
        "--model.init_args.encoder.init_args.num_heads", "2", "--model.init_args.predictor_embed_dim", "16",
        "--model.init_args.predictor_depth", "1", "--model.init_args.predictor_num_heads", "2",
        "--model.init_args.warmup_steps", "2", "--model.init_args.total_steps", "20",
        # VICReg's terms are statistics of each rank's batch, so with them 2 ranks of 2 clips are not one
        # process with 4: off, so that a distributed run must match a single one.
        "--model.init_args.vicreg_var_coeff", "0", "--model.init_args.vicreg_cov_coeff", "0",
    ]


def run_cli(args: list[str], timeout: int = 300, returncode: int = 0, **env) -> subprocess.CompletedProcess:
    """`python -m arjepa_pl fit ARGS` in a subprocess; asserts its exit status."""
    done = subprocess.run([sys.executable, "-m", "arjepa_pl", "fit", *args], cwd=REPO, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == returncode, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def load_checkpoint(path: Path) -> dict:
    """A full (.ckpt file) checkpoint, or the tensors of a sharded (directory) one, gathered."""
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            return torch.load(Path(tmp) / "full.pt", weights_only=True)
    return torch.load(path, weights_only=True)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# -- loaded by the CLI in subprocesses -----------------------------------------------------------

class SameMasks:
    """Every sample of every batch on every rank gets the same masks, so a global batch split over
    ranks is the same computation as one process with the whole batch (the real masks are keyed by
    rank and batch position, which differ between the two)."""

    def __init__(self, collator: MaskCollator):
        self.collator = copy.copy(collator)
        self.collator.rank = 0

    def __call__(self, samples: list[dict]) -> dict:
        batch = default_collate(samples)
        one = self.collator([{**samples[0], "epoch": 0, "position": 0}])
        batch["masks"] = [{k: v.expand(len(samples), -1).clone() for k, v in m.items()} for m in one["masks"]]
        return batch


class SameMaskData(VideoDataModule):
    def collate(self):
        fn = super().collate()
        return SameMasks(fn) if isinstance(fn, MaskCollator) else fn


class KillAt(L.Callback):
    """kill -9 this process right after optimizer step `step` (before that step's checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ShardReport(L.Callback):
    """Writes, at the end of training, how the encoders are sharded (rank 0, JSON); co_sharded is None
    for an objective without an EMA teacher."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        from arjepa_pl.parallel import co_sharded

        # An FSDP2 root keeps its own weights gathered after a forward without backward (validation,
        # the online probe) until it next needs them sharded: shard them to see the layout.
        if hasattr(pl_module.encoder, "reshard"):  # an FSDP2 module
            pl_module.encoder.reshard()
        enc = list(pl_module.encoder.parameters())
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in enc)
        teacher = getattr(pl_module, "target_encoder", None)  # None: an objective without a teacher (AR)
        report = {"co_sharded": None if teacher is None else co_sharded(pl_module.encoder, teacher),
                  "dtensor": all(hasattr(p, "placements") for p in enc),
                  "local_fraction": local / sum(p.numel() for p in enc), "world_size": trainer.world_size}
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(report))


class NaNAt(L.Callback):
    """Puts a NaN into the training batch of optimizer step `step` (the loss and gradients turn non-finite)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["video"][0, 0, 0, 0, 0] = float("nan")


class FillDisk(L.Callback):
    """Fills the file system of the run directory (a small tmpfs in tests) before optimizer step `step`,
    so that the checkpoint of that step finds no space."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and trainer.is_global_zero:
            with open(Path(trainer.default_root_dir) / "filler", "wb", buffering=0) as f:
                for chunk in (1 << 20, 1 << 12):  # to the last page
                    try:
                        while True:
                            f.write(b"\0" * chunk)
                    except OSError:
                        pass


class BuggyCallback(L.Callback):
    """A programming error (not a user's mistake): the CLI must show its traceback."""

    def __init__(self):
        raise RuntimeError("a bug in a constructor")
