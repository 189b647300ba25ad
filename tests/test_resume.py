"""Checkpoints: atomic writes, `--ckpt_path last`, loud load failures, and a run killed with
kill -9 and resumed ends bit-identical to the uninterrupted run."""

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from arjepa_pl.checkpoints import (
    SHARDED_COMPLETE_MARKER,
    CheckpointLoadError,
    atomic_save,
    find_resume_checkpoint,
    replace_dir,
    resolve_ckpt_path,
)
from arjepa_pl.cli import ArJepaCLI
from tests.dist_helpers import REPO, cli_env, load_checkpoint, run_cli, tiny_run_args


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)
    # A second save is killed (SIGKILL, no cleanup) after its bytes are written, before the rename.
    script = ("import os, signal, torch; from arjepa_pl.checkpoints import atomic_save\n"
              "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"atomic_save({{'step': 2, 'w': torch.zeros(1 << 20)}}, {str(path)!r})\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert torch.load(path, weights_only=True)["step"] == 1
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert leftovers and all(p.name.startswith(".") for p in leftovers)  # the half-done write, hidden
    assert find_resume_checkpoint([tmp_path]) == path
    atomic_save({"step": 3}, path)  # and saving still works
    assert torch.load(path, weights_only=True)["step"] == 3


def _sharded(path: Path) -> Path:
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(b"shard")
    (path / SHARDED_COMPLETE_MARKER).write_bytes(b"meta")
    return path


def test_find_resume_checkpoint_takes_the_newest_complete_one(tmp_path):
    ckpts, run = tmp_path / "checkpoints", tmp_path
    ckpts.mkdir()
    assert find_resume_checkpoint([ckpts, run]) is None
    t = time.time() - 100
    step = ckpts / "step000010.ckpt"
    atomic_save({}, step)
    os.utime(step, (t, t))
    hpc = _sharded(run / "hpc_ckpt_1.ckpt")
    os.utime(hpc / SHARDED_COMPLETE_MARKER, (t + 10, t + 10))
    assert find_resume_checkpoint([ckpts, run]) == hpc  # the pre-emption checkpoint is newer
    incomplete = ckpts / "last.ckpt"
    incomplete.mkdir()  # shards being written: no marker yet
    (ckpts / ".step000020.ckpt.tmp123").write_bytes(b"half a file")
    assert find_resume_checkpoint([ckpts, run]) == hpc
    replacement = _sharded(ckpts / ".last.ckpt.tmp")
    replace_dir(replacement, incomplete)
    assert (incomplete / SHARDED_COMPLETE_MARKER).is_file() and not replacement.exists()
    assert find_resume_checkpoint([ckpts, run]) == incomplete


def test_last_without_checkpoints_starts_fresh_with_a_message(tmp_path):
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), checkpoint_callbacks=[])
    with pytest.warns(UserWarning, match="no checkpoint in .* starting a fresh run"):
        assert resolve_ckpt_path(trainer, "last") is None
    assert resolve_ckpt_path(trainer, "some/path.ckpt") == "some/path.ckpt"


def test_a_checkpoint_that_does_not_load_is_an_error_not_a_fresh_start(tmp_path, demo_manifests):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    args = ["fit", *tiny_run_args(run, demo_manifests, steps=2, batch=2, every=1), "--ckpt_path", "last"]
    with pytest.raises(CheckpointLoadError, match="(?s)last.ckpt.*does not restart from scratch"):
        ArJepaCLI(args=args)
    assert not (run / "checkpoints" / "step000001.ckpt").exists()


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical_to_the_uninterrupted_run(tmp_path, demo_manifests):
    # 12 clips, batch 4: 3 steps per epoch. A checkpoint every step; the run is killed after step 5,
    # before its checkpoint, and resumed with --ckpt_path last from step 4: in the middle of epoch 1,
    # so the data loader's position, the masks and everything else must pick up mid-epoch.
    every, steps, kill_at = 1, 6, 5
    args = lambda run: tiny_run_args(run, demo_manifests, steps=steps, batch=4, every=every)  # noqa: E731
    run_cli(args(tmp_path / "straight"))
    killed = tmp_path / "killed"
    run_cli([*args(killed), "--trainer.callbacks+=tests.dist_helpers.KillAt", f"--trainer.callbacks.step={kill_at}",
             "--ckpt_path", "last"], returncode=-9)
    assert not (killed / "checkpoints" / f"step{kill_at:06d}.ckpt").exists()
    resumed = run_cli([*args(killed), "--ckpt_path", "last"])
    assert f"resuming from {killed / 'checkpoints'}" in resumed.stderr
    assert f"step{kill_at - 1:06d}.ckpt" in resumed.stderr or "last.ckpt" in resumed.stderr
    resumed_from = load_checkpoint(killed / "checkpoints" / f"step{kill_at - 1:06d}.ckpt")
    (loader,) = resumed_from["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["epoch"], loader["batches"], loader["batches_per_epoch"]) == (1, 1, 3)  # mid-epoch

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(killed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # student, predictor and EMA teacher
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
