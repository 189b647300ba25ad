"""Data parallelism by configuration, as 2 gloo processes on the CPU: DDP and FSDP2 train like one
process with the same global batch; FSDP2 shards the EMA teacher exactly like the student and its
sharded checkpoints save and resume."""

import json
from pathlib import Path

import pytest

from tests.dist_helpers import load_weights, max_abs_diff, run_cli, tiny_run_args

pytestmark = pytest.mark.slow

STEPS = 6  # 12 clips, global batch 4: 3 steps per epoch, 2 epochs
SAME_MASKS = ["--data.class_path", "tests.dist_helpers.SameMaskData", "--trainer.accelerator", "cpu"]
# Reduction order differs between 1 and 2 processes: equal up to float rounding, not bit for bit.
TOLERANCE = 1e-5


def _run(run_dir, manifests, devices: int, *extra: str, steps: int = STEPS):
    batch = 4 // devices
    return run_cli([*tiny_run_args(run_dir, manifests, steps=steps, batch=batch, every=3), *SAME_MASKS,
                    "--trainer.devices", str(devices), *extra])


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, demo_manifests):
    run = tmp_path_factory.mktemp("single")
    _run(run, demo_manifests, 1)
    return load_weights(run / "checkpoints" / "last.ckpt")


def test_ddp_on_2_ranks_matches_one_process_with_the_same_global_batch(tmp_path, demo_manifests, single_process):
    _run(tmp_path, demo_manifests, 2, "--trainer.strategy", "ddp")
    ddp = load_weights(tmp_path / "checkpoints" / "last.ckpt")
    assert max_abs_diff(ddp, single_process) < TOLERANCE
    moved = max_abs_diff(ddp, load_weights(tmp_path / "checkpoints" / "step000003.ckpt"))
    assert moved > 100 * TOLERANCE  # the comparison is not trivially true


def test_fsdp2_trains_shards_the_teacher_like_the_student_and_resumes_sharded(tmp_path, demo_manifests, single_process):
    report = tmp_path / "shards.json"
    fsdp = ["--trainer.strategy", "fsdp2", "--ckpt_path", "last"]
    # First 3 steps (one epoch), a sharded checkpoint; then a second launch resumes from it.
    first = _run(tmp_path, demo_manifests, 2, *fsdp, steps=3)
    assert "no checkpoint in" in first.stderr
    second = _run(tmp_path, demo_manifests, 2, *fsdp, "--trainer.callbacks+=tests.dist_helpers.ShardReport",
                  f"--trainer.callbacks.path={report}")
    resumed_from = second.stderr.split("--ckpt_path last: resuming from ", 1)[1].split("\n", 1)[0]
    assert resumed_from.startswith(str(tmp_path / "checkpoints")) and (Path(resumed_from) / "meta.pt").is_file()

    shards = json.loads(report.read_text())
    assert shards == {"co_sharded": True, "dtensor": True, "local_fraction": 0.5, "world_size": 2}
    final = tmp_path / "checkpoints" / "step000006.ckpt"
    assert final.is_dir() and (final / "meta.pt").is_file() and len(list(final.glob("*.distcp"))) == 2
    weights = load_weights(final)
    # Student, predictor and teacher all match one process: the teacher's shards followed the student's.
    assert max_abs_diff(weights, single_process) < TOLERANCE
    assert any(k.startswith("target_encoder.") for k in weights)
